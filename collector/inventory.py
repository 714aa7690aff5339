"""The district's inventory of speaker clusters: import and export as CSV or XLSX.

Pure: bytes in, devices out (and back). Storage lives elsewhere; callers hand
the parsed devices to the store's ``upsert_inventory`` in one transaction.

Import is all or nothing: :func:`parse_inventory` either returns every device
of the file or raises :class:`InventoryError` listing *every* problem found,
each with its row number (as a spreadsheet shows it: the header is row 1),
the column's name as written in the file, and what was wrong.

Headers may be the English keys (``device_id``) or Vietnamese names
(``Mã thiết bị``), with or without diacritics and in any case. The order of
the rows is kept: a device's ``position`` is its index in the file, and the
communes keep the order in which they first appear (the order of the B2 rows).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Any, Final

from collector.model import CommuneKind, InventoryDevice
from fleet_protocol import DEVICE_ID_RE
from fleet_protocol.config_schema import Parse, convert_fields

#: Canonical column keys, in export order.
COLUMNS: Final[tuple[str, ...]] = (
    "device_id",
    "commune_code",
    "commune_name",
    "commune_kind",
    "district",
    "province",
    "address",
    "latitude",
    "longitude",
    "contractor",
    "sim_iccid",
    "sim_phone",
    "install_date",
)

REQUIRED: Final[frozenset[str]] = frozenset({"device_id", "commune_code", "commune_name"})

#: Header written on export, per language: (Vietnamese, English).
HEADERS: Final[dict[str, tuple[str, str]]] = {
    "device_id": ("Mã thiết bị", "device_id"),
    "commune_code": ("Mã xã", "commune_code"),
    "commune_name": ("Tên xã", "commune_name"),
    "commune_kind": ("Loại đơn vị", "commune_kind"),
    "district": ("Huyện", "district"),
    "province": ("Tỉnh", "province"),
    "address": ("Địa chỉ", "address"),
    "latitude": ("Vĩ độ", "latitude"),
    "longitude": ("Kinh độ", "longitude"),
    "contractor": ("Đơn vị thi công", "contractor"),
    "sim_iccid": ("ICCID SIM", "sim_iccid"),
    "sim_phone": ("Số điện thoại SIM", "sim_phone"),
    "install_date": ("Ngày lắp đặt", "install_date"),
}

#: Further accepted header spellings (compared after :func:`_fold`).
_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "device_id": ("device", "id", "ma cum loa", "ma thiet bi", "device id"),
    "commune_code": ("ma don vi", "ma xa phuong", "ma xa phuong thi tran", "commune code"),
    "commune_name": (
        "ten don vi",
        "don vi",
        "xa",
        "ten xa phuong",
        "ten xa phuong thi tran",
        "commune",
        "commune name",
    ),
    "commune_kind": ("loai", "cap xa", "kind", "commune kind"),
    "district": ("quan huyen", "huyen thi xa", "quan huyen thi xa"),
    "province": ("tinh thanh pho", "tinh thanh"),
    "address": ("dia chi lap dat", "vi tri"),
    "latitude": ("lat",),
    "longitude": ("lon", "lng"),
    "contractor": ("nha thau", "don vi sua chua"),
    "sim_iccid": ("iccid", "so iccid", "sim iccid"),
    "sim_phone": ("so thue bao", "so dien thoai", "phone", "sim phone", "msisdn"),
    "install_date": ("ngay lap", "installed", "install date"),
}

#: Columns some districts keep for their own use; accepted and ignored.
_IGNORED: Final[frozenset[str]] = frozenset({"stt", "ghi chu", "notes", "no"})

_KIND_WORDS: Final[dict[str, CommuneKind]] = {
    "": CommuneKind.XA,
    "xa": CommuneKind.XA,
    "commune": CommuneKind.XA,
    "phuong": CommuneKind.PHUONG,
    "ward": CommuneKind.PHUONG,
    "thi tran": CommuneKind.THI_TRAN,
    "township": CommuneKind.THI_TRAN,
    "town": CommuneKind.THI_TRAN,
}

_ICCID_RE: Final = re.compile(r"89\d{17,18}")
_PHONE_RE: Final = re.compile(r"0\d{9,10}")
_DMY_RE: Final = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})")


def _fold(text: str) -> str:
    """Header key: no diacritics, lower case, words separated by one space."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", plain.lower()).split())


