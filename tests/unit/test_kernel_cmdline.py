"""The ferry.* kernel keys: what a PXE or GRUB line asks for, every mistake
reported (never ignored), and what the unattended runner does with them."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from converters import kernel_cmdline, unattended
from converters.events import EventStream, Progress
from converters.kernel_cmdline import parse, split
from converters.wire.pairing import Pairing

FP = "ab" * 32
SECRET = "s3cret-token_0123456789"
TOKEN = f"{SECRET}:{FP}"
P2V = f"ferry.mode=p2v ferry.server=10.0.2.2:7420 ferry.token={TOKEN}"


def fatal_keys(keys) -> set[str]:
    return {p.key for p in keys.problems if p.fatal}


def test_kernel_and_init_parameters_are_not_ferrys_business():
    keys = parse("BOOT_IMAGE=/boot/vmlinuz ro quiet console=ttyS0,115200n8 splash")
    assert keys.mode is None
    assert keys.problems == ()
    assert not keys.unattended


def test_unattended_p2v_keys():
    keys = parse(
        f"console=tty0 {P2V} ferry.disks=sda,/dev/nvme0n1 ferry.name=web01 "
        "ferry.post=poweroff"
    )
    assert keys.problems == ()
    assert keys.unattended
    assert keys.mode == "p2v"
    assert keys.disks == ("sda", "nvme0n1")
    assert keys.name == "web01"
    assert keys.post == "poweroff"
    assert keys.pairings() == [Pairing("10.0.2.2", 7420, FP, SECRET)]


def test_defaults_are_every_fixed_disk_and_staying_at_the_console():
    keys = parse(P2V + " ferry.disks=all")
    assert keys.disks is None
    assert keys.post == "shell"


def test_keys_that_ferry_serve_prints_parse_back_to_its_pairing():
    pairing = Pairing("192.0.2.7", 7421, FP, SECRET)
    keys = parse(f"ferry.mode=p2v {pairing.kernel_keys()}")
    assert keys.problems == ()
    assert keys.pairings() == [pairing]


def test_several_servers_share_one_token_or_have_one_each():
    one = parse(f"ferry.mode=p2v ferry.server=a:1,b:2 ferry.token={TOKEN}")
    assert [p.address for p in one.pairings()] == ["a:1", "b:2"]
    fp2 = "cd" * 32
    each = parse(
        f"ferry.mode=p2v ferry.server=a:1,b:2 ferry.token={TOKEN},{SECRET}:{fp2}"
    )
    assert [p.fingerprint for p in each.pairings()] == [FP, fp2]
    wrong = parse(f"ferry.mode=p2v ferry.server=a:1,b:2,c:3 ferry.token={TOKEN},x")
    assert "ferry.token" in fatal_keys(wrong)


def test_unknown_key_is_fatal_and_suggests_the_close_one():
    keys = parse(P2V + " ferry.dsks=sda")
    (problem,) = keys.problems
    assert problem.fatal
    assert "unknown key ferry.dsks" in problem.line()
    assert "did you mean ferry.disks?" in problem.line()


@pytest.mark.parametrize(
    "word, key",
    [
        ("ferry.mode=p2p", "ferry.mode"),
        ("ferry.post=halt", "ferry.post"),
        ("ferry.server=host:99999", "ferry.server"),
        ("ferry.disks=sda,", "ferry.disks"),
        ('ferry.disks="sd a"', "ferry.disks"),
        ("ferry.name=-web", "ferry.name"),
        ("ferry.name", "ferry.name"),
        ("ferry.name=", "ferry.name"),
        ("ferry.hostname=under_score", "ferry.hostname"),
    ],
)
def test_invalid_values_are_reported(word, key):
    keys = parse(f"{P2V} {word}")
    assert key in fatal_keys(keys), keys.problems
    assert all(
        p.line().startswith("ferry: kernel command line: ") for p in keys.problems
    )


def test_bad_token_is_reported_with_the_pairing_reason():
    keys = parse("ferry.mode=p2v ferry.server=h:1 ferry.token=short:00")
    (problem,) = keys.problems
    assert problem.key == "ferry.token"
    assert "fingerprint must be" in problem.message


def test_p2v_needs_a_server_and_a_token():
    keys = parse("ferry.mode=p2v")
    assert fatal_keys(keys) == {"ferry.server", "ferry.token"}


def test_v2p_writes_only_disks_named_twice():
    base = f"ferry.mode=v2p ferry.server=h:1 ferry.token={TOKEN} ferry.image=lab"
    assert fatal_keys(parse(base)) == {"ferry.target", "ferry.confirm"}
    ok = parse(base + " ferry.target=sda ferry.confirm=sda ferry.hostname=lab-07")
    assert ok.problems == ()
    assert ok.target == ok.confirm == ("sda",)
    assert ok.hostname == "lab-07"
    partly = parse(base + " ferry.target=sda,sdb ferry.confirm=sda")
    (problem,) = partly.problems
    assert problem.key == "ferry.confirm" and "sdb" in problem.message


def test_keys_of_the_other_mode_are_warnings():
    keys = parse(P2V + " ferry.image=lab ferry.hostname=x")
    assert {p.key for p in keys.problems} == {"ferry.image", "ferry.hostname"}
    assert not keys.fatal


def test_post_without_an_unattended_mode_is_a_warning():
    keys = parse("ferry.post=reboot")
    (problem,) = keys.problems
    assert not problem.fatal and "unattended" in problem.message


def test_a_repeated_key_warns_and_the_last_one_counts():
    keys = parse(P2V + " ferry.post=reboot ferry.post=poweroff")
    (problem,) = keys.problems
    assert not problem.fatal
    assert keys.post == "poweroff"


def test_interactive_and_shell_modes_take_server_keys_without_complaint():
    assert parse(f"ferry.server=h:1 ferry.token={TOKEN}").problems == ()
    keys = parse("ferry.mode=shell")
    assert keys.mode == "shell" and not keys.unattended and keys.problems == ()


def test_split_follows_the_kernels_quoting():
    assert split('a "b c"=d e="f g" h=') == [
        ("a", None),
        ("b c", "d"),
        ("e", "f g"),
        ("h", ""),
    ]


def test_given_keeps_the_keys_as_written_for_the_tui():
    keys = parse(P2V + " ferry.disks=sda quiet")
    assert keys.given["ferry.disks"] == "sda"
    assert "quiet" not in keys.given


def test_command_reports_problems_and_fails(capsys):
    assert kernel_cmdline.main(["--cmdline", "ferry.mode=p2v ferry.typo=1"]) == 1
    out = capsys.readouterr().out
    assert "unknown key ferry.typo" in out
    assert "not started" in out
    assert kernel_cmdline.main(["--cmdline", "quiet", "--problems"]) == 0
    assert capsys.readouterr().out == ""


# The unattended runner


def consoles(tmp_path: Path) -> tuple[unattended.Consoles, io.StringIO]:
    stdout = io.StringIO()
    return unattended.Consoles(
        [str(tmp_path / "tty1"), "/nonexistent/tty"], stdout
    ), stdout


def test_runner_refuses_keys_with_errors_and_does_not_power_off(tmp_path):
    out, stdout = consoles(tmp_path)
    actions = []
    ok = unattended.run(
        parse(P2V + " ferry.dsks=sda ferry.post=poweroff"),
        out,
        flows={"p2v": lambda k, o: pytest.fail("must not run")},
        do_power=lambda action, o: actions.append(action),
    )
    out.close()
    assert not ok and actions == []
    text = stdout.getvalue()
    assert "unknown key ferry.dsks" in text
    assert "FERRY-UNATTENDED-FAILED mode=p2v" in text
    # the same lines reach every console that exists
    assert (tmp_path / "tty1").read_text() == text


def test_runner_runs_the_flow_then_the_post_action(tmp_path):
    out, stdout = consoles(tmp_path)
    actions = []
    ok = unattended.run(
        parse(P2V + " ferry.post=poweroff"),
        out,
        flows={"p2v": lambda k, o: "web01"},
        do_power=lambda action, o: actions.append(action),
    )
    assert ok and actions == ["poweroff"]
    assert "FERRY-UNATTENDED-DONE mode=p2v session=web01" in stdout.getvalue()


def test_runner_stays_at_the_console_after_a_failed_flow(tmp_path):
    out, stdout = consoles(tmp_path)
    actions = []

    def fails(keys, o):
        raise unattended.UnattendedError("no ferry serve answered at h:1")

    ok = unattended.run(
        parse(P2V + " ferry.post=reboot"),
        out,
        flows={"p2v": fails},
        do_power=lambda action, o: actions.append(action),
    )
    assert not ok and actions == []
    assert "reason=no ferry serve answered at h:1" in stdout.getvalue()


def test_runner_without_a_mode_only_reports(tmp_path):
    out, stdout = consoles(tmp_path)
    assert unattended.run(parse("ferry.mdoe=p2v"), out)
    assert "unknown key ferry.mdoe" in stdout.getvalue()
    assert "FERRY-UNATTENDED" not in stdout.getvalue()


def test_p2v_captures_with_the_first_server_that_answers(tmp_path, monkeypatch):
    out, _ = consoles(tmp_path)
    keys = parse(
        f"ferry.mode=p2v ferry.server=down:1,up:2 ferry.token={TOKEN} "
        "ferry.disks=sdb ferry.name=web01"
    )
    seen = []

    def capture(request, events):
        seen.append(request)
        return SimpleNamespace(session=request.name, disks={})

    answering = {"up"}
    pairing = unattended.choose_server(
        keys.pairings(), out, wait=0, answers=lambda p: p.host in answering
    )
    assert pairing.address == "up:2"
    monkeypatch.setattr(unattended, "tcp_answers", lambda p: p.host in answering)
    assert unattended.run_p2v(keys, out, capture_fn=capture, wait=0) == "web01"
    (request,) = seen
    assert request.disks == ["sdb"]
    assert Pairing.parse(request.server).address == "up:2"


def test_no_server_answering_is_an_error_after_the_wait(tmp_path):
    out, _ = consoles(tmp_path)
    keys = parse(P2V)
    with pytest.raises(unattended.UnattendedError, match="no ferry serve answered"):
        unattended.choose_server(
            keys.pairings(), out, wait=0, answers=lambda p: False, sleep=lambda s: None
        )


def test_progress_lines_are_throttled_per_disk(tmp_path):
    out, stdout = consoles(tmp_path)
    events = EventStream()
    events.subscribe(unattended.progress_listener(out, every=10))
    gib = 1 << 30
    for t, done in [(0, 1), (1, 2), (11, 3), (12, 4)]:
        events.emit(Progress("sda", done * gib, 4 * gib, rate=1e8, at=100 + t))
    lines = [ln for ln in stdout.getvalue().splitlines() if "sda:" in ln]
    # the first, one ten seconds later, and the last (100 %)
    assert len(lines) == 3
    assert "100.0%" in lines[-1]


def test_default_session_name_is_the_first_nic_mac(tmp_path):
    for name, mac, physical in [
        ("lo", "00:00:00:00:00:00", False),
        ("ens8", "52:54:00:fe:01:01", True),
    ]:
        nic = tmp_path / name
        nic.mkdir()
        (nic / "address").write_text(mac + "\n")
        if physical:
            (nic / "device").mkdir()
    assert unattended.default_name(tmp_path) == "p2v-525400fe0101"


def test_a_lab_hostname_pattern_is_checked_as_it_will_read():
    base = f"ferry.mode=v2p ferry.server=h:1 ferry.token={TOKEN} ferry.image=lab"
    base += " ferry.target=sda ferry.confirm=sda"
    keys = kernel_cmdline.parse(base + " ferry.hostname=lab-{mac}.example")
    assert not keys.problems and keys.hostname == "lab-{mac}.example"
    bad = kernel_cmdline.parse(base + " ferry.hostname=lab_{mac}")
    assert [p.key for p in bad.fatal] == ["ferry.hostname"]
