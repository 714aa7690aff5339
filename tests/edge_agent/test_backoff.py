"""The reconnect backoff and the choice of broker address: pure, with a seeded rng."""

from __future__ import annotations

import collections
import math
import random
import statistics
from typing import Any

import pytest

from edge_agent.uplink import Dialer, backoff, start_index
from fleet_protocol.agent_config import BrokerConfig

DEFAULT = BrokerConfig(url="mqtts://broker.example:8883")
BASE, CAP = DEFAULT.backoff_base_s, DEFAULT.backoff_max_s


def _samples(attempt: int, n: int = 20_000, *, cap: float = CAP, seed: int = 7) -> list[float]:
    rng = random.Random(seed).random
    return [backoff(attempt, BASE, cap, rng) for _ in range(n)]


@pytest.mark.parametrize("attempt", range(1, 16))
def test_the_kth_retry_stays_within_its_window(attempt: int) -> None:
    window = min(CAP, BASE**attempt)
    delays = _samples(attempt, 2000)
    assert all(0.0 <= d < window for d in delays)
    # Full jitter: the whole window is used, from near 0 to near its top.
    assert min(delays) < 0.01 * window and max(delays) > 0.99 * window
    assert backoff(attempt, BASE, CAP, lambda: 0.0) == 0.0
    assert backoff(attempt, BASE, CAP, lambda: 0.5) == pytest.approx(window / 2)


def test_a_lone_device_retries_within_two_seconds_then_four() -> None:
    assert BASE == 2.0
    assert max(_samples(1)) < 2.0
    assert max(_samples(2)) < 4.0
    assert statistics.fmean(_samples(1)) == pytest.approx(1.0, rel=0.03)


def test_past_the_cap_the_mean_delay_is_half_the_cap() -> None:
    """Once base ** n passes the cap every retry is uniform(0, cap): mean cap / 2."""
    past = math.ceil(math.log(CAP, BASE))  # 9 for 2 s and 300 s
    for attempt in (past, past + 1, past + 10, 1000):
        assert statistics.fmean(_samples(attempt)) == pytest.approx(CAP / 2, rel=0.03)
    # With a smaller cap the windows reach it sooner: past attempt 6 for 60 s.
    for attempt in (6, 7, 12):
        assert statistics.fmean(_samples(attempt, cap=60.0)) == pytest.approx(30.0, rel=0.03)


def test_delays_past_the_cap_are_spread_not_stuck_at_the_cap() -> None:
    """The old ``min(cap, uniform(0, base ** n))`` put nearly every agent at exactly
    the cap, which re-synchronised a fleet; now each tenth of the cap gets a tenth."""
    delays = _samples(20)
    assert sum(d == CAP for d in delays) == 0
    tenths = collections.Counter(int(10 * d / CAP) for d in delays)
    assert sorted(tenths) == list(range(10))
    assert all(abs(c / len(delays) - 0.1) < 0.01 for c in tenths.values())


def test_huge_attempt_counts_neither_overflow_nor_give_up() -> None:
    rng = random.Random(3).random
    for attempt in (100, 10_000, 10**9):
        assert 0.0 <= backoff(attempt, BASE, CAP, rng) < CAP
        assert backoff(attempt, 10.0, CAP, lambda: 0.999) == pytest.approx(0.999 * CAP)
    assert backoff(50, BASE, 0.5, lambda: 0.5) == 0.25  # a cap below the base (tests)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _dialer(urls: list[str] | None = None, **kw: Any) -> tuple[Dialer, Clock]:
    clock = Clock()
    kw = {"base": BASE, "cap": CAP, "refused_cap": 600.0, "clock": clock, **kw}
    return Dialer(urls or ["mqtt://a"], "dev-001", **kw), clock


def _outage(dialer: Dialer, clock: Clock, down_s: float) -> tuple[float, int]:
    """The link dies at t=0 and the broker is back at ``down_s``: (wait after that, attempts)."""
    attempts = 0
    while clock.now < down_s:
        clock.now += dialer.failed()
        attempts += 1
    return clock.now - down_s, attempts


