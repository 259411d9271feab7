"""What a set of kernel modules needs to load, read from the kernel's own
depmod output: modules.dep (the symbol dependencies, already transitive),
the `pre:` soft dependencies of modules.softdep (which modprobe loads
first, and which dracut-install and initramfs-tools copy into the image
too), and modules.builtin (built-in modules need nothing in the image).

A driver in the initramfs without its dependencies does not load
("virtio_pci: Unknown symbol vring_transport_features"), so the image is
checked for all of these, not only for the names that were asked for.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache

from converters.fixups.guest import GuestOS

_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")
_WILDCARDS = frozenset("*?[")


def module_name(text: str) -> str:
    """kmod's name for a module given as a name or as a path from
    modules.dep: no directory, no .ko[.xz|.zst|.gz], '-' as '_'."""
    base = posixpath.basename(text.strip().rstrip(":"))
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_dep(text: str) -> dict[str, tuple[str, ...]]:
    """modules.dep: every loadable module and what it needs."""
    deps = {}
    for line in text.splitlines():
        head, colon, tail = line.partition(":")
        if colon and head.strip():
            deps[module_name(head)] = tuple(module_name(p) for p in tail.split())
    return deps


def parse_softdep(text: str) -> dict[str, tuple[str, ...]]:
    """modules.softdep: the `pre:` names of every module. Words before any
    `pre:`/`post:` mean nothing to kmod (depmod writes `softdep cifs gcm`
    for modules that declare a softdep without a mode), and `post:` modules
    are loaded after the driver, so neither is needed for it to load."""
    pre: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        mode, names = "", []
        for word in words[2:]:
            if word in ("pre:", "post:"):
                mode = word
            elif mode == "pre:":
                names.append(module_name(word))
        if names:
            key = module_name(words[1])
            pre[key] = pre.get(key, ()) + tuple(names)
    return pre


def parse_alias(text: str) -> dict[str, tuple[str, ...]]:
    """modules.alias, plain names only (`crypto-crc32c`, not `pci:v...*`):
    soft dependencies are written as aliases as often as module names."""
    aliases: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias" and not _WILDCARDS & set(words[1]):
            key = words[1].replace("-", "_")
            aliases[key] = aliases.get(key, ()) + (module_name(words[2]),)
    return aliases


def parse_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line) for line in text.splitlines() if line.strip())


@dataclass
class KernelModules:
    """What one kernel ships, by kmod name."""

    deps: dict[str, tuple[str, ...]]  # loadable module -> modules.dep needs
    softdeps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    builtin: frozenset[str] = frozenset()
    # modules.alias is 1.3 MB on Debian's 6.1 and needed only when a soft
    # dependency names an alias: read on first use.
    aliases: Callable[[], dict[str, tuple[str, ...]]] = dict

    def ships(self, name: str) -> bool:
        return name in self.deps or name in self.builtin

    def needs(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(loadable modules `name` needs, those modules.dep names but the
        kernel has no entry for). Soft dependencies the kernel does not
        ship or has built in need nothing."""
        found = list(self.deps.get(name, ()))
        for soft in self.softdeps.get(name, ()):
            if soft in self.deps:
                found.append(soft)
            elif soft not in self.builtin:
                found += [m for m in self.aliases().get(soft, ()) if m in self.deps]
        found = [m for m in dict.fromkeys(found) if m not in self.builtin]
        return (
            tuple(m for m in found if m in self.deps),
            tuple(m for m in found if m not in self.deps),
        )


def read(guest: GuestOS, modules_dir: str) -> KernelModules:
    """The depmod files of /lib/modules/VERSION; a missing file reads as
    empty (modules.softdep is absent on kernels older than 3.x)."""

    def text(name: str) -> str:
        path = f"{modules_dir}/{name}"
        return guest.read(path) if guest.is_file(path) else ""

    return KernelModules(
        deps=parse_dep(text("modules.dep")),
        softdeps=parse_softdep(text("modules.softdep")),
        builtin=parse_builtin(text("modules.builtin")),
        aliases=cache(lambda: parse_alias(text("modules.alias"))),
    )


@dataclass(frozen=True)
class Closure:
    """Modules asked for and everything they need, for one kernel."""

    wanted: tuple[str, ...]  # asked for and shipped (loadable or built in)
    needs: tuple[str, ...]  # loadable modules `wanted` need, not asked for
    needed_by: dict[str, tuple[str, ...]]  # each of `needs` -> its wanted
    builtin: frozenset[str]  # of `wanted`, the ones built into the kernel
    absent: tuple[str, ...] = ()  # asked for or needed, but not shipped

    @property
    def loadable(self) -> tuple[str, ...]:
        """What has to be in the image: every module but the built-ins."""
        return tuple(m for m in self.wanted + self.needs if m not in self.builtin)

    def why(self, module: str) -> str:
        by = self.needed_by.get(module)
        return f"{module} (needed by {', '.join(by)})" if by else module


def closure(kernel: KernelModules, names: Iterable[str]) -> Closure:
    wanted, absent = [], []
    for name in dict.fromkeys(module_name(n) for n in names):
        (wanted if kernel.ships(name) else absent).append(name)
    needed_by: dict[str, list[str]] = {}
    for root in wanted:
        seen, queue = {root}, [root]
        while queue:
            loadable, unlisted = kernel.needs(queue.pop(0))
            for dep in loadable + unlisted:
                if dep in seen:
                    continue
                seen.add(dep)
                if dep not in wanted:
                    needed_by.setdefault(dep, []).append(root)
                if dep in unlisted:
                    absent.append(dep)
                else:
                    queue.append(dep)
    return Closure(
        wanted=tuple(wanted),
        needs=tuple(m for m in needed_by if m not in absent),
        needed_by={m: tuple(by) for m, by in needed_by.items()},
        builtin=frozenset(m for m in wanted if m in kernel.builtin),
        absent=tuple(dict.fromkeys(absent)),
    )
