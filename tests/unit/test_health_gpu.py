"""GPU checks of the health checker, from recorded nvidia-smi outputs served by a fake nvidia-smi."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from health_support import FAKE_SMI, XID_LOG, fh, make_config


def gpu_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, **gpu: Any) -> tuple[Any, Any]:
    """(findings by key, metrics text) of the GPU check against one recorded scenario."""
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", scenario)
    config = make_config(tmp_path, gpu={"enabled": True, "expected_count": 8, **gpu})
    metrics = fh.Metrics()
    _, findings = fh.check_gpus(config, metrics, fh.run_command)
    return {f.key: f for f in findings}, metrics.render()


def severities(findings: dict[str, Any]) -> dict[str, str]:
    return {key: f.severity for key, f in findings.items() if f.severity != fh.OK}


def test_normal_host_is_all_ok(tmp_path, monkeypatch):
    findings, metrics = gpu_run(tmp_path, monkeypatch, "normal")
    assert severities(findings) == {}
    assert findings["gpu_count:host"].message == "8 GPUs visible"
    assert len([k for k in findings if k.startswith("gpu_temperature:")]) == 8
    assert "fleet_health_gpu_count 8" in metrics
    assert 'fleet_health_gpu_temperature_celsius{bus_id="00000000:18:00.0",gpu="0",' in metrics
    assert "fleet_health_nvidia_smi_up 1" in metrics


def test_hot_gpus_warn_then_go_critical(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "hot")
    assert severities(findings) == {
        "gpu_temperature:00000000:5D:00.0": fh.WARN,
        "gpu_temperature:00000000:AB:00.0": fh.CRITICAL,
    }
    assert findings["gpu_temperature:00000000:AB:00.0"].message == "GPU 5 (00000000:AB:00.0) at 94 C (limit 92 C)"


def test_thresholds_are_inputs(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "hot", temperature_warn_c=95.0, temperature_critical_c=99.0)
    assert severities(findings) == {}


def test_uncorrected_ecc_errors(tmp_path, monkeypatch):
    findings, metrics = gpu_run(tmp_path, monkeypatch, "ecc")
    assert severities(findings) == {
        "gpu_ecc:00000000:3A:00.0": fh.CRITICAL,  # 3 since the driver loaded
        "gpu_ecc:00000000:BA:00.0": fh.WARN,  # 1 over its life, none now
    }
    assert "3 uncorrected ECC errors since the driver loaded" in findings["gpu_ecc:00000000:3A:00.0"].message
    assert 'fleet_health_gpu_ecc_uncorrected_volatile{bus_id="00000000:3A:00.0",gpu="2",' in metrics


def test_remapped_rows_pending_warns_and_failed_is_critical(tmp_path, monkeypatch):
    findings, metrics = gpu_run(tmp_path, monkeypatch, "remapped")
    assert severities(findings) == {
        "gpu_remapped_rows:00000000:2A:00.0": fh.WARN,
        "gpu_remapped_rows:00000000:9A:00.0": fh.CRITICAL,
    }
    assert "reset the GPU" in findings["gpu_remapped_rows:00000000:2A:00.0"].message
    assert "needs replacing" in findings["gpu_remapped_rows:00000000:9A:00.0"].message
    assert 'fleet_health_gpu_remapped_rows_uncorrectable{bus_id="00000000:9A:00.0",gpu="4",' in metrics


def test_retired_pages_pending_on_an_older_gpu(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "retired-pages", expected_count=4)
    assert severities(findings) == {"gpu_retired_pages:00000000:88:00.0": fh.WARN}
    assert not [k for k in findings if k.startswith("gpu_remapped_rows:")]  # [N/A]: not reported


def test_missing_gpu_is_critical(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "missing-gpu")
    assert severities(findings) == {"gpu_count:host": fh.CRITICAL}
    assert findings["gpu_count:host"].message == "7 GPUs visible, expected 8"


def test_extra_gpu_warns_and_no_expectation_accepts_any(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "normal", expected_count=4)
    assert severities(findings) == {"gpu_count:host": fh.WARN}
    findings, _ = gpu_run(tmp_path, monkeypatch, "missing-gpu", expected_count=0)
    assert severities(findings) == {}


def test_lost_gpu_reports_nvidia_smis_own_words(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "lost-gpu")
    assert severities(findings) == {"nvidia_smi:query": fh.CRITICAL, "gpu_count:host": fh.CRITICAL}
    assert findings["nvidia_smi:query"].message == (
        "fake-nvidia-smi failed (exit 15): Unable to determine the device handle for GPU0000:BA:00.0: Unknown Error")


@pytest.mark.parametrize(("scenario", "words"), [
    ("driver-failed", "failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"),
    ("no-devices", "failed (exit 6): No devices were found"),
])
def test_failing_nvidia_smi_is_critical(tmp_path, monkeypatch, scenario, words):
    findings, metrics = gpu_run(tmp_path, monkeypatch, scenario)
    assert severities(findings) == {"nvidia_smi:query": fh.CRITICAL}
    assert words in findings["nvidia_smi:query"].message
    assert "fleet_health_nvidia_smi_up 0" in metrics


def test_missing_nvidia_smi_is_critical(tmp_path, monkeypatch):
    findings, _ = gpu_run(tmp_path, monkeypatch, "normal", nvidia_smi=str(tmp_path / "nvidia-smi"))
    assert severities(findings) == {"nvidia_smi:query": fh.CRITICAL}
    assert "not found: is the NVIDIA driver installed?" in findings["nvidia_smi:query"].message


def test_hung_nvidia_smi_is_killed_and_critical_within_its_timeout(tmp_path, monkeypatch):
    pid_file = tmp_path / "smi.pid"
    monkeypatch.setenv("FAKE_NVIDIA_SMI_PIDFILE", str(pid_file))
    started = time.monotonic()
    findings, _ = gpu_run(tmp_path, monkeypatch, "hang", timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert severities(findings) == {"nvidia_smi:query": fh.CRITICAL}
    assert findings["nvidia_smi:query"].message == "fake-nvidia-smi hung: no answer within 1 s (killed)"
    assert elapsed < 2.5  # one call only: no second query into a wedged driver
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_checker_queries_only_fields_nvidia_smi_knows():
    """The fake refuses unknown fields like nvidia-smi does; the recorded headers list the real names."""
    header = (FAKE_SMI.parent / "normal" / "query-gpu.csv").read_text().splitlines()[0]
    assert [f.strip() for f in header.split(",")] == list(fh.GPU_FIELDS)
    header = (FAKE_SMI.parent / "normal" / "remapped-rows.csv").read_text().splitlines()[0]
    assert [f.strip() for f in header.split(",")] == list(fh.REMAP_FIELDS)


def test_cells_nvidia_smi_uses_for_missing_and_broken_values():
    assert fh._value(" [N/A] ") is None and fh._value("[Not Supported]") is None
    assert fh._flag("Yes") is True and fh._flag("No") is False and fh._flag("1") is True and fh._flag("0") is False
    gpus, other = fh.parse_gpu_rows(
        "0, GPU-1, NVIDIA H100, 00000000:18:00.0, [GPU requires reset], [Unknown Error], 0, [N/A]\n")
    assert other == [] and gpus[0].cells["temperature.gpu"] == "[GPU requires reset]"
    metrics = fh.Metrics()
    findings = fh._judge_gpu(gpus[0], None, fh.GpuSettings(), metrics)
    assert [(f.check, f.severity) for f in findings] == [("gpu_state", fh.CRITICAL)]
    assert "temperature.gpu [GPU requires reset]" in findings[0].message


def test_bus_ids_from_nvidia_smi_and_from_xid_lines_match():
    assert fh.normalise_bus_id("00000000:BA:00.0") == fh.normalise_bus_id("PCI:0000:ba:00") == "ba:00"


# --------------------------------------------------------------------------- XID errors

def xid_run(tmp_path: Path, previous: dict[str, Any], boot: str = "boot-1", **gpu: Any) -> tuple[list[Any], Any]:
    (tmp_path / "kmsg").write_text(XID_LOG.read_text())
    config = make_config(tmp_path, gpu={"enabled": True, **gpu})
    return fh.check_xids(config, previous, fh.Metrics(), fh.run_command, boot)


def events(findings: list[Any]) -> dict[str, str]:
    return {f.key: f.severity for f in findings if f.event}


def test_first_run_reports_every_xid_since_boot_serious_ones_critical(tmp_path):
    findings, cursor = xid_run(tmp_path, {})
    assert events(findings) == {
        "gpu_xid:13@PCI:0000:2a:00": fh.WARN,  # graphics exception: the application's fault
        "gpu_xid:31@PCI:0000:5d:00": fh.WARN,  # page fault: the application's fault
        "gpu_xid:48@PCI:0000:3a:00": fh.CRITICAL,  # double-bit ECC
        "gpu_xid:79@PCI:0000:ba:00": fh.CRITICAL,  # fallen off the bus
    }
    messages = {f.key: f.message for f in findings}
    assert messages["gpu_xid:31@PCI:0000:5d:00"].startswith("XID 31 x2 on PCI:0000:5d:00: pid=777")
    assert messages["gpu_xid:79@PCI:0000:ba:00"] == (
        "XID 79 on PCI:0000:ba:00: pid='<unknown>', name=<unknown>, GPU has fallen off the bus.")
    assert cursor == {"boot_id": "boot-1", "last_ts": 9700.0}


def test_later_runs_report_only_lines_after_the_cursor(tmp_path):
    findings, cursor = xid_run(tmp_path, {"boot_id": "boot-1", "last_ts": 9021.6})
    assert events(findings) == {"gpu_xid:31@PCI:0000:5d:00": fh.WARN, "gpu_xid:48@PCI:0000:3a:00": fh.CRITICAL}
    findings, _ = xid_run(tmp_path, cursor)
    assert events(findings) == {}


def test_a_reboot_resets_the_cursor(tmp_path):
    findings, cursor = xid_run(tmp_path, {"boot_id": "boot-0", "last_ts": 99999.0}, boot="boot-1")
    assert len(events(findings)) == 4
    assert cursor["boot_id"] == "boot-1"


def test_ignored_and_reclassified_xids(tmp_path):
    findings, _ = xid_run(tmp_path, {}, xid_ignore=[13, 31], xid_critical=[79])
    assert events(findings) == {"gpu_xid:48@PCI:0000:3a:00": fh.WARN, "gpu_xid:79@PCI:0000:ba:00": fh.CRITICAL}


def test_unreadable_kernel_log_warns(tmp_path):
    config = make_config(tmp_path, gpu={"enabled": True, "kernel_log_command": ["false"]})
    findings, cursor = fh.check_xids(config, {"boot_id": "b", "last_ts": 1.0}, fh.Metrics(), fh.run_command, "b")
    assert [(f.key, f.severity) for f in findings] == [("kernel_log:xid", fh.WARN)]
    assert "XID errors unchecked: false failed (exit 1)" in findings[0].message
    assert cursor == {"boot_id": "b", "last_ts": 1.0}


def test_journalctl_monotonic_format_is_read_too():
    xids, latest = fh.parse_kernel_log(
        "[ 9021.554433] gpu-01 kernel: NVRM: Xid (PCI:0000:ba:00): 79, pid=0, GPU has fallen off the bus.\n")
    assert [(x.code, x.pci) for x in xids] == [(79, "PCI:0000:ba:00")] and latest == 9021.554433


def test_gpu_and_xid_checks_run_side_by_side_and_name_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", "normal")
    (tmp_path / "kmsg").write_text(XID_LOG.read_text())
    config = make_config(tmp_path, gpu={"enabled": True, "expected_count": 8})
    findings, state, _ = fh.run_checks(config, {}, fh.Options(), fh.run_command, fh.Metrics(), fh.utcnow())
    messages = {f.key: f.message for f in findings}
    assert messages["gpu_xid:79@PCI:0000:ba:00"].startswith("XID 79 on PCI:0000:ba:00 (GPU 6): ")
    assert state["kernel_log"]["last_ts"] == 9700.0


def test_a_hung_nvidia_smi_costs_one_timeout_not_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", "hang")
    (tmp_path / "kmsg").write_text("")
    config = make_config(tmp_path, gpu={"enabled": True, "timeout_s": 1.0})
    started = time.monotonic()
    code, record = fh.execute(config, fh.Options(read_only=True))
    assert (code, record["status"]) == (2, fh.CRITICAL)
    assert time.monotonic() - started < 3
