"""Request parsing of the collector's HTTP API, shared with the dashboard's pages.

Everything a request brings in -- path parameters, query parameters, a JSON
body -- is decoded into a msgspec ``Struct`` declared in ``collector.schemas``.
Constraints (minimums, lengths, patterns, enums) live in those declarations
(``msgspec.Meta``), so the validation the handlers get and the OpenAPI document
(``collector.openapi``) come from one place.

Every refusal is an :class:`ApiError`: a 4xx JSON answer ``{"error": "FIELD:
reason", "field": FIELD}``.

Python's ``re`` and the document's ECMA-262 patterns disagree on one thing: a
closing ``$`` also matches before a final newline in Python. Decoding therefore
re-checks every declared pattern with ``re.fullmatch``, which reads them as a
JSON Schema validator does.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from enum import Enum
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import unquote

import msgspec
from aiohttp import web

from collector.b2.dates import parse_as_of

#: Deepest JSON nesting accepted in a request body (objects and arrays).
MAX_DEPTH: Final = 32

T = TypeVar("T")


class ApiError(web.HTTPException):
    """A 4xx answer naming the offending field and the reason."""

    def __init__(
        self,
        status: int,
        field: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status_code = status
        self.field = field
        super().__init__(
            text=json.dumps(
                {"error": f"{field}: {message}", "field": field, **extra}, ensure_ascii=False
            ),
            content_type="application/json",
            headers=headers,
        )


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, field, message)


# -- constrained types (used by collector.schemas) ---------------------------------------------

#: Control characters refused in free text (tab, newline and carriage return are allowed).
_TEXT_CHARS: Final = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
#: One line: no control characters at all.
_LINE_CHARS: Final = r"[^\x00-\x1f\x7f]"
#: Not a control character and not a blank.
_SOLID: Final = r"[^\x00-\x20\x7f]"

TEXT_PATTERN: Final = rf"^{_TEXT_CHARS}*$"
REQUIRED_TEXT_PATTERN: Final = rf"^{_TEXT_CHARS}*{_SOLID}{_TEXT_CHARS}*$"
LINE_PATTERN: Final = rf"^{_LINE_CHARS}*$"
REQUIRED_LINE_PATTERN: Final = rf"^{_LINE_CHARS}*{_SOLID}{_LINE_CHARS}*$"
DEVICE_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{2,62}$"

MAX_TEXT: Final = 2000

# A calendar date 1970-01-01 .. 2099-12-31, exactly (leap days included), as a
# regular expression, so that every value the document allows is a real date.
_Y: Final = "(19[7-9][0-9]|20[0-9][0-9])"
_LEAP_Y: Final = "(19(7[26]|8[048]|9[26])|20([02468][048]|[13579][26]))"
_MD: Final = (
    "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
    "|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    "|02-(0[1-9]|1[0-9]|2[0-8]))"
)
_ISO_DATE: Final = f"({_Y}-{_MD}|{_LEAP_Y}-02-29)"
_DM: Final = (
    "((0?[1-9]|[12][0-9]|3[01])/(0?[13578]|1[02])"
    "|(0?[1-9]|[12][0-9]|30)/(0?[469]|11)"
    "|(0?[1-9]|1[0-9]|2[0-8])/0?2)"
)
_DMY_DATE: Final = f"({_DM}/{_Y}|29/0?2/{_LEAP_Y})"
_CLOCK: Final = (
    "T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,6})?)?"
    "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
)
#: UNIX seconds below 4,000,000,000 (year 2096).
_UNIX: Final = "[0-3]?[0-9]{1,9}(\\.[0-9]{1,6})?"
TIME_PATTERN: Final = f"^({_UNIX}|{_ISO_DATE}({_CLOCK})?|{_DMY_DATE})$"
TIME_DESCRIPTION: Final = (
    "UNIX seconds, a date YYYY-MM-DD or d/m/yyyy (the end of that day in the "
    "configured [report] time zone), or an ISO 8601 date-time (without an offset: "
    "in that time zone); 1970..2099"
)

Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT, pattern=TEXT_PATTERN)]
RequiredText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT, pattern=REQUIRED_TEXT_PATTERN)]
DeviceId = Annotated[
    str, msgspec.Meta(pattern=DEVICE_ID_PATTERN, description="device id (cluster id)")
]
Commune = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=LINE_PATTERN, description="commune code")
]
TimeParam = Annotated[str, msgspec.Meta(pattern=TIME_PATTERN, description=TIME_DESCRIPTION)]


def _line(max_length: int, pattern: str) -> msgspec.Meta:
    return msgspec.Meta(max_length=max_length, pattern=pattern)


#: One line of at most 200 characters, with at least one visible character.
Line200 = Annotated[str, _line(200, REQUIRED_LINE_PATTERN)]
#: One line of at most 200 characters, possibly empty.
OptLine200 = Annotated[str, _line(200, LINE_PATTERN)]
UserName = Annotated[str, msgspec.Meta(max_length=128, pattern=REQUIRED_LINE_PATTERN)]
Limit5k = Annotated[int, msgspec.Meta(ge=1, le=5000, description="at most this many")]
Limit10k = Annotated[int, msgspec.Meta(ge=1, le=10000, description="at most this many")]


# -- decoding --------------------------------------------------------------------------------

_AT_RE: Final = re.compile(
    r"^(.*?)(?: - at `\$(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[[0-9]+\])?(.*)`)?$", re.S
)
_FIELD_IN_MSG: Final = re.compile(r"(?:unknown|required) field `([^`]+)`")


def validation_error(
    exc: msgspec.ValidationError | msgspec.DecodeError, where: str = "$"
) -> ApiError:
    """msgspec's message ("Expected `int` >= 1 - at `$.limit`") as a 400 naming the field."""
    message = str(exc)
    match = _AT_RE.match(message)
    reason, field = message, where
    if match:
        reason = match.group(1)
        if match.group(2):
            field = match.group(2) + (match.group(3) or "")
    named = _FIELD_IN_MSG.search(reason)
    if named and field == where:
        field = named.group(1)
    reason = reason.replace("Object contains unknown field", "unknown field")
    reason = reason.replace("Object missing required field", "missing required field")
    return bad(field, reason)