def test_a_fleet_that_lost_its_broker_spreads_to_2n_over_cap_per_second() -> None:
    """10,000 agents dropped at t=0 by a broker that stays away for 30 min: the
    attempts per second thin out as the windows grow and settle at 2 N / cap
    (the mean delay is cap / 2: about 67/s), not the ~N / 2.5 s (4,000/s) of the
    old cap."""
    n, horizon = 10_000, 1800.0
    rng = random.Random(11).random
    per_second: collections.Counter[int] = collections.Counter()
    for _ in range(n):
        dialer, clock = _dialer(rng=rng)
        while True:
            clock.now += dialer.failed()
            if clock.now >= horizon:
                break
            per_second[int(clock.now)] += 1
    assert max(per_second[s] for s in range(2)) > 1000  # the first retries: 0-2 s
    # Thinning out as ~N / t: a tenth of the rate ten times later.
    early, later = per_second[10] + per_second[11], per_second[100] + per_second[101]
    assert 4 < early / later < 25
    late = [per_second[s] for s in range(900, int(horizon))]
    assert statistics.fmean(late) == pytest.approx(2 * n / CAP, rel=0.05)
    assert max(late) < 4 * n / CAP
    # Nobody gave up: every agent kept trying until the end.
    assert sum(per_second[s] for s in range(int(horizon) - 600, int(horizon))) > n


@pytest.mark.parametrize("down_s", [1.0, 5.0, 30.0, 120.0])
def test_after_an_outage_a_lone_device_is_back_within_twice_the_outage(down_s: float) -> None:
    rng = random.Random(5).random
    waits = [_outage(*_dialer(rng=rng), down_s)[0] for _ in range(3000)]
    assert max(waits) < max(BASE, 2 * down_s)
    assert statistics.median(waits) < max(BASE, down_s / 2)


def test_the_window_never_exceeds_twice_the_time_down() -> None:
    dialer, clock = _dialer(rng=lambda: 0.999)
    assert dialer.failed() == pytest.approx(0.999 * BASE)  # at t=0: the base
    clock.now = 0.1  # many fast failures: the count says 2 ** 5, the clock says 2 s
    for _ in range(4):
        dialer.failed()
    assert dialer.failures == 5 and dialer.failed() == pytest.approx(0.999 * BASE)
    clock.now = 10.0
    assert dialer.failed() == pytest.approx(0.999 * 20.0)
    clock.now = 10_000.0
    for _ in range(3):
        dialer.failed()
    assert dialer.failures == 10 and dialer.failed() == pytest.approx(0.999 * CAP)


def test_the_dialer_round_robins_from_the_devices_own_start() -> None:
    urls = ["mqtt://a", "mqtt://b", "mqtt://c"]
    d, clock = _dialer(urls, rng=lambda: 0.5)
    clock.now = 1000.0  # long down: only the count bounds the window
    d.failing_since = 0.0
    first = start_index("dev-001", 3)
    assert d.url == urls[first]
    order = [d.url]
    delays = []
    for _ in range(6):
        delays.append(d.failed())
        order.append(d.url)
    assert order == [urls[(first + i) % 3] for i in range(7)]
    # The exponent counts full rounds: a dead node in the list costs no extra growth.
    assert delays == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_the_dialer_stays_on_a_working_node_and_resets_after_a_session() -> None:
    d, clock = _dialer(["mqtt://a", "mqtt://b"], rng=lambda: 0.5)
    for _ in range(8):
        clock.now += d.failed()
    assert d.failures == 8 and d.failing_since == 0.0
    here = d.url
    d.established()
    assert d.url == here and d.failures == 0 and d.failing_since is None
    clock.now += 100.0
    assert d.failed() == 1.0  # a lost session: the first retry is jittered over 0-2 s


def test_a_refused_attempt_backs_off_to_the_refused_cap() -> None:
    d, clock = _dialer(cap=5.0, rng=lambda: 0.99)
    for _ in range(12):
        d.failed()
    clock.now = 10_000.0
    assert d.failed() == pytest.approx(0.99 * 5.0)
    assert d.failed(refused=True) == pytest.approx(0.99 * 600.0)


def test_start_indexes_spread_a_fleet_evenly_over_the_nodes() -> None:
    for nodes in (2, 3, 5):
        share = collections.Counter(start_index(f"lt-x{i:05d}-01", nodes) for i in range(30_000))
        assert sorted(share) == list(range(nodes))
        assert all(abs(c / 30_000 - 1 / nodes) < 0.02 for c in share.values())
    assert start_index("dev-001", 1) == 0
    assert start_index("dev-001", 2) == start_index("dev-001", 2)  # stable across restarts


def test_a_dialer_without_addresses_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Dialer([], "dev-001", base=2.0, cap=1.0, refused_cap=1.0)
