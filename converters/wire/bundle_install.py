"""Install ferry on a running server from ``ferry serve``'s bundle, with
nothing but Python's standard library (ferry is not there yet):

    python3 bundle_install.py 'ferry://HOST:PORT/?fp=...&token=...' [PREFIX]

The connection pins the certificate's SHA-256 fingerprint from the pairing
string, as ferry's own client does. A wheel is a zip laid out as it goes on
sys.path, so each one is unpacked into PREFIX/lib (/opt/ferry/lib) and
PREFIX/bin/ferry is a launcher that puts that folder first on sys.path for
the system's python3, which also brings the distribution's parted and pyudev
bindings (python3-parted, python3-pyudev). No pip, no venv and no
byte-compilation: on a slow machine those cost minutes, and Python compiles
what it imports. Prints one line per step; the last names the launcher."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import shutil
import ssl
import sys
import tarfile
import time
import zipfile
from urllib.parse import parse_qs, urlsplit

ROUTE = "/v1/bundle"  # converters/wire/bundle.py
DEFAULT_PREFIX = "/opt/ferry"
SCRIPT = "ferry"

# Both are inherited by ferry's own children (the freeze watchdog runs
# ``python3 -m converters.fsfreeze``). No .pyc is written: an import while
# the root is frozen would block on that write, and ferry holds the freeze.
LAUNCHER = """#!{python}
# ferry from ferry serve's bundle (bundle_install.py)
import os
import sys

LIB = {lib!r}
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (LIB, os.environ.get("PYTHONPATH")) if p
)
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
sys.dont_write_bytecode = True
sys.path.insert(0, LIB)
from {module} import {function}

sys.exit({function}())
"""


class InstallError(Exception):
    pass


def say(line: str) -> None:
    # stdout may be a serial console: each step shows as it happens
    print(f"ferry bundle: {line}", flush=True)


def fetch(pairing: str) -> bytes:
    url = urlsplit(pairing.strip())
    query = parse_qs(url.query)
    if url.scheme != "ferry" or "fp" not in query or "token" not in query:
        raise InstallError("expected ferry://HOST:PORT/?fp=...&token=...")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Trust is the pinned fingerprint, checked below, not a CA.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=60)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        if hashlib.sha256(der).hexdigest() != query["fp"][0].lower():
            raise InstallError("the server's certificate does not match the pairing")
        say(f"{url.hostname}:{url.port} verified (pinned fingerprint)")
        started = time.monotonic()
        conn.request(
            "GET", ROUTE, headers={"Authorization": f"Bearer {query['token'][0]}"}
        )
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise InstallError(f"{reply.status}: {body.decode(errors='replace')[:300]}")
        took = time.monotonic() - started
        say(f"downloaded {len(body) / 1e6:.1f} MB in {took:.1f} s")
        return body
    finally:
        conn.close()


def wheels_of(bundle: bytes) -> dict[str, bytes]:
    """The bundle's wheels by file name."""
    wheels = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".whl"):
                    wheels[os.path.basename(member.name)] = tar.extractfile(
                        member
                    ).read()
    except tarfile.TarError as e:
        raise InstallError(f"the bundle is no tar: {e}") from e
    if not any(name.startswith("ferry-") for name in wheels):
        raise InstallError("the bundle holds no ferry wheel")
    return wheels


def unpack(wheel: bytes, lib: str) -> tuple[str, str] | None:
    """Unpack one wheel into ``lib``; ferry's (version, entry point) or None."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        for info in z.infolist():
            name = info.filename
            # NAME.data/purelib|platlib/... go on sys.path too; the other
            # .data folders (scripts, headers) are not needed to run
            top, _, rest = name.partition("/")
            if top.endswith(".data"):
                kind, _, name = rest.partition("/")
                if kind not in ("purelib", "platlib") or not name:
                    continue
            target = os.path.join(lib, name)
            if info.is_dir():
                continue
            # zipfile's member names are relative; refuse any that is not
            if os.path.isabs(name) or ".." in name.split("/"):
                raise InstallError(f"unsafe path in a wheel: {info.filename}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = info.external_attr >> 16
            if mode & 0o111:
                os.chmod(target, 0o755)
        return _ferry_entry(z)


def _ferry_entry(z: zipfile.ZipFile) -> tuple[str, str] | None:
    names = z.namelist()
    meta = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    if not meta:
        return None
    section, entry = None, None
    for line in z.read(meta[0]).decode().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[console_scripts]" and line.split("=")[0].strip() == SCRIPT:
            entry = line.split("=", 1)[1].strip()
    if entry is None:
        return None
    dist_info = meta[0].split("/")[0]  # ferry-0.1.0.dist-info
    version = dist_info[: -len(".dist-info")].split("-")[-1]
    return version, entry


def install(bundle: bytes, prefix: str) -> str:
    """Unpack the bundle into ``prefix`` (replaced whole); the launcher's path."""
    wheels = wheels_of(bundle)
    started = time.monotonic()
    prefix = os.path.abspath(prefix)
    partial = prefix + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    lib = os.path.join(partial, "lib")
    os.makedirs(lib)
    try:
        found = None
        for name in sorted(wheels):
            found = unpack(wheels[name], lib) or found
        if found is None:
            raise InstallError(f"no wheel of the bundle has a {SCRIPT} command")
        version, entry = found
        module, _, function = entry.partition(":")
        os.makedirs(os.path.join(partial, "bin"))
        launcher = os.path.join(partial, "bin", SCRIPT)
        with open(launcher, "w") as f:
            f.write(
                LAUNCHER.format(
                    python=sys.executable,
                    lib=os.path.join(prefix, "lib"),
                    module=module,
                    function=function,
                )
            )
        os.chmod(launcher, 0o755)
        shutil.rmtree(prefix, ignore_errors=True)
        os.rename(partial, prefix)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"unpacked {len(wheels)} wheels in {time.monotonic() - started:.1f} s")
    path = os.path.join(prefix, "bin", SCRIPT)
    say(f"ferry {version} ready: {path}")
    return path


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        install(fetch(argv[0]), argv[1] if len(argv) > 1 else DEFAULT_PREFIX)
    except (InstallError, OSError, zipfile.BadZipFile) as e:
        print(f"ferry bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
