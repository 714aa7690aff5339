"""REST routes of the B2 report and the inventory, under ``/api/v1``.

    GET  /api/v1/reports/b2?as_of=&format=json|csv|xlsx|html&lang=&scope=&district=&province=&unit=
    GET  /api/v1/reports/b2/summary?as_of=&lang=&compare=1
    GET  /api/v1/inventory?format=json|csv|xlsx&lang=
    POST /api/v1/inventory/import?remove_missing=1   (body: the CSV/XLSX file, raw or multipart)

``as_of`` is a date (the end of that day in the ``[report]`` time zone), a
date-time, or absent (now). Reading needs ``read``; a commune officer sees only
their communes. Importing needs ``inventory.write``; a bad file answers 400
with every row-level error and stores nothing.

The handlers are registered, with their parameter and answer Structs
(``collector.schemas``), in the route table ``collector.routes.ROUTES``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import replace
from typing import Any, Final

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from collector.auth import PRINCIPAL, Permission, Principal, require
from collector.b2.service import b2_table, import_inventory, month_over_month
from collector.b2.settings import ReportSettings
from collector.exports import Format, file_name, render
from collector.exports.as_json import table_to_dict
from collector.inventory import InventoryError, inventory_to_csv, inventory_to_xlsx
from collector.keys import CONFIG, REPO
from collector.model import InventoryDevice
from collector.params import ApiError, bad, parse_time
from collector.schemas import B2Params, B2SummaryParams, ImportParams, InventoryParams

log = logging.getLogger("loa.collector.b2")

#: Largest inventory upload. Well above a province (2,000 clusters is ~0.4 MB of
#: CSV); the app-wide JSON body limit is far smaller, so uploads are read here.
MAX_INVENTORY_BYTES: Final = 8 * 1024 * 1024


def settings_of(request: web.Request) -> ReportSettings:
    """The app's ``[report]`` settings."""
    return request.app[CONFIG].report


def as_of_param(raw: str | None, settings: ReportSettings) -> dt.datetime:
    """The ``as_of`` parameter (already pattern-checked) in ``[report]``'s time zone; none: now."""
    tz = settings.tz()
    return dt.datetime.now(tz) if raw is None else parse_time(raw, tz)


def _communes(request: web.Request) -> frozenset[str] | None:
    principal: Principal = request[PRINCIPAL]
    return principal.communes


async def b2_view(
    request: web.Request, p: B2Params, b: None
) -> web.StreamResponse | dict[str, Any]:
    require(request, Permission.READ)
    settings = settings_of(request)
    if p.unit is not None:
        settings = replace(settings, unit_name=p.unit)
    table = await b2_table(
        request.app[REPO],
        as_of=as_of_param(p.as_of, settings),
        settings=settings,
        scope=p.scope,
        lang=p.lang or settings.lang,
        district=p.district,
        province=p.province,
        communes=_communes(request),
        correlation=request.app[CONFIG].correlation,
    )
    fmt = Format(p.format)
    if fmt is Format.JSON:
        return table_to_dict(table)
    out = render(table, fmt)
    disposition = "inline" if fmt is Format.HTML else "attachment"
    return web.Response(
        body=out.body,
        headers={
            "Content-Type": out.content_type,
            "Content-Disposition": f'{disposition}; filename="{file_name(table, fmt)}"',
        },
    )


