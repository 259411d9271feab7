import io

from converters import doctor


def test_a_failed_check_prints_its_fix_and_a_passed_one_does_not():
    bad = doctor.Check("qemu", doctor.FAIL, "not found", "apt-get install qemu")
    good = doctor.Check("qemu", doctor.OK, "7.2", "apt-get install qemu")
    assert bad.line() == "FAIL qemu: not found (fix: apt-get install qemu)"
    assert good.line() == "OK   qemu: 7.2"


def test_missing_required_tool_fails_and_missing_optional_tool_warns():
    missing = ["ferry-no-such-tool", "--version"]
    assert doctor.check_tool("x", missing, "pkg", True).status == doctor.FAIL
    assert doctor.check_tool("x", missing, "pkg", False).status == doctor.WARN


def test_exit_status_is_non_zero_only_when_a_required_check_fails(monkeypatch):
    checks = {
        "warn": [lambda: doctor.Check("a", doctor.WARN, "meh")],
        "fail": [
            lambda: doctor.Check("a", doctor.OK, "fine"),
            lambda: doctor.Check("b", doctor.FAIL, "broken", "fix it"),
        ],
    }
    monkeypatch.setattr(doctor, "checks_for", lambda role, storage: checks[role])
    out = io.StringIO()
    assert doctor.run("warn", None, out) == 0
    assert doctor.run("fail", None, out) == 1
    assert "FAIL b: broken (fix: fix it)" in out.getvalue()


def test_free_space_check_reads_the_nearest_existing_parent(tmp_path):
    check = doctor.check_free_space(tmp_path / "not" / "yet" / "made")
    assert check.status in (doctor.OK, doctor.WARN, doctor.FAIL)
    assert "GiB free in" in check.detail