def _header_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for key in COLUMNS:
        for name in (key, *HEADERS[key], *_ALIASES.get(key, ())):
            lookup[_fold(name)] = key
    return lookup


_LOOKUP: Final[dict[str, str]] = _header_lookup()


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem in an inventory file.

    ``row`` is the spreadsheet row number (header = 1), None for the file as a
    whole; ``column`` is the column's header as written in the file (or the
    canonical key when the column is missing), None when not about one column.
    """

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where) or 'file'}: {self.message}"


class InventoryError(ValueError):
    """An inventory file that cannot be imported; ``errors`` lists every problem."""

    #: At most this many problems are spelled out in ``str(error)``.
    SHOWN: Final = 20

    def __init__(self, source: str, errors: Sequence[RowError]) -> None:
        self.source = source
        self.errors: tuple[RowError, ...] = tuple(errors)
        lines = [str(e) for e in self.errors[: self.SHOWN]]
        if len(self.errors) > self.SHOWN:
            lines.append(f"... and {len(self.errors) - self.SHOWN} more")
        plural = "s" if len(self.errors) != 1 else ""
        super().__init__(
            f"inventory {source}: {len(self.errors)} problem{plural}, nothing imported\n  "
            + "\n  ".join(lines)
        )


# --------------------------------------------------------------------------- reading


def _rows_from_csv(data: bytes, source: str) -> list[list[Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryError(
            source,
            [
                RowError(
                    None, None, f"not UTF-8 text (byte {exc.start}); save the file as CSV UTF-8"
                )
            ],
        ) from exc
    # The delimiter is told by the header line alone: Excel in a Vietnamese
    # locale writes ";", others ",". Sniffing data rows would be fooled by
    # addresses full of commas or semicolons.
    header = text.lstrip("\r\n").split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)
    try:
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [[_csv_unguard(c) for c in r] for r in rows]
    except csv.Error as exc:
        raise InventoryError(source, [RowError(None, None, f"unreadable CSV: {exc}")]) from exc


def _rows_from_xlsx(data: bytes, source: str) -> list[list[Any]]:
    import openpyxl  # imported here: CSV users should not pay for it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as exc:
        raise InventoryError(
            source, [RowError(None, None, f"unreadable XLSX workbook: {exc}")]
        ) from exc
    try:
        sheet = book.worksheets[0]
        return [list(r) for r in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def _is_xlsx(data: bytes, source: str) -> bool:
    return data[:4] == b"PK\x03\x04" or source.lower().endswith((".xlsx", ".xlsm"))


#: A text cell starting with one of these is a formula to Excel; CSV exports
#: prefix such cells with "'" (Excel's text marker) and imports drop it again.
FORMULA_START: Final = ("=", "+", "-", "@", "'")


def csv_text(value: str) -> str:
    """``value`` made safe from formula evaluation when a spreadsheet opens the CSV."""
    return "'" + value if value.startswith(FORMULA_START) else value


def _csv_unguard(value: str) -> str:
    return value[1:] if value[:1] == "'" and value[1:].startswith(FORMULA_START) else value


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _required(value: Any) -> str:
    text = _cell_text(value)
    if not text:
        raise ValueError("required, but empty")
    return text


def _device_id(value: Any) -> str:
    text = _required(value)
    if not DEVICE_ID_RE.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a device id (lower-case letters, digits and '-',"
            " 3-63 characters, not starting with '-')"
        )
    return text


def _coordinate(limit: float) -> Callable[[Any], float | None]:
    def parse(raw: Any) -> float | None:
        if raw is None or raw == "":
            return None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            text = str(raw).strip()
            if "," in text and "." not in text:
                text = text.replace(",", ".")  # Vietnamese decimal comma
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
        if not -limit <= value <= limit:
            raise ValueError(f"{value:g} is out of range [-{limit:g}, {limit:g}]")
        # 7 decimals is 1 cm; more is noise, and spreadsheets keep 15 digits only.
        return round(value, 7)

    return parse


def _install_date(raw: Any) -> str:
    if raw is None or raw == "":
        return ""
    if isinstance(raw, dt.datetime):
        return raw.date().isoformat()
    if isinstance(raw, dt.date):
        return raw.isoformat()
    text = str(raw).strip()
    try:
        match = _DMY_RE.fullmatch(text)
        if match:
            day, month, year = (int(g) for g in match.groups())
            return dt.date(year, month, day).isoformat()
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"{text!r} is not a date (use YYYY-MM-DD or dd/mm/yyyy)") from None


def _iccid(raw: Any) -> str:
    if raw is None or raw == "":
        return ""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raise ValueError("stored as a number, which loses digits; format the column as text")
    text = re.sub(r"[\s-]", "", str(raw)).upper().removesuffix("F")
    if not _ICCID_RE.fullmatch(text):
        raise ValueError(f"{str(raw).strip()!r} is not an ICCID (19-20 digits starting 89)")
    return text


def _phone(raw: Any) -> str:
    if raw is None or raw == "":
        return ""
    text = re.sub(r"[\s.()-]", "", _cell_text(raw))
    if text.startswith("+84"):
        text = "0" + text[3:]
    elif text.startswith("84") and len(text) >= 11:
        text = "0" + text[2:]
    elif text.isdigit() and len(text) == 9 and not isinstance(raw, str):
        text = "0" + text  # a number cell dropped the leading zero
    if not _PHONE_RE.fullmatch(text):
        raise ValueError(
            f"{_cell_text(raw)!r} is not a Vietnamese phone number (0 and 9-10 digits, or +84)"
        )
    return text


def _kind(raw: Any) -> CommuneKind:
    text = _cell_text(raw)
    kind = _KIND_WORDS.get(_fold(text))
    if kind is None:
        raise ValueError(f"{text!r} is not one of xã, phường, thị trấn")
    return kind


Cell = Annotated[str, Parse(_cell_text)]


@dataclass(frozen=True)
class InventoryRow:
    """One data row's cells as typed values, built by ``fleet_protocol.config_schema``.

    Each field parses a spreadsheet cell (text, a number, a date); a bad cell
    is that field's error, reported with the row and the column's own name.
    """

    device_id: Annotated[str, Parse(_device_id)]
    commune_code: Annotated[str, Parse(_required)]
    commune_name: Annotated[str, Parse(_required)]
    commune_kind: Annotated[CommuneKind, Parse(_kind)] = CommuneKind.XA
    district: Cell = ""
    province: Cell = ""
    address: Cell = ""
    latitude: Annotated[float | None, Parse(_coordinate(90.0))] = None
    longitude: Annotated[float | None, Parse(_coordinate(180.0))] = None
    contractor: Cell = ""
    sim_iccid: Annotated[str, Parse(_iccid)] = ""
    sim_phone: Annotated[str, Parse(_phone)] = ""
    install_date: Annotated[str, Parse(_install_date)] = ""


def _map_header(header: list[Any], errors: list[RowError]) -> dict[int, str]:
    """Column index → canonical key; records unknown, duplicate and missing columns."""
    columns: dict[int, str] = {}
    seen: dict[str, str] = {}
    for index, cell in enumerate(header):
        name = _cell_text(cell)
        if not name:
            continue
        folded = _fold(name)
        if folded in _IGNORED:
            continue
        key = _LOOKUP.get(folded)
        if key is None:
            errors.append(RowError(1, name, "unknown column"))
            continue
        if key in seen:
            errors.append(RowError(1, name, f"same column as {seen[key]!r}"))
            continue
        seen[key] = name
        columns[index] = key
    for key in COLUMNS:
        if key in REQUIRED and key not in seen:
            errors.append(RowError(1, HEADERS[key][0], f"required column missing (or '{key}')"))
    return columns


def parse_inventory(data: bytes, *, source: str = "<inventory>") -> list[InventoryDevice]:
    """All devices of an inventory file (CSV UTF-8 with or without BOM, or XLSX).

    The format is told by content (XLSX is a zip) or by the ``source`` name's
    extension. Raises :class:`InventoryError` listing every problem when
    anything is wrong; then no device should be imported.
    """
    rows = _rows_from_xlsx(data, source) if _is_xlsx(data, source) else _rows_from_csv(data, source)
    errors: list[RowError] = []
    # Skip blank lines before the header (some sheets have an empty first row).
    start = 0
    while start < len(rows) and not any(_cell_text(c) for c in rows[start]):
        start += 1
    if start == len(rows):
        raise InventoryError(source, [RowError(None, None, "empty file: no header row")])
    columns = _map_header(rows[start], errors)
    header_names = {key: _cell_text(rows[start][i]) for i, key in columns.items()}
    if errors and any(e.message.startswith("required column") for e in errors):
        raise InventoryError(source, errors)

    devices: list[InventoryDevice] = []
    first_row_of: dict[str, int] = {}
    communes: dict[str, tuple[int, tuple[str, CommuneKind, str, str]]] = {}
    for offset, raw in enumerate(rows[start + 1 :], start=start + 2):
        if not any(_cell_text(c) for c in raw):
            continue
        cells = {key: raw[i] if i < len(raw) else None for i, key in columns.items()}
        width = len(rows[start])
        if any(_cell_text(c) for c in raw[width:]):
            errors.append(RowError(offset, None, f"values beyond the header's {width} columns"))
        values, bad = convert_fields(InventoryRow, cells)
        for e in bad:
            errors.append(RowError(offset, header_names.get(e.field, e.field), e.reason))

        def error(key: str, message: str, offset: int = offset) -> None:
            errors.append(RowError(offset, header_names.get(key, key), message))

        device_id = values.get("device_id", "")
        if device_id:
            if device_id in first_row_of:
                error(
                    "device_id",
                    f"duplicate device id {device_id!r} (first on row {first_row_of[device_id]})",
                )
            else:
                first_row_of[device_id] = offset
        code, name = values.get("commune_code", ""), values.get("commune_name", "")
        kind = values.get("commune_kind", CommuneKind.XA)
        district, province = values.get("district", ""), values.get("province", "")
        if code and name:
            commune = (name, kind, district, province)
            if code not in communes:
                communes[code] = (offset, commune)
            else:
                first, known = communes[code]
                for label, key, mine, theirs in zip(
                    ("name", "kind", "district", "province"),
                    ("commune_name", "commune_kind", "district", "province"),
                    commune,
                    known,
                    strict=True,
                ):
                    if mine != theirs:
                        error(
                            key,
                            f"commune code {code!r} has {label} {str(theirs)!r} on row {first}"
                            f" but {str(mine)!r} here",
                        )
        latitude, longitude = values.get("latitude"), values.get("longitude")
        coordinate_errors = {"latitude", "longitude"} & {e.field for e in bad}
        if (latitude is None) != (longitude is None) and not coordinate_errors:
            missing = "longitude" if longitude is None else "latitude"
            error(missing, "required when the other coordinate is given")
        if bad:
            continue  # the file is refused; its other rows are still checked
        row = InventoryRow(**values)
        devices.append(
            InventoryDevice(
                device_id=row.device_id,
                commune_code=row.commune_code,
                commune_name=row.commune_name,
                commune_kind=row.commune_kind,
                district=row.district,
                province=row.province,
                address=row.address,
                latitude=row.latitude,
                longitude=row.longitude,
                contractor=row.contractor,
                sim_iccid=row.sim_iccid,
                sim_phone=row.sim_phone,
                install_date=row.install_date,
                position=len(devices),
            )
        )
    if errors:
        raise InventoryError(source, errors)
    return devices


def read_inventory(path: str | Path) -> list[InventoryDevice]:
    """:func:`parse_inventory` of a file on disk; an unreadable file is an InventoryError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InventoryError(str(path), [RowError(None, None, f"cannot read: {exc}")]) from exc
    return parse_inventory(data, source=str(path))


