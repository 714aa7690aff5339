"""Settings of alerts and the monthly report: the ``[alerts]`` section of the collector's config.

Standard library only, so ``collector.config`` can import it without pulling
in aiohttp or aiosmtplib. Secrets can be given inline (tests, demos) or, better,
in a file whose first line is read (``*_file``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def _secret(inline: str, path: str, where: str) -> str:
    if not path:
        return inline
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise ValueError(f"[alerts.{where}] cannot read {path}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class EmailSettings:
    #: SMTP server ("" = no email channel).
    host: str = ""
    #: Submission port (587 with STARTTLS).
    port: int = 587
    #: Upgrade the connection with STARTTLS before authenticating (refuse servers without it).
    starttls: bool = True
    #: CA bundle to verify the server's certificate ("" = the system store).
    ca_file: str = ""
    #: SMTP user ("" = no authentication).
    username: str = ""
    #: Password inline; prefer ``password_file``.
    password: str = ""
    #: File whose first line is the password; wins over ``password``.
    password_file: str = ""
    #: The From address ("Giám sát cụm loa <loa@huyen.gov.vn>").
    sender: str = "loa-fleet@localhost"
    #: Seconds for the whole exchange with the server.
    timeout_s: float = 30.0

    def resolved_password(self) -> str:
        return _secret(self.password, self.password_file, "email")


@dataclass(frozen=True, kw_only=True)
class TelegramSettings:
    #: Bot API base URL (tests point it at a local receiver).
    base_url: str = "https://api.telegram.org"
    #: Bot token inline ("" = no Telegram channel); prefer ``token_file``.
    token: str = ""
    #: File whose first line is the bot token.
    token_file: str = ""
    #: Seconds per request.
    timeout_s: float = 20.0

    def resolved_token(self) -> str:
        return _secret(self.token, self.token_file, "telegram")


@dataclass(frozen=True, kw_only=True)
class ZaloSettings:
    #: Official Account API base URL (tests point it at a local receiver).
    base_url: str = "https://openapi.zalo.me"
    #: OA access token inline ("" = no Zalo channel); prefer ``access_token_file``.
    access_token: str = ""
    #: File whose first line is the OA access token (rotated by the operator).
    access_token_file: str = ""
    #: Seconds per request.
    timeout_s: float = 20.0

    def resolved_token(self) -> str:
        return _secret(self.access_token, self.access_token_file, "zalo")


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    #: Seconds per request.
    timeout_s: float = 15.0
    #: Only https:// webhook URLs, except to loopback addresses (tests, local relays).
    require_https: bool = True


@dataclass(frozen=True, kw_only=True)
class MonthlyReportSettings:
    #: Send last month's B2 automatically.
    enabled: bool = False
    #: Day of the month to send it on (the district's deadline), 1..28.
    day: int = 2
    #: Local hour ([report] time_zone) from which it is sent that day, 0..23.
    hour: int = 8
    #: Email addresses that receive it.
    recipients: tuple[str, ...] = ()
    #: Users whose own email channel receives it too.
    users: tuple[str, ...] = ()
    #: Language of the table and the message ("" = [report] lang).
    lang: str = ""
    #: How often (real seconds) the scheduler looks at the clock.
    tick_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class AlertsSettings:
    #: Evaluate rules and deliver notifications in this process.
    enabled: bool = False
    #: Base URL of the dashboard, for links in messages ("https://loa.huyen.gov.vn").
    public_url: str = "http://127.0.0.1:8080"
    #: Default language of messages to recipients who chose none: "vi" or "en".
    lang: str = "vi"
    #: How often the rules are evaluated, seconds.
    evaluate_interval_s: float = 60.0
    #: How often the delivery worker looks for due deliveries when idle, seconds.
    deliver_interval_s: float = 2.0
    #: Deliveries claimed at once by one worker.
    batch_size: int = 20
    #: A claimed delivery not confirmed within this many seconds is taken again
    #: (by this or another instance): the claimer is presumed dead.
    lease_s: float = 120.0
    #: Attempts before a delivery is marked failed.
    max_attempts: int = 8
    #: First retry delay, doubled per attempt (with jitter), seconds.
    backoff_base_s: float = 30.0
    #: Longest retry delay, seconds.
    backoff_max_s: float = 3600.0
    email: EmailSettings = field(default_factory=EmailSettings)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    zalo: ZaloSettings = field(default_factory=ZaloSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    monthly_report: MonthlyReportSettings = field(default_factory=MonthlyReportSettings)

    def problems(self) -> list[str]:
        """What is wrong, as "[alerts] field: reason" lines."""
        out: list[str] = []
        checks = [
            (self.lang in ("vi", "en"), "[alerts] lang: must be vi or en"),
            (
                self.public_url.startswith(("http://", "https://")),
                "[alerts] public_url: must start with http:// or https://",
            ),
            (self.evaluate_interval_s > 0, "[alerts] evaluate_interval_s: must be > 0"),
            (self.deliver_interval_s > 0, "[alerts] deliver_interval_s: must be > 0"),
            (1 <= self.batch_size <= 1000, "[alerts] batch_size: must be 1..1000"),
            (self.lease_s > 0, "[alerts] lease_s: must be > 0"),
            (1 <= self.max_attempts <= 100, "[alerts] max_attempts: must be 1..100"),
            (self.backoff_base_s > 0, "[alerts] backoff_base_s: must be > 0"),
            (
                self.backoff_max_s >= self.backoff_base_s,
                "[alerts] backoff_max_s: must be >= backoff_base_s",
            ),
            (1 <= self.email.port <= 65535, "[alerts.email] port: must be 1..65535"),
            (self.email.timeout_s > 0, "[alerts.email] timeout_s: must be > 0"),
            (self.telegram.timeout_s > 0, "[alerts.telegram] timeout_s: must be > 0"),
            (self.zalo.timeout_s > 0, "[alerts.zalo] timeout_s: must be > 0"),
            (self.webhook.timeout_s > 0, "[alerts.webhook] timeout_s: must be > 0"),
            (1 <= self.monthly_report.day <= 28, "[alerts.monthly_report] day: must be 1..28"),
            (0 <= self.monthly_report.hour <= 23, "[alerts.monthly_report] hour: must be 0..23"),
            (
                self.monthly_report.lang in ("", "vi", "en"),
                "[alerts.monthly_report] lang: must be vi or en",
            ),
            (self.monthly_report.tick_s > 0, "[alerts.monthly_report] tick_s: must be > 0"),
            (
                self.lease_s > max(self.email.timeout_s, self.webhook.timeout_s) * 2,
                "[alerts] lease_s: must exceed twice the longest channel timeout",
            ),
        ]
        out.extend(message for ok, message in checks if not ok)
        for addr in self.monthly_report.recipients:
            if "@" not in addr or any(c in addr for c in " \r\n<>,;"):
                out.append(f"[alerts.monthly_report] recipients: {addr!r:.80} is not an address")
        return out
