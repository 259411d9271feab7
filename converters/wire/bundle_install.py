"""Install ferry on a running server from ``ferry serve``'s bundle, with
nothing but Python's standard library (ferry is not there yet):

    python3 bundle_install.py 'ferry://HOST:PORT/?fp=...&token=...' [PREFIX]

The connection pins the certificate's SHA-256 fingerprint from the pairing
string, as ferry's own client does. ferry goes into a venv at PREFIX
(/opt/ferry) that sees the system's packages, because parted and pyudev
bindings come from the distribution (python3-parted, python3-pyudev), and
pip installs the wheels with ``--no-index``: the server may reach no index.
Prints the path of the installed ``ferry``."""

from __future__ import annotations

import glob
import hashlib
import http.client
import io
import os
import ssl
import subprocess
import sys
import tarfile
import tempfile
from urllib.parse import parse_qs, urlsplit

ROUTE = "/v1/bundle"  # converters/wire/bundle.py
DEFAULT_PREFIX = "/opt/ferry"
# Debian's python3-venv puts ensurepip's wheels here.
WHEEL_DIR = "/usr/share/python-wheels"
TUI_ONLY = r"/(textual|rich|pygments|markdown_it|mdit_py_plugins|linkify_it)/"


class InstallError(Exception):
    pass


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
        conn.request(
            "GET", ROUTE, headers={"Authorization": f"Bearer {query['token'][0]}"}
        )
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise InstallError(f"{reply.status}: {body.decode(errors='replace')[:300]}")
        return body
    finally:
        conn.close()


def install(bundle: bytes, prefix: str) -> str:
    with tempfile.TemporaryDirectory(prefix="ferry-bundle-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            # (the safe filter where this Python has it: wheels are plain)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, **safe)
        # No pip or setuptools in the venv: installing them costs more than
        # ferry itself on a slow machine; pip runs from the wheel that
        # python3-venv ships (ensurepip's), installing into the venv.
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip",
             "--system-site-packages", prefix],
            check=True,
        )  # fmt: skip
        python = os.path.join(prefix, "bin", "python3")
        subprocess.run(
            [python, os.path.join(_pip_wheel(), "pip"), "install", "--quiet",
             "--disable-pip-version-check", "--no-compile", "--no-index",
             "--find-links", tmp, "-r", os.path.join(tmp, "requirements.txt")],
            check=True,
        )  # fmt: skip
    # Byte-compiled now, not on first import: an import under the freeze
    # must not write to the frozen root. The TUI's libraries are left out
    # (the capture never imports them, and they are most of the files).
    subprocess.run(
        [python, "-m", "compileall", "-q", "-x", TUI_ONLY, _site_packages(python)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return os.path.join(prefix, "bin", "ferry")


def _pip_wheel() -> str:
    import ensurepip

    wheels = sorted(glob.glob(os.path.join(WHEEL_DIR, "pip-*.whl")))
    if not wheels:
        raise InstallError(
            f"no pip wheel in {WHEEL_DIR} (python3 {ensurepip.version()}): "
            "install python3-venv"
        )
    return wheels[-1]


def _site_packages(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        print(install(fetch(argv[0]), argv[1] if len(argv) > 1 else DEFAULT_PREFIX))
    except (InstallError, OSError, subprocess.CalledProcessError) as e:
        print(f"ferry bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
