"""The guest's own lines that keep a driver ferry needs from loading, made
harmless: both initramfs tools copy /etc/modprobe.d (and /lib, /usr/lib)
into the image, where `blacklist virtio_blk` stops udev loading the driver
for the disk and `install virtio_blk /bin/false` stops even an explicit
modprobe; `modprobe.blacklist=`, `module_blacklist=` and dracut's
`rd.driver.blacklist=` on the kernel command line do the same from GRUB.

Only those lines change: the modprobe.d line is commented out under a
comment saying why, the command line loses only the needed modules. Every
other line, and every other module in them, stays as the guest had it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from converters.fixups.guest import GuestOS
from converters.fixups.module_deps import module_name

MODPROBE_DIRS = ("/etc/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d")
GRUB_DEFAULTS = "/etc/default/grub"
MARK = "# ferry: the line below kept {module} from loading; it is needed to boot here"
GRUB_MARK = "# ferry: took {modules} out of a blacklist below: needed to boot here"
_LOADERS = ("modprobe", "insmod")
_CMDLINE_VAR = re.compile(r"^\s*(?:export\s+)?GRUB_CMDLINE_LINUX\w*=")
_CMDLINE_BLOCK = re.compile(
    r"(?<![^\s\"'])(rd\.driver\.blacklist|modprobe\.blacklist|module_blacklist)"
    r"=([^\s\"']*)"
)


@dataclass(frozen=True)
class Unblocked:
    """One change, for the conversion's log."""

    path: str
    line: int  # 1-based, in the file as it was
    was: str
    module: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.was.strip()!r} no longer blocks {self.module}"


def blocked(line: str, modules: set[str]) -> str:
    """The module of `modules` a modprobe.d line keeps from loading, or ''."""
    words = line.split()
    if len(words) < 2 or module_name(words[1]) not in modules:
        return ""
    name = module_name(words[1])
    if words[0] == "blacklist":
        return name
    if words[0] == "install" and not _loads(words[2:], name):
        return name
    return ""


def _loads(command: list[str], name: str) -> bool:
    """Whether an `install` command still loads the module, as in
    `install m /sbin/modprobe --ignore-install m && setup-something`; a
    command that never runs a loader on it (/bin/false, /bin/true, echo)
    leaves the module out."""
    runs_loader = any(w.rsplit("/", 1)[-1] in _LOADERS for w in command)
    names_it = any(
        w.strip(";&|{}()") in ("$MODPROBE_MODULE", "${MODPROBE_MODULE}")
        or module_name(w.strip(";&|{}()")) == name
        for w in command
    )
    return runs_loader and names_it


def _modprobe_conf(guest: GuestOS, path: str, modules: set[str]) -> list[Unblocked]:
    lines = guest.read(path).splitlines(keepends=True)
    out, done, i = [], [], 0
    while i < len(lines):
        # A line ending in a backslash continues on the next (kmod's rule).
        end = i
        while lines[end].rstrip("\n").endswith("\\") and end + 1 < len(lines):
            end += 1
        logical = " ".join(ln.rstrip("\n").rstrip("\\") for ln in lines[i : end + 1])
        module = "" if logical.lstrip().startswith("#") else blocked(logical, modules)
        if module:
            out.append(MARK.format(module=module) + "\n")
            out += ["#" + ln for ln in lines[i : end + 1]]
            done.append(Unblocked(path, i + 1, logical, module))
        else:
            out += lines[i : end + 1]
        i = end + 1
    if done:
        if not out[-1].endswith("\n"):
            out[-1] += "\n"
        guest.write(path, "".join(out))
    return done


def _grub_defaults(guest: GuestOS, path: str, modules: set[str]) -> list[Unblocked]:
    lines = guest.read(path).splitlines(keepends=True)
    done = []
    for number, line in enumerate(lines, 1):
        if not _CMDLINE_VAR.match(line):
            continue
        removed: list[str] = []

        def keep_others(m: re.Match, removed=removed) -> str:
            names = [n for n in m.group(2).split(",") if n]
            kept = [n for n in names if module_name(n) not in modules]
            removed += [module_name(n) for n in names if module_name(n) in modules]
            if kept == names:
                return m.group(0)
            return f"{m.group(1)}={','.join(kept)}" if kept else ""

        edited = _CMDLINE_BLOCK.sub(keep_others, line)
        if edited != line:
            note = GRUB_MARK.format(modules=", ".join(dict.fromkeys(removed)))
            lines[number - 1] = note + "\n" + edited
            done += [Unblocked(path, number, line, m) for m in removed]
    if done:
        guest.write(path, "".join(lines))
    return done


def unblock(guest: GuestOS, modules: set[str]) -> list[Unblocked]:
    """Make every line of the guest's that blocks one of `modules` harmless;
    returns what changed. A directory reached twice (/lib -> /usr/lib on a
    merged /usr) finds nothing left the second time."""
    done = []
    for directory in MODPROBE_DIRS:
        for path in guest.glob(f"{directory}/*.conf"):
            if guest.is_file(path):
                done += _modprobe_conf(guest, path, modules)
    for path in [GRUB_DEFAULTS, *guest.glob(f"{GRUB_DEFAULTS}.d/*.cfg")]:
        if guest.is_file(path):
            done += _grub_defaults(guest, path, modules)
    return done