@functools.cache
def _field_rules(cls: type[msgspec.Struct]) -> tuple[dict[str, re.Pattern[str]], frozenset[str]]:
    """Per Struct: field name -> its declared pattern; and the integer fields."""
    patterns: dict[str, re.Pattern[str]] = {}
    ints: set[str] = set()
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        for t in types:
            if isinstance(t, msgspec.inspect.Metadata):
                t = t.type
            if isinstance(t, msgspec.inspect.StrType) and t.pattern:
                patterns[f.name] = re.compile(t.pattern)
            if isinstance(t, msgspec.inspect.IntType):
                ints.add(f.name)
    return patterns, frozenset(ints)


def _full_patterns(value: msgspec.Struct) -> None:
    patterns, _ = _field_rules(type(value))
    for name, pattern in patterns.items():
        got = getattr(value, name)
        if isinstance(got, str) and pattern.fullmatch(got) is None:
            raise bad(name, f"Expected `str` matching regex {pattern.pattern!r}")


_INT_RE: Final = re.compile(r"-?[0-9]{1,19}")


def decode_params(raw: dict[str, str], cls: type[T]) -> T:
    """Path and query parameters (all strings) as ``cls``; unknown names are refused."""
    assert issubclass(cls, msgspec.Struct)
    _, ints = _field_rules(cls)
    for name in cls.__struct_fields__:
        if name in ints and name in raw and not _INT_RE.fullmatch(raw[name]):
            raise bad(name, "Expected `int`, got `str`")
    try:
        value = msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    for name in raw:
        if getattr(value, name) is None:  # lax decoding reads "null" as None
            raise bad(name, "Expected a value, got `null`")
    _full_patterns(value)
    return value


