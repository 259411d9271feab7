"""`ferry serve` converts a session when its capture completes.

Conversions run one at a time in a worker thread, each as a `ferry convert
SESSION` child process: the server keeps receiving other sessions, a
guestfs appliance never shares the server's memory or its loggers, and a
stop ends the child by its pid (SIGINT: the conversion throws its overlays
away, so the capture stays exactly as received).

What a conversion is doing is kept in SESSION/convert-status.json (one
small file, read by `GET .../sessions/NAME` and by `wait()`); the child's
own log is SESSION/convert.log. A failed conversion can be run again by
hand with `ferry convert SESSION`.

With the boot check on (`ferry serve --check-boot`), the child is `ferry
convert --check-boot SESSION`: the converted VM boots once in a throwaway
overlay, and its result (SESSION/boot-check.json) joins the status. A check
that fails leaves the session converted (the conversion is committed; the
check only reports).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

from converters import boot_check, children, convert

log = logging.getLogger(__name__)

STATUS_FILE = "convert-status.json"
INVENTORY_FILE = "inventory.json"
# States a session's conversion goes through; the last two are final.
QUEUED, CONVERTING, CONVERTED, FAILED = "queued", "converting", "converted", "failed"
FINAL = (CONVERTED, FAILED)
# Seconds a stopped child gets to throw its overlays away. A guestfs call
# (the guest's initramfs tool) defers SIGINT until it returns, so then
# SIGKILL: the overlays are left as files a next run deletes, the capture
# is unchanged either way.
STOP_GRACE = 10.0


@dataclass
class ConvertStatus:
    state: str
    step: str = ""
    error: str = ""
    domain_xml: str = ""
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    boot_check: dict | None = None  # boot_check.BootCheck.to_json(), if run

    @property
    def seconds(self) -> float:
        if not (self.started_at and self.finished_at):
            return 0.0
        return self.finished_at - self.started_at

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 1)}


def read_status(session_dir: Path) -> ConvertStatus | None:
    """The conversion state of a session folder; None when serve never
    queued one. A failure fixed later by `ferry convert SESSION` by hand
    reads as converted (its result file is newer than the status)."""
    path = Path(session_dir) / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fields = ConvertStatus.__dataclass_fields__
    status = ConvertStatus(**{k: v for k, v in data.items() if k in fields})
    result = Path(session_dir) / convert.RESULT_FILE
    if (
        status.state == FAILED
        and result.exists()
        and result.stat().st_mtime > path.stat().st_mtime
    ):
        status = ConvertStatus(CONVERTED, step="by hand")
        status.boot_check = _fresh_boot_check(session_dir, path.stat().st_mtime)
    return status


def _fresh_boot_check(session_dir: Path, since: float) -> dict | None:
    """The session's boot check, if one finished after `since`."""
    check = boot_check.load(Path(session_dir))
    return check.to_json() if check and check.at >= since else None


def _write_status(session_dir: Path, status: ConvertStatus) -> None:
    path = session_dir / STATUS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status.to_json(), indent=2))
    os.replace(tmp, path)  # readers never see half a file


