import subprocess
import sys

from converters import accel


def test_doctor_for_kvm_role_reports_the_accelerator_ferry_uses_and_guestfs():
    out = subprocess.run(
        [sys.executable, "-m", "converters.cli", "doctor", "--role", "kvm"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = {ln.split(":")[0].split()[-1]: ln for ln in out.stdout.splitlines()}
    found = accel.detect()
    if found.is_kvm:
        assert lines["kvm"].startswith("OK")
    else:
        assert lines["kvm"].startswith("WARN")
        assert "TCG" in lines["kvm"]
    assert lines["libguestfs"].startswith("OK"), out.stdout
    assert out.returncode == 0, out.stdout + out.stderr


def test_doctor_rejects_an_unknown_role():
    out = subprocess.run(
        [sys.executable, "-m", "converters.cli", "doctor", "--role", "cloud"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
