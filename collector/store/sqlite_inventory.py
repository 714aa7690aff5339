"""``InventoryStore`` on SQLite: the district's inventory of clusters."""

from __future__ import annotations

import time
from collections.abc import Sequence

from collector.model import InventoryDevice
from collector.store.base import (
    Conflict,
)
from collector.store.sqlite_base import (
    _INVENTORY_COLS,
    _chunks,
    _qmarks,
    _SQLiteBase,
)


class InventoryRole(_SQLiteBase):
    """``InventoryStore`` on SQLite."""

    async def upsert_inventory(
        self, devices: Sequence[InventoryDevice], *, remove_missing: bool, actor: str = "system"
    ) -> tuple[int, int, int]:
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise Conflict(f"inventory lists device {dup!r} twice")
        now = time.time()
        async with self._tx() as db:
            async with db.execute("SELECT device_id, listed_at FROM inventory") as cur:
                listed = {r["device_id"]: r["listed_at"] for r in await cur.fetchall()}
            existing = set(listed)
            rows = [
                (
                    d.device_id,
                    d.commune_code,
                    d.commune_name,
                    str(d.commune_kind),
                    d.district,
                    d.province,
                    d.address,
                    d.latitude,
                    d.longitude,
                    d.contractor,
                    d.sim_iccid,
                    d.sim_phone,
                    d.install_date,
                    d.position,
                    # First listed: kept across re-imports (a cluster counts from then).
                    listed.get(d.device_id) or now,
                )
                for d in devices
            ]
            await db.executemany(
                f"INSERT OR REPLACE INTO inventory ({_INVENTORY_COLS}, listed_at)"
                f" VALUES ({_qmarks(15)})",
                rows,
            )
            removed = existing - set(ids) if remove_missing else set()
            for chunk in _chunks(sorted(removed)):
                await db.execute(
                    f"DELETE FROM inventory WHERE device_id IN ({_qmarks(len(chunk))})", chunk
                )
            await self._touch(db, set(ids) | removed)
            await self._history_changed(db, None)  # who existed, in which commune
            await db.execute(  # list_inventory's copies are stale, in every instance
                "INSERT INTO fleet_versions (commune, version) VALUES ('~inventory', 1)"
                " ON CONFLICT(commune) DO UPDATE SET version = fleet_versions.version + 1"
            )
            added = len(set(ids) - existing)
            updated = len(ids) - added
            await self._audit(
                db,
                actor,
                "inventory.upsert",
                "inventory",
                {"added": added, "updated": updated, "removed": sorted(removed)},
            )
        return added, updated, len(removed)

    async def list_inventory(self) -> list[InventoryDevice]:
        return await self._kept_inventory()