def query_of(request: web.Request) -> dict[str, str]:
    """The query as a dict; a name given twice is refused."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name in out:
            raise bad(name, "given more than once")
        out[name] = value
    return out


def page_params(request: web.Request, cls: type[T]) -> T:
    """A dashboard page's query as ``cls``: an empty form field means "not given",
    and names ``cls`` does not know (a language switch's extra keys) are ignored;
    the values themselves follow the API's rules, so a bad one is a 400 naming it.
    """
    assert issubclass(cls, msgspec.Struct)
    known = set(cls.__struct_fields__)
    query = {k: v for k, v in query_of(request).items() if k in known and v.strip()}
    return decode_params(query, cls)


_STRING_RE: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS_RE: Final = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes) -> int:
    """How deeply ``data``'s arrays and objects nest (strings skipped), without parsing it."""
    depth = deepest = 0
    for m in _BRACKETS_RE.finditer(_STRING_RE.sub(b'""', data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


async def read_json(request: web.Request) -> bytes:
    """The body of a JSON request, checked for content type, size and nesting depth."""
    if request.content_type != "application/json":
        raise ApiError(415, "Content-Type", "send application/json")
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "$", "request body too large") from None
    if json_depth(data) > MAX_DEPTH:
        raise bad("$", f"nested deeper than {MAX_DEPTH} levels")
    return data


def _strip(value: msgspec.Struct) -> msgspec.Struct:
    """Leading and trailing blanks of every string field removed (enum members,
    str subclasses, are kept: stripping would make them plain strings)."""
    changes = {
        name: getattr(value, name).strip(" \t\r\n")
        for name in value.__struct_fields__
        if isinstance(getattr(value, name), str) and not isinstance(getattr(value, name), Enum)
    }
    return msgspec.structs.replace(value, **changes)


def decode_body(data: bytes, cls: type[T]) -> T:
    """A JSON body as ``cls``: unknown fields, wrong types and broken constraints are 400."""
    assert issubclass(cls, msgspec.Struct)
    try:
        value = msgspec.json.decode(data or b"{}", type=cls)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except (msgspec.DecodeError, RecursionError):
        raise bad("$", "malformed JSON") from None
    _full_patterns(value)
    out = _strip(value)
    assert isinstance(out, cls)
    return out


async def json_object(request: web.Request) -> dict[str, Any]:
    """A JSON body that must be an object, for handlers without a declared Struct."""
    data = await read_json(request)
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        raise bad("$", "malformed JSON") from None
    if not isinstance(value, dict):
        raise bad("$", "expected a JSON object")
    return value


# -- times -------------------------------------------------------------------------------------


def parse_time(raw: str, tz: dt.tzinfo) -> dt.datetime:
    """An aware datetime from a value matching ``TIME_PATTERN``: UNIX seconds, or
    what ``as_of`` takes everywhere (``collector.b2.dates.parse_as_of``, the one
    date parser of the API, the pages, the CLI and the alerts): a date is the
    end of that day in ``tz``, a naive date-time is in ``tz``.
    """
    value = raw.strip()
    if value and "-" not in value and "/" not in value:
        return dt.datetime.fromtimestamp(float(value), tz)
    return parse_as_of(value, tz)


def optional_time(raw: str | None, tz: dt.tzinfo) -> float | None:
    """UNIX seconds of an optional time parameter (already checked against its pattern)."""
    return None if raw is None else parse_time(raw, tz).timestamp()


# -- where to go after signing in -----------------------------------------------------------------


def safe_next(raw: str | None) -> str:
    """A same-origin path to go to after login; anything else is "/".

    Refused: anything not starting with one "/", scheme-relative forms ("//host",
    "/\\host"), backslashes anywhere (browsers read them as "/"), and control
    characters or blanks, also when percent-encoded (``/%09/evil.example``:
    browsers drop tabs and newlines from URLs, making it ``//evil.example``).
    The same rules are in ``collector/web/static/app.js`` (``safeNext``).
    """
    if not raw or len(raw) > 500 or not raw.startswith("/"):
        return "/"
    decoded = raw
    for _ in range(3):  # "%2509" decodes to "%09", which a later hop decodes again
        decoded = unquote(decoded)
    for text in (raw, decoded):
        if "\\" in text or any(ord(c) < 33 or ord(c) == 127 for c in text):
            return "/"
        if text.startswith("//"):
            return "/"
    return raw


__all__ = [
    "MAX_DEPTH",
    "ApiError",
    "bad",
    "decode_body",
    "decode_params",
    "json_object",
    "parse_time",
    "query_of",
    "read_json",
    "safe_next",
]
