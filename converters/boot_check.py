"""The boot check: start a converted VM once, in throwaway overlays and with
no network, and watch its serial console until the system reaches
userspace or stops somewhere on the way.

The VM is the domain's own machine (`qemu_cmdline.command` for the same
DomainSpec) with three differences: its disks are qcow2 overlays in a
temporary folder next to the disks, deleted whatever happens; UEFI boots
with a copy of the variable store, never the domain's own; the NICs keep
their MACs on a user-mode netdev with `restrict=on`, so nothing leaves the
host. Inside the overlays (boot_console) the guest is made to talk on
ttyS0; the console (boot_stages) decides, and a failure that shows on it
ends the check at once instead of at the timeout.

The result goes next to the disks: boot-check.json (BootCheck) and the
console as boot-check.log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from converters import accel, boot_stages, children, qemu_cmdline
from converters.domain.spec import DomainSpec
from converters.events import EventStream

RESULT_FILE = "boot-check.json"
LOG_FILE = "boot-check.log"
BOOTS, STOPPED, TIMEOUT, ERROR = "boots", "stopped", "timeout", "error"
# Under TCG here the check's marker came 25-81 s after QEMU started (load 3
# to 11), a dracut guest without its root disk took 524 s to say so, and
# the tests' converted boots took up to 510 s at load 20; a real server's
# initramfs does more. Under KVM all of it is a few times faster.
DEFAULT_TIMEOUT = {"kvm": 300.0, "tcg": 900.0}
POLL = 1.0
# A failure is reported once it has stood this long: OVMF prints "failed to
# load" for one boot option moments before the next one boots.
SETTLE = 3.0
STOP_GRACE = 10.0
LAST_LINES = 20


@dataclass(frozen=True)
class BootCheck:
    result: str  # boots, stopped, timeout or error
    stage: str  # boot_stages: userspace, firmware, bootloader, kernel, ...
    seconds: float  # QEMU start to the verdict
    accelerator: str  # kvm or tcg
    last_lines: tuple[str, ...] = ()
    what: str = ""  # "in the initramfs waiting for the root disk"
    line: str = ""  # the console line that decided it
    timeout: float = 0.0
    at: float = field(default_factory=time.time)

    @property
    def boots(self) -> bool:
        return self.result == BOOTS

    def failure(self) -> str:
        """Where it stopped, for a sentence that starts "the boot check
        failed: " (no accelerator: the log says the rest)."""
        if self.result == STOPPED:
            return f"stopped {self.what} after {self.seconds:.0f} s"
        if self.result == TIMEOUT:
            seen = self.what or f"in the {self.stage}"
            return f"no userspace after {self.timeout:.0f} s, last seen {seen}"
        return f"could not run: {self.line}"

    def summary(self) -> str:
        if self.boots:
            return f"boots, userspace after {self.seconds:.0f} s ({self.accelerator})"
        if self.result == ERROR:
            return self.failure()
        return f"{self.failure()} ({self.accelerator})"

    def to_json(self) -> dict:
        data = asdict(self)
        data["last_lines"] = list(self.last_lines)
        data["seconds"] = round(self.seconds, 1)
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_json(cls, data: dict) -> BootCheck:
        names = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in names}
        values["last_lines"] = tuple(values.get("last_lines", ()))
        return cls(**values)


def default_timeout(accelerator: accel.Accelerator) -> float:
    return DEFAULT_TIMEOUT["kvm" if accelerator.is_kvm else "tcg"]