# --------------------------------------------------------------------------- writing


def _header(lang: str) -> list[str]:
    return [HEADERS[key][1 if lang == "en" else 0] for key in COLUMNS]


def _values(device: InventoryDevice) -> list[str | float | None]:
    return [
        device.device_id,
        device.commune_code,
        device.commune_name,
        device.commune_kind.value,
        device.district,
        device.province,
        device.address,
        device.latitude,
        device.longitude,
        device.contractor,
        device.sim_iccid,
        device.sim_phone,
        device.install_date,
    ]


def _ordered(devices: Iterable[InventoryDevice]) -> list[InventoryDevice]:
    return sorted(devices, key=lambda d: d.position)


def inventory_to_csv(devices: Iterable[InventoryDevice], *, lang: str = "vi") -> bytes:
    """The inventory as CSV UTF-8 with BOM (Excel shows the diacritics), in position order.

    :func:`parse_inventory` reads it back to the same devices.
    """
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_header(lang))
    for device in _ordered(devices):
        writer.writerow(
            [
                "" if v is None else repr(v) if isinstance(v, float) else csv_text(v)
                for v in _values(device)
            ]
        )
    return out.getvalue().encode("utf-8-sig")


def inventory_to_xlsx(devices: Iterable[InventoryDevice], *, lang: str = "vi") -> bytes:
    """The inventory as an XLSX workbook, in position order; ICCID and phone kept as text.

    :func:`parse_inventory` reads it back to the same devices.
    """
    import openpyxl
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Danh mục cụm loa" if lang != "en" else "Inventory"
    sheet.append(_header(lang))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for device in _ordered(devices):
        sheet.append(_values(device))
        for cell in sheet[sheet.max_row]:
            if isinstance(cell.value, str) and cell.value.startswith("="):
                cell.data_type = "s"  # text, never a formula
    text_columns = {COLUMNS.index(k) + 1 for k in ("sim_iccid", "sim_phone", "commune_code")}
    for column in text_columns:
        for (cell,) in sheet.iter_rows(min_row=2, min_col=column, max_col=column):
            cell.number_format = "@"  # keep leading zeros and all ICCID digits
    widths = (22, 10, 18, 10, 14, 12, 30, 11, 11, 18, 22, 14, 12)
    for index, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


