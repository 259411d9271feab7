"""A GuestOS over a folder on the host, for unit tests of the fixups: the
files are real, the guest's commands are canned. It is what the chroot
backend will be minus chroot, which keeps the interface honest."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from converters.fixups.guest import Filesystem, GuestCommandError, Mount
from tests.unit import debian_kernel_modules


class FakeGuest:
    backend = "fake"

    def __init__(
        self,
        root: Path,
        filesystems: list[Filesystem] = (),
        mounts: list[Mount] = (),
        commands: dict[str, Callable[[list[str]], str]] | None = None,
    ) -> None:
        self.root = root
        self._filesystems = list(filesystems)
        self._mounts = list(mounts)
        self.commands = commands or {}
        self.ran: list[list[str]] = []

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def put(self, path: str, text: str) -> FakeGuest:
        p = self._p(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return self

    def read(self, path: str) -> str:
        return self._p(path).read_text()

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        self._p(path).write_text(text)
        if mode is not None:
            self._p(path).chmod(mode)

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def is_dir(self, path: str) -> bool:
        return self._p(path).is_dir()

    def is_file(self, path: str) -> bool:
        return self._p(path).is_file()

    def glob(self, pattern: str) -> list[str]:
        return sorted(
            "/" + str(p.relative_to(self.root))
            for p in self.root.glob(pattern.lstrip("/"))
        )

    def mkdir_p(self, path: str) -> None:
        self._p(path).mkdir(parents=True, exist_ok=True)

    def copy(self, src: str, dst: str) -> None:
        shutil.copyfile(self._p(src), self._p(dst))

    def remove(self, path: str) -> None:
        self._p(path).unlink(missing_ok=True)

    def run_command(self, argv: list[str], env=None, quiet=False) -> str:
        self.ran.append(list(argv))
        handler = self.commands.get(argv[0].rsplit("/", 1)[-1])
        if handler is None:
            raise GuestCommandError(argv, 127, f"{argv[0]}: not found")
        return handler(argv)

    def mounts(self) -> list[Mount]:
        return self._mounts

    def filesystems(self) -> list[Filesystem]:
        return self._filesystems


# Real modules.dep lines: the virtio drivers with virtio and virtio_ring.
VIRTIO_DEP = debian_kernel_modules.DEP
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
FEDORA = (
    'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=39\nPRETTY_NAME="Fedora Linux 39"\n'
)


def debian_guest(tmp_path: Path, uefi: bool = False) -> FakeGuest:
    """A minimal Debian 12 install that inspection accepts."""
    mounts = [Mount("/dev/sda1", "/")]
    fss = [Filesystem("/dev/sda1", "ext4", "u1", disk=0, partition=1)]
    if uefi:
        mounts.append(Mount("/dev/sda2", "/boot/efi"))
    guest = FakeGuest(tmp_path, fss, mounts)
    guest.put("/etc/os-release", DEBIAN)
    guest.put("/etc/hostname", "web1\n")
    guest.put("/etc/fstab", "# c\nUUID=u1 / ext4 errors=remount-ro 0 1\n")
    guest.put("/boot/vmlinuz-6.1.0-9-amd64", "")
    guest.put("/boot/initrd.img-6.1.0-9-amd64", "")
    guest.put("/lib/modules/6.1.0-9-amd64/modules.dep", VIRTIO_DEP)
    guest.put("/lib/modules/5.10.0-1-amd64/modules.dep", "")  # kernel removed
    guest.put("/usr/sbin/update-initramfs", "")
    guest.put("/usr/sbin/grub-mkconfig", "")
    guest.mkdir_p("/usr/lib/systemd/network")
    if uefi:
        guest.mkdir_p("/boot/grub/x86_64-efi")
        guest.put("/boot/efi/EFI/debian/grubx64.efi", "")
    else:
        guest.mkdir_p("/boot/grub/i386-pc")
    return guest
