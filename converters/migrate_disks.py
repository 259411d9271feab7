"""Disks without shared storage: the destination QEMU exports its new, empty
disk over NBD, and the source mirrors into it with `blockdev-mirror`, which
is itself a pre-copy: a full pass, then whatever the guest dirtied, tracked
in a dirty bitmap. This follows "QMP invocation for live storage migration
with drive-mirror + NBD" in QEMU's docs/interop/live-block-operations.rst
(and qemu-iotests 194):

1. destination: `nbd-server-start`, then export the disk writable
   (`block-export-add`, which replaces `nbd-server-add` since QEMU 5.2);
2. source: an NBD client node on that export, `blockdev-mirror` into it,
   wait for `BLOCK_JOB_READY`; the memory migration starts only then;
3. at the switch-over, with the guest paused, `block-job-cancel` on the
   ready mirror: it copies what is still dirty and ends with
   `BLOCK_JOB_COMPLETED` and a consistent copy, not a pivot;
4. destination: `nbd-server-stop`; then the guest resumes there.

The docs pause the destination (`-S`) and `cont` it after step 4. ferry
instead asks the source to stop before it sends the device state
(`pause-before-switchover`, as libvirt does), so the destination needs no
`-S`, and the mirror's last copy is part of the measured downtime."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from qemu.qmp import QMPClient

from converters.events import EventStream, Progress


class DiskError(Exception):
    pass


@dataclass(frozen=True)
class DiskPair:
    key: str  # device name or qdev id, the same on both sides
    source_node: str
    dest_node: str
    size: int

    @property
    def export(self) -> str:
        return "ferry-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.key)

    @property
    def job(self) -> str:
        return self.export + "-mirror"

    @property
    def client_node(self) -> str:
        return self.export + "-nbd"


@dataclass(frozen=True)
class MirrorStatus:
    copied: int  # bytes the mirrors copied so far (offset)
    total: int  # bytes they have to copy, growing as the guest writes (len)
    ready: bool

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.copied)


def nbd_address(text: str) -> dict:
    """`unix:/path` or `tcp:HOST:PORT` as a QAPI SocketAddress."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return {"type": "unix", "path": rest}
    host, _, port = rest.rpartition(":")
    if kind == "tcp" and host and port.isdigit():
        return {"type": "inet", "host": host.strip("[]"), "port": port}
    raise ValueError(f"NBD address {text!r}: use unix:/path or tcp:HOST:PORT")


async def writable_disks(qmp: QMPClient) -> dict[str, tuple[str, int]]:
    """key -> (node name, virtual size) of every writable disk with media."""
    disks = {}
    for dev in await qmp.execute("query-block"):
        inserted = dev.get("inserted")
        if not inserted or inserted.get("ro") or dev.get("removable"):
            continue
        qdev = dev.get("qdev", "")
        # -drive names the device; -blockdev leaves it empty and the qdev
        # path (/machine/peripheral/ID/virtio-backend) carries the id.
        found = re.match(r"/machine/peripheral/([^/]+)", qdev)
        key = dev.get("device") or (found.group(1) if found else qdev)
        disks[key] = (inserted["node-name"], inserted["image"]["virtual-size"])
    return disks