def wait(
    session_dir: Path, timeout: float, interval: float = 2.0
) -> ConvertStatus | None:
    """Poll until the session's conversion is converted or failed; the last
    status seen (None: none was queued) when `timeout` runs out first."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(session_dir)
        if (status and status.state in FINAL) or time.monotonic() >= deadline:
            return status
        time.sleep(interval)


def is_machine_capture(session_dir: Path) -> bool:
    """Only what `ferry capture` sent (it always describes the machine) is
    a system to convert; raw uploads of disks carry no inventory."""
    try:
        inventory = json.loads((session_dir / INVENTORY_FILE).read_text())
        return bool(inventory.get("disks"))
    except (OSError, ValueError, AttributeError):
        return False


class AutoConvert:
    """The queue of sessions to convert and the one worker that runs them."""

    def __init__(
        self,
        command: list[str] | None = None,
        check_boot: bool = False,
        check_boot_timeout: float | None = None,
    ) -> None:
        # The child: this interpreter running ferry's CLI (the same venv).
        self.command = command or [sys.executable, "-m", "converters.cli", "convert"]
        if check_boot:
            self.command = [*self.command, "--check-boot"]
            if check_boot_timeout:
                self.command += ["--check-boot-timeout", str(check_boot_timeout)]
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._stopping = False
        self._worker = threading.Thread(
            target=self._run, name="ferry-convert", daemon=True
        )
        self._worker.start()

    def submit(self, session_dir: Path) -> bool:
        """Queue a completed session; False when it is not one to convert
        or is already queued, converting or converted."""
        session_dir = Path(session_dir)
        if not is_machine_capture(session_dir):
            log.info("CONVERT skipped session=%s (no inventory)", session_dir.name)
            return False
        with self._lock:
            status = read_status(session_dir)
            if session_dir in self._pending or (status and status.state == CONVERTED):
                return False
            self._pending.add(session_dir)
            _write_status(session_dir, ConvertStatus(QUEUED, queued_at=time.time()))
        log.info("CONVERT queued session=%s", session_dir.name)
        self._queue.put(session_dir)
        return True

    def resume_interrupted(self, storage: Path) -> None:
        """Queue again what a previous server stopped before it finished."""
        for status_file in sorted(Path(storage).glob(f"*/{STATUS_FILE}")):
            status = read_status(status_file.parent)
            if status and status.state in (QUEUED, CONVERTING):
                self.submit_again(status_file.parent)

    def submit_again(self, session_dir: Path) -> None:
        with self._lock:
            _write_status(session_dir, ConvertStatus(FAILED, error="interrupted"))
        self.submit(session_dir)

    def stop(self) -> None:
        """End the running child by its pid and the worker; queued sessions
        stay queued in their status files for the next server."""
        self._stopping = True
        self._queue.put(None)
        with self._lock:
            child = self._child
        if child and child.poll() is None:
            os.kill(child.pid, signal.SIGINT)
            try:
                child.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
        self._worker.join(STOP_GRACE)

    def _run(self) -> None:
        while True:
            session_dir = self._queue.get()
            if session_dir is None or self._stopping:
                return
            try:
                self._convert(session_dir)
            except Exception:  # the worker must outlive any one session
                log.exception("CONVERT crashed session=%s", session_dir.name)
            finally:
                with self._lock:
                    self._pending.discard(session_dir)

    def _convert(self, session_dir: Path) -> None:
        name = session_dir.name
        status = read_status(session_dir) or ConvertStatus(QUEUED)
        status.state, status.started_at = CONVERTING, time.time()
        _write_status(session_dir, status)
        log.info("CONVERT start session=%s", name)
        with self._lock:
            self._child = subprocess.Popen(
                [*self.command, str(session_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                preexec_fn=children.die_with_parent,
            )
            child = self._child
        # stdout carries the domain file paths; read it beside stderr so
        # neither pipe can fill and stall the child.
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(child.stdout), daemon=True)
        reader.start()
        last = ""
        for line in child.stderr:
            line = line.rstrip()
            if not line:
                continue
            last = line
            if line.startswith("== "):
                status.step = line[3:]
                _write_status(session_dir, status)
                log.info("CONVERT step session=%s %s", name, status.step)
        code = child.wait()
        reader.join(5)
        with self._lock:
            self._child = None
        status.finished_at = time.time()
        # The check runs only once the conversion is committed: a fresh
        # result means converted, whatever it found.
        status.boot_check = _fresh_boot_check(session_dir, status.started_at)
        if code == 0 or status.boot_check:
            status.state, status.error = CONVERTED, ""
            status.domain_xml = next((ln.strip() for ln in out if ln.strip()), "")
            log.info(
                "CONVERT done session=%s seconds=%.0f xml=%s",
                name,
                status.seconds,
                status.domain_xml,
            )
            if status.boot_check:
                _log_boot_check(name, status.boot_check)
        elif self._stopping:
            # Interrupted: the child threw its overlays away; the next
            # server queues it again.
            status.state, status.error = CONVERTING, "interrupted by a stop"
            log.warning("CONVERT interrupted session=%s", name)
        else:
            status.state = FAILED
            status.error = last.removeprefix("ferry convert: ") or f"exit {code}"
            log.error(
                "CONVERT failed session=%s error=%s (retry: ferry convert %s)",
                name,
                status.error,
                session_dir,
            )
        _write_status(session_dir, status)


def _log_boot_check(name: str, check: dict) -> None:
    booted = check["result"] == boot_check.BOOTS
    log.log(
        logging.INFO if booted else logging.WARNING,
        "CONVERT boot-check session=%s result=%s stage=%s seconds=%.0f accel=%s%s",
        name,
        check["result"],
        check["stage"],
        check["seconds"],
        check["accelerator"],
        "" if booted else f" ({check['summary']}; console: {boot_check.LOG_FILE})",
    )


# The server's side: the few calls server.py makes.

AUTOCONVERT = web.AppKey("autoconvert", AutoConvert)


def install(
    app: web.Application,
    storage: Path,
    enabled: bool,
    check_boot: bool = False,
    check_boot_timeout: float | None = None,
) -> None:
    """Convert each machine capture of this server once it completes (and,
    with `check_boot`, boot-check each conversion)."""
    if not enabled:
        log.info("CONVERT off (--no-convert): run ferry convert SESSION by hand")
        return
    if check_boot:
        log.info("CONVERT boot check on: each converted VM boots once")

    async def start(app: web.Application) -> None:
        worker = AutoConvert(
            check_boot=check_boot, check_boot_timeout=check_boot_timeout
        )
        app[AUTOCONVERT] = worker
        worker.resume_interrupted(storage)

    async def stop(app: web.Application) -> None:
        await asyncio.to_thread(app[AUTOCONVERT].stop)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def disk_completed(app: web.Application, session) -> None:
    """Called after a disk's `complete`: the last one queues the session."""
    worker = app.get(AUTOCONVERT)
    if worker is not None and session.record.complete:
        worker.submit(session.sdir.root)


def session_status(session) -> dict:
    """The wire's session status plus its conversion (None: not queued)."""
    status = read_status(session.sdir.root)
    return {**session.status(), "conversion": status.to_json() if status else None}