def load(directory: Path) -> BootCheck | None:
    try:
        return BootCheck.from_json(json.loads((directory / RESULT_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save(result: BootCheck, directory: Path) -> Path:
    path = directory / RESULT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2))
    os.replace(tmp, path)  # a status reader never sees half a file
    return path


def run(
    spec: DomainSpec,
    directory: Path,
    events: EventStream,
    timeout: float | None = None,
    accelerator: accel.Accelerator | None = None,
) -> BootCheck:
    """Boot `spec` once in overlays; the result is also saved in
    `directory` (boot-check.json, boot-check.log). Never changes the
    domain's disks or its variable store."""
    acc = accelerator or accel.detect()
    timeout = timeout or default_timeout(acc)
    events.step(
        "boot check", f"{spec.name} in a throwaway overlay, {acc.name}, no network"
    )
    console = directory / LOG_FILE
    try:
        result = _run(spec, directory, console, events, timeout, acc)
    except OSError as e:  # no space for the overlays, no qemu-img, ...
        result = BootCheck(ERROR, "", 0.0, acc.name, line=str(e), timeout=timeout)
    save(result, directory)
    level = "info" if result.boots else "error"
    events.log(f"boot check: {result.summary()} (console: {console})", level)
    return result


def _run(spec, directory, console, events, timeout, acc) -> BootCheck:
    work = Path(tempfile.mkdtemp(prefix=".boot-check-", dir=directory))
    try:
        overlays = make_overlays(spec, work)
        _prepare_console(overlays, events)
        vm = vm_spec(spec, overlays, work)
        argv = vm_command(vm, acc, console)
        events.log(f"boot check: starting the VM, up to {timeout:.0f} s")
        return watch(argv, console, work, timeout, acc.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_overlays(spec: DomainSpec, work: Path) -> list[Path]:
    overlays = []
    for i, disk in enumerate(spec.disks):
        overlay = work / f"disk{i}.qcow2"
        out = subprocess.run(
            [
                "qemu-img", "create", "-q", "-f", "qcow2",
                "-b", str(Path(disk.path).resolve()), "-F", disk.format,
                str(overlay),
            ],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            raise OSError(f"qemu-img create failed: {out.stderr.strip()}")
        overlays.append(overlay)
    return overlays


def _prepare_console(overlays: list[Path], events: EventStream) -> None:
    """The serial console and the marker, through guestfs. A guest it
    cannot open still boots: the console then shows where it stops."""
    from converters import boot_console
    from converters.fixups import guestfs_backend

    started = time.monotonic()
    try:
        with guestfs_backend.open_guest(overlays, ["qcow2"] * len(overlays)) as guest:
            prepared = boot_console.prepare(guest)
    except Exception as e:  # guestfs' RuntimeError, UnsupportedGuest, ...
        events.log(f"boot check: console not prepared ({e}); booting as it is")
        return
    configs = ", ".join(prepared.grub_configs) or "no grub.cfg"
    events.log(
        f"boot check: serial console in {configs}"
        + ("; userspace marker unit added" if prepared.unit else "")
        + f" ({time.monotonic() - started:.0f} s)"
    )


def vm_spec(spec: DomainSpec, overlays: list[Path], work: Path) -> DomainSpec:
    """The domain's machine on the overlays, with its own copy of the UEFI
    variables (the domain's copy if it has one, else the empty template)."""
    disks = tuple(
        replace(d, path=o, format="qcow2")
        for d, o in zip(spec.disks, overlays, strict=True)
    )
    nvram = None
    if spec.firmware == "uefi":
        nvram = work / "VARS.fd"
        own = spec.nvram if spec.nvram and Path(spec.nvram).is_file() else None
        shutil.copyfile(own or spec.ovmf.vars_template, nvram)
    return replace(spec, disks=disks, nvram=nvram)


def vm_command(spec: DomainSpec, acc: accel.Accelerator, console: Path) -> list[str]:
    argv = qemu_cmdline.command(
        spec, acc, serial=f"file:{console}", netdev="user,restrict=on"
    )
    # SeaBIOS writes to the serial port only on a machine without graphics:
    # then "No bootable device" shows in seconds instead of the timeout.
    at = argv.index("-machine") + 1
    argv[at] += ",graphics=off"
    # A reset (a panic with panic=N, a triple fault) ends the check rather
    # than booting again.
    return [*argv, "-no-reboot"]


def watch(
    argv: list[str], console: Path, work: Path, timeout: float, acc: str
) -> BootCheck:
    console.write_bytes(b"")
    started = time.monotonic()
    with open(work / "qemu.log", "wb") as qemu_log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=qemu_log,
            stderr=subprocess.STDOUT,
            preexec_fn=children.die_with_parent,
        )
    failed_at = None  # when a failure sign was first seen
    try:
        while True:
            text = console.read_text(errors="replace")
            verdict = boot_stages.classify(text)
            took = time.monotonic() - started
            ended = proc.poll() is not None
            if verdict.boots:
                return _result(BOOTS, verdict, took, acc, text, timeout)
            if verdict.decisive:
                failed_at = failed_at or took
                if ended or took - failed_at >= SETTLE:
                    return _result(STOPPED, verdict, failed_at, acc, text, timeout)
            else:
                failed_at = None
            if ended:
                return _ended(proc.returncode, verdict, took, acc, text, work, timeout)
            if took >= timeout:
                return _result(TIMEOUT, verdict, took, acc, text, timeout)
            time.sleep(POLL)
    finally:
        _stop(proc)


def _result(result, verdict, took, acc, text, timeout, line=None) -> BootCheck:
    return BootCheck(
        result,
        verdict.stage,
        took,
        acc,
        tuple(boot_stages.last_lines(text, LAST_LINES)),
        verdict.what,
        verdict.line if line is None else line,
        timeout,
    )


def _ended(code, verdict, took, acc, text, work, timeout) -> BootCheck:
    qemu_said = (work / "qemu.log").read_text(errors="replace").strip()
    if code != 0 or not text.strip():
        # QEMU itself failed (a missing firmware file, a locked image)
        reason = (qemu_said.splitlines() or [f"QEMU exited with {code}"])[-1]
        return _result(ERROR, verdict, took, acc, text, timeout, line=reason)
    # -no-reboot: the guest reset or powered off before userspace
    stopped = replace(verdict, what=f"{verdict.what}: the machine reset")
    return _result(STOPPED, stopped, took, acc, text, timeout)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