class DiskMirror:
    """Mirrors every writable disk of the source into the destination's."""

    def __init__(
        self,
        src: QMPClient,
        dst: QMPClient,
        nbd: str,
        speed: int | None = None,
        sync_writes: bool = False,
        events: EventStream | None = None,
    ) -> None:
        self.src, self.dst, self.nbd = src, dst, nbd_address(nbd)
        self.speed = speed
        # write-blocking: once ready, a guest write completes only when the
        # destination has it, so the dirty set cannot grow faster than the
        # link: the disk counterpart of the pre-copy rule "limit the writer".
        self.sync_writes = sync_writes
        self.events = events or EventStream()
        self.pairs: list[DiskPair] = []
        self._server_started = False

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pairs)

    async def start(self) -> list[DiskPair]:
        here, there = await writable_disks(self.src), await writable_disks(self.dst)
        for key, (node, size) in sorted(here.items()):
            if key not in there:
                raise DiskError(f"the destination has no disk {key!r} to copy into")
            if there[key][1] != size:
                raise DiskError(
                    f"disk {key!r}: destination size {there[key][1]} "
                    f"!= source size {size}"
                )
            self.pairs.append(DiskPair(key, node, there[key][0], size))
        if not self.pairs:
            raise DiskError("the source has no writable disk to copy")
        # nbd-server-start still takes the legacy form, {type, data: {...}}.
        legacy = {
            "type": self.nbd["type"],
            "data": {k: v for k, v in self.nbd.items() if k != "type"},
        }
        await self.dst.execute("nbd-server-start", {"addr": legacy})
        self._server_started = True
        for p in self.pairs:
            await self.dst.execute(
                "block-export-add",
                {
                    "type": "nbd",
                    "id": p.export,
                    "node-name": p.dest_node,
                    "name": p.export,
                    "writable": True,
                },
            )
            await self.src.execute(
                "blockdev-add",
                {
                    "driver": "nbd",
                    "node-name": p.client_node,
                    "server": self.nbd,
                    "export": p.export,
                },
            )
            args = {
                "job-id": p.job,
                "device": p.source_node,
                "target": p.client_node,
                "sync": "full",
                "copy-mode": "write-blocking" if self.sync_writes else "background",
            }
            if self.speed:
                args["speed"] = self.speed
            await self.src.execute("blockdev-mirror", args)
            self.events.log(f"mirroring disk {p.key} ({p.size} bytes) to {p.export}")
        return self.pairs

    async def status(self) -> MirrorStatus:
        jobs = {j["device"]: j for j in await self.src.execute("query-block-jobs")}
        mine = [jobs[p.job] for p in self.pairs if p.job in jobs]
        if len(mine) != len(self.pairs):
            raise DiskError("a disk mirror ended unexpectedly")
        for j in mine:
            if j.get("io-status", "ok") != "ok" or j.get("status") == "aborting":
                raise DiskError(f"disk mirror {j['device']}: {j.get('io-status')}")
        return MirrorStatus(
            sum(j["offset"] for j in mine),
            sum(j["len"] for j in mine),
            all(j["ready"] for j in mine),
        )

    async def wait_ready(self, timeout: float, poll: float = 0.5) -> MirrorStatus:
        """Wait for the first full pass (BLOCK_JOB_READY on every disk)."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.status()
            self.events.emit(Progress("disks", st.copied, max(st.total, 1)))
            if st.ready:
                return st
            if time.monotonic() > deadline:
                raise DiskError(f"disk mirror not ready after {timeout:.0f} s")
            await asyncio.sleep(poll)

    async def complete(self, timeout: float = 300) -> MirrorStatus:
        """With the guest paused: end every mirror with a consistent copy."""
        st = await self.status()
        names = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")
        with self.src.listener(names) as listener:
            for p in self.pairs:
                await self.src.execute("block-job-cancel", {"device": p.job})
            pending, copied = {p.job for p in self.pairs}, 0
            async with asyncio.timeout(timeout):
                while pending:
                    ev = await listener.get()
                    job = ev["data"].get("device")
                    if job not in pending:
                        continue
                    if ev["event"] != "BLOCK_JOB_COMPLETED" or ev["data"].get("error"):
                        raise DiskError(
                            f"disk mirror {job} ended with {ev['event']} "
                            f"{ev['data'].get('error', '')}"
                        )
                    pending.discard(job)
                    copied += ev["data"].get("offset", 0)
        return MirrorStatus(max(copied, st.copied), max(copied, st.total), True)

    async def cleanup(self) -> None:
        """After a migration: drop the NBD clients and stop the server."""
        for p in self.pairs:
            await quietly(
                self.src.execute("blockdev-del", {"node-name": p.client_node})
            )
        if self._server_started:
            await quietly(self.dst.execute("nbd-server-stop"))
            self._server_started = False

    async def abort(self) -> None:
        """Give up: the source keeps its disks; the destination's copy is
        abandoned."""
        jobs = {
            j["device"] for j in await quietly(self.src.execute("query-block-jobs"), [])
        }
        for p in self.pairs:
            if p.job in jobs:
                await quietly(
                    self.src.execute(
                        "block-job-cancel", {"device": p.job, "force": True}
                    )
                )
        for _ in range(100):
            running = await quietly(self.src.execute("query-block-jobs"), [])
            if not {j["device"] for j in running} & {p.job for p in self.pairs}:
                break
            await asyncio.sleep(0.1)
        await self.cleanup()


async def quietly(coro, default=None):
    """Best-effort cleanup: the peer may already be gone."""
    try:
        return await coro
    except Exception:  # noqa: BLE001 - cleanup must not mask the real error
        return default