async def b2_summary_view(request: web.Request, p: B2SummaryParams, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    settings = settings_of(request)
    as_of = as_of_param(p.as_of, settings)
    lang = p.lang or settings.lang
    repo = request.app[REPO]
    communes = _communes(request)
    table = await b2_table(
        repo,
        as_of=as_of,
        settings=settings,
        lang=lang,
        communes=communes,
        correlation=request.app[CONFIG].correlation,
    )
    data = table_to_dict(table)
    answer: dict[str, Any] = {
        "as_of": data["as_of"],
        "as_of_date": data["as_of_date"],
        "unit_name": data["unit_name"],
        "summary": table.summary,
        "total": data["total"],
    }
    if p.compare == "1":
        change = await month_over_month(repo, as_of=as_of, lang=lang, communes=communes)
        answer["comparison"] = {
            "since": change.before.isoformat(),
            "newly_broken": list(change.newly_broken),
            "repaired": list(change.repaired),
            "still_broken": list(change.still_broken),
            "improving": [
                {"commune_code": t.commune_code, "unit": t.unit, "delta": t.delta}
                for t in change.improving
            ],
            "worsening": [
                {"commune_code": t.commune_code, "unit": t.unit, "delta": t.delta}
                for t in change.worsening
            ],
            "sentence": change.sentence,
        }
    return answer


def _device_json(d: InventoryDevice) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "commune_code": d.commune_code,
        "commune_name": d.commune_name,
        "commune_kind": d.commune_kind.value,
        "district": d.district,
        "province": d.province,
        "address": d.address,
        "latitude": d.latitude,
        "longitude": d.longitude,
        "contractor": d.contractor,
        "sim_iccid": d.sim_iccid,
        "sim_phone": d.sim_phone,
        "install_date": d.install_date,
        "position": d.position,
    }


async def inventory_view(
    request: web.Request, p: InventoryParams, b: None
) -> web.Response | dict[str, Any]:
    require(request, Permission.READ)
    fmt, lang = p.format, p.lang
    communes = _communes(request)
    devices = [
        d
        for d in await request.app[REPO].list_inventory()
        if communes is None or d.commune_code in communes
    ]
    if fmt == "json":
        return {"devices": [_device_json(d) for d in devices]}
    if fmt == "csv":
        body, content_type = inventory_to_csv(devices, lang=lang), "text/csv; charset=utf-8"
    else:
        body = inventory_to_xlsx(devices, lang=lang)
        content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return web.Response(
        body=body,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="inventory.{fmt}"',
        },
    )


async def _read_upload(request: web.Request) -> tuple[bytes, str]:
    """The uploaded file and its name: a raw body, or the first file part of a form."""
    if request.content_type.startswith("multipart/"):
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    raise bad("file", "the form has no file part")
                if isinstance(part, BodyPartReader) and part.filename:
                    return await _read_limited(part), part.filename
        except (ValueError, HttpProcessingError) as exc:
            # No boundary, broken part headers: aiohttp's parser refuses the form.
            raise bad(
                "file", f"malformed multipart form: {str(exc).splitlines()[0]:.100}"
            ) from None
    return await _read_limited(request.content), "upload"


async def _read_limited(source: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = (
            await source.read_chunk(65536)
            if isinstance(source, BodyPartReader)
            else await source.read(65536)
        )
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_INVENTORY_BYTES:
            raise ApiError(413, "file", f"larger than {MAX_INVENTORY_BYTES} bytes")
        chunks.append(chunk)


async def inventory_import(
    request: web.Request, p: ImportParams, b: None
) -> web.Response | dict[str, Any]:
    principal = require(request, Permission.INVENTORY_WRITE)
    remove_missing = p.remove_missing == "1"
    data, name = await _read_upload(request)
    if not data:
        raise bad("file", "empty upload")
    try:
        outcome = await import_inventory(
            request.app[REPO],
            data,
            source=name[:100],
            remove_missing=remove_missing,
            actor=principal.name,
        )
    except InventoryError as exc:
        log.warning(
            "inventory import by %s rejected: %d problem(s), first: %s",
            principal.name,
            len(exc.errors),
            exc.errors[0] if exc.errors else "-",
        )
        return _json(
            {
                "error": f"file: {len(exc.errors)} problem(s), nothing imported",
                "field": "file",
                "errors": [
                    {"row": e.row, "column": e.column, "message": e.message} for e in exc.errors
                ],
            },
            status=400,
        )
    plan = outcome.plan
    log.info("inventory import by %s: %s", principal.name, plan.describe())
    return {
        "devices": outcome.devices,
        "added": len(plan.added),
        "updated": len(plan.updated),
        "unchanged": len(plan.unchanged),
        "removed": list(plan.removed),
        "kept": [] if remove_missing else list(plan.missing),
    }


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))