# --------------------------------------------------------------------------- re-import


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What importing a file over the current inventory changes (device ids, file order)."""

    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    #: Devices absent from the file: removed only when asked (``remove_missing``).
    missing: tuple[str, ...]
    remove_missing: bool

    @property
    def removed(self) -> tuple[str, ...]:
        return self.missing if self.remove_missing else ()

    def describe(self) -> str:
        kept = "" if self.remove_missing or not self.missing else f", {len(self.missing)} kept"
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed{kept}"
        )


def plan_import(
    current: Iterable[InventoryDevice],
    incoming: Sequence[InventoryDevice],
    *,
    remove_missing: bool = False,
) -> ImportPlan:
    """Compare a parsed file with the stored inventory.

    A device whose row moved counts as updated: row order is B2 row order.
    """
    known = {d.device_id: d for d in current}
    incoming_ids = {d.device_id for d in incoming}
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for device in incoming:
        old = known.get(device.device_id)
        if old is None:
            added.append(device.device_id)
        elif _same(old, device):
            unchanged.append(device.device_id)
        else:
            updated.append(device.device_id)
    missing = tuple(d for d in known if d not in incoming_ids)
    return ImportPlan(tuple(added), tuple(updated), tuple(unchanged), missing, remove_missing)


def _same(a: InventoryDevice, b: InventoryDevice) -> bool:
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(InventoryDevice))


def renumbered(devices: Iterable[InventoryDevice]) -> list[InventoryDevice]:
    """Devices in position order with positions 0..n-1 (after a merge or removal)."""
    return [replace(d, position=i) for i, d in enumerate(_ordered(devices))]
