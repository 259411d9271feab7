from converters import accel


def test_tcg_fallback_runs_qemu_in_software_with_the_widest_cpu_model():
    tcg = accel.Accelerator("tcg", "test")
    assert tcg.qemu_args() == ["-accel", "tcg", "-cpu", "max"]
    assert tcg.guestfs_settings() == ["force_tcg"]
    assert accel.guestfs_environment(tcg)["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"


def test_working_kvm_passes_the_host_cpu_and_lets_guestfs_use_kvm():
    kvm = accel.Accelerator("kvm", "test")
    assert kvm.qemu_args() == ["-accel", "kvm", "-cpu", "host"]
    assert kvm.guestfs_settings() == []
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in accel.guestfs_environment(kvm)


def test_ferry_accel_forces_the_accelerator_without_probing(monkeypatch):
    monkeypatch.setenv("FERRY_ACCEL", "tcg")
    monkeypatch.setattr(accel, "probe_kvm", lambda *a: 1 / 0)
    assert accel.detect().name == "tcg"


def test_verdict_is_cached_per_host_boot(monkeypatch, tmp_path):
    monkeypatch.delenv("FERRY_ACCEL", raising=False)
    monkeypatch.setenv("FERRY_CACHE", str(tmp_path))
    probes = []

    def probe(kernel):
        probes.append(kernel)
        return accel.Accelerator("tcg", "probed")

    monkeypatch.setattr(accel, "probe_kvm", probe)
    assert accel.detect().reason == "probed"
    assert accel.detect().reason == "probed"
    assert len(probes) == 1
    monkeypatch.setattr(accel, "_boot_id", lambda: "another boot")
    accel.detect()
    assert len(probes) == 2


def test_kvm_probe_without_a_kernel_to_boot_chooses_tcg(monkeypatch):
    monkeypatch.setattr(accel.os, "open", lambda *a: 3)
    monkeypatch.setattr(accel.os, "close", lambda fd: None)
    monkeypatch.setattr(accel, "host_kernel", lambda: None)
    found = accel.probe_kvm()
    assert found.name == "tcg"
    assert "no kernel" in found.reason
