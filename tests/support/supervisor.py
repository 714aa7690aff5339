"""A stand-in for systemd's ``Restart=always`` with ``ExecStartPre=``, for upgrade tests.

systemd cannot run here; what the upgrade relies on is small: run the guard,
then the service; whenever the service exits, wait ``restart_s`` and do it
again, until stopped. ``stop()`` sends SIGTERM (like ``systemctl stop``) and
waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path


class Supervisor:
    def __init__(
        self,
        pre: Sequence[str],
        start: Sequence[str],
        log: Path,
        *,
        restart_s: float = 0.3,
        cwd: Path | None = None,
    ) -> None:
        self.pre = list(pre)
        self.start = list(start)
        self.log = log
        self.restart_s = restart_s
        self.cwd = cwd
        self.starts = 0
        self.exits: list[int] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def _spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        with self.log.open("ab") as err:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def _run(self) -> None:
        while not self._stopping:
            guard = await self._spawn(self.pre)
            await guard.wait()
            if self._stopping:
                return
            self._proc = await self._spawn(self.start)
            self.starts += 1
            self.exits.append(await self._proc.wait())
            self._proc = None
            if not self._stopping:
                await asyncio.sleep(self.restart_s)

    def begin(self) -> Supervisor:
        self._task = asyncio.create_task(self._run(), name="supervisor")
        return self

    async def stop(self, timeout: float = 20.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._task
            except TimeoutError:
                self._task.cancel()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
