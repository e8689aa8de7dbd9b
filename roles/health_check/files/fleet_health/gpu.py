"""GPUs through nvidia-smi (count, temperature, ECC, retired pages, remapped rows) and XID errors in
the kernel log since the last run."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Finding, Metrics, Runner
from .config import CRITICAL, OK, WARN, Config, GpuSettings

GPU_FIELDS = (
    "index", "uuid", "name", "pci.bus_id", "temperature.gpu",
    "ecc.errors.uncorrected.volatile.total", "ecc.errors.uncorrected.aggregate.total",
    "retired_pages.pending",
)
REMAP_FIELDS = (
    "gpu_bus_id", "remapped_rows.correctable", "remapped_rows.uncorrectable",
    "remapped_rows.pending", "remapped_rows.failure",
)
NOT_AVAILABLE = {"[n/a]", "n/a", "[not supported]", "not supported", ""}

_XID_RE = re.compile(r"NVRM: Xid \((?P<pci>[^)]*)\): (?P<xid>\d+)(?:, ?(?P<rest>.*))?")
_KTIME_RE = re.compile(r"^\s*\[\s*(?P<ts>\d+\.\d+)\]")


# --------------------------------------------------------------------------- GPUs

def _value(raw: str) -> str | None:
    """A CSV cell; None when the GPU does not report it ([N/A], [Not Supported])."""
    text = raw.strip()
    return None if text.lower() in NOT_AVAILABLE else text


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _flag(raw: str | None) -> bool | None:
    """nvidia-smi writes Yes/No for some booleans and 0/1 (or counts) for others."""
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in ("yes", "true", "enabled"):
        return True
    if text in ("no", "false", "disabled"):
        return False
    number = _number(text)
    return None if number is None else number > 0


def _is_error_cell(raw: str | None) -> bool:
    """Cells like [Unknown Error] or [GPU is lost] say the GPU itself is in trouble."""
    return raw is not None and raw.startswith("[") and raw.endswith("]")


@dataclass
class Gpu:
    index: str
    uuid: str
    name: str
    bus_id: str
    cells: dict[str, str | None]

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.bus_id})"


def parse_gpu_rows(text: str) -> tuple[list[Gpu], list[str]]:
    """GPUs from `--query-gpu` CSV (noheader, nounits) and the lines that are not GPU rows."""
    gpus, other = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_FIELDS):
            other.append(line.strip())
            continue
        values = {name: _value(cell) for name, cell in zip(GPU_FIELDS, cells, strict=True)}
        gpus.append(Gpu(cells[0], cells[1], cells[2], cells[3], values))
    return gpus, other


def parse_remapped_rows(text: str) -> dict[str, dict[str, str | None]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(REMAP_FIELDS):
            rows[normalise_bus_id(cells[0])] = {n: _value(c) for n, c in zip(REMAP_FIELDS, cells, strict=True)}
    return rows


def normalise_bus_id(bus_id: str) -> str:
    """'00000000:3B:00.0' and XID's 'PCI:0000:3b:00' both become '3b:00' (bus:device)."""
    text = bus_id.strip().lower().removeprefix("pci:")
    parts = text.split(":")
    if len(parts) >= 2:
        return f"{parts[-2]}:{parts[-1].split('.')[0]}"
    return text


def check_gpus(config: Config, metrics: Metrics, runner: Runner) -> tuple[list[Gpu], list[Finding]]:
    gpu_cfg = config.gpu
    fmt = "--format=csv,noheader,nounits"
    query = runner([gpu_cfg.nvidia_smi, "--query-gpu=" + ",".join(GPU_FIELDS), fmt], gpu_cfg.timeout_s)
    metrics.add("nvidia_smi_duration_seconds", "Time nvidia-smi took to answer.", round(query.duration_s, 3))
    gpus, other = parse_gpu_rows(query.stdout) if not query.timed_out else ([], [])
    findings = []
    if query.missing:
        findings.append(Finding("nvidia_smi", "query", CRITICAL,
                                f"{gpu_cfg.nvidia_smi} not found: is the NVIDIA driver installed?"))
    elif other:  # its own words about a GPU it could not read come first
        name = Path(gpu_cfg.nvidia_smi).name
        said = f"failed (exit {query.rc})" if query.rc else "reported"
        findings.append(Finding("nvidia_smi", "query", CRITICAL, f"{name} {said}: {other[0][:200]}"))
    elif not query.ok:
        findings.append(Finding("nvidia_smi", "query", CRITICAL, query.describe()))
    else:
        findings.append(Finding("nvidia_smi", "query", OK, f"nvidia-smi answered in {query.duration_s:.2f} s"))
    metrics.add("nvidia_smi_up", "1 when nvidia-smi answered the query.", 1 if query.ok else 0)
    if query.timed_out or not (query.ok or gpus):
        return gpus, findings  # no second call into a wedged or absent driver

    expected = gpu_cfg.expected_count
    count = len(gpus)
    metrics.add("gpu_count", "GPUs nvidia-smi lists.", count)
    metrics.add("gpu_expected_count", "GPUs this host should have (0: at least one).", expected)
    if expected and count < expected:
        findings.append(Finding("gpu_count", "host", CRITICAL, f"{count} GPUs visible, expected {expected}"))
    elif expected and count > expected:
        findings.append(Finding("gpu_count", "host", WARN, f"{count} GPUs visible, expected only {expected}"))
    elif not expected and count == 0:
        findings.append(Finding("gpu_count", "host", CRITICAL, "no GPU visible"))
    else:
        findings.append(Finding("gpu_count", "host", OK, f"{count} GPUs visible"))

    remap: dict[str, dict[str, str | None]] = {}
    if gpus:
        remap_result = runner([gpu_cfg.nvidia_smi, "--query-remapped-rows=" + ",".join(REMAP_FIELDS), fmt],
                              gpu_cfg.timeout_s)
        if remap_result.timed_out:
            findings.append(Finding("nvidia_smi", "remapped_rows", CRITICAL, remap_result.describe()))
        elif remap_result.ok:
            remap = parse_remapped_rows(remap_result.stdout)
        # Otherwise the GPUs predate row remapping (pre-Ampere): retired pages cover them.
    for gpu in gpus:
        findings.extend(_judge_gpu(gpu, remap.get(normalise_bus_id(gpu.bus_id)), gpu_cfg, metrics))
    return gpus, findings


def _judge_gpu(gpu: Gpu, remap: dict[str, str | None] | None, gpu_cfg: GpuSettings,
               metrics: Metrics) -> list[Finding]:
    labels = {"gpu": gpu.index, "bus_id": gpu.bus_id, "uuid": gpu.uuid or ""}
    findings = []
    broken = [f"{name} {value}" for name, value in gpu.cells.items() if _is_error_cell(value)]
    if broken:
        findings.append(Finding("gpu_state", gpu.bus_id, CRITICAL, f"{gpu.label} reports {', '.join(broken)}"))

    temp = _number(gpu.cells["temperature.gpu"])
    if temp is not None:
        metrics.add("gpu_temperature_celsius", "GPU core temperature.", temp, labels)
        severity = (CRITICAL if temp >= gpu_cfg.temperature_critical_c
                    else WARN if temp >= gpu_cfg.temperature_warn_c else OK)
        limit = gpu_cfg.temperature_critical_c if severity == CRITICAL else gpu_cfg.temperature_warn_c
        findings.append(Finding("gpu_temperature", gpu.bus_id, severity,
                                f"{gpu.label} at {temp:g} C" + (f" (limit {limit:g} C)" if severity != OK else "")))

    volatile = _number(gpu.cells["ecc.errors.uncorrected.volatile.total"])
    aggregate = _number(gpu.cells["ecc.errors.uncorrected.aggregate.total"])
    if volatile is not None:
        metrics.add("gpu_ecc_uncorrected_volatile", "Uncorrected ECC errors since the driver loaded.", volatile, labels)
    if aggregate is not None:
        metrics.add("gpu_ecc_uncorrected_aggregate", "Uncorrected ECC errors over the GPU's life.", aggregate, labels)
    if volatile:
        findings.append(Finding("gpu_ecc", gpu.bus_id, CRITICAL,
                                f"{gpu.label}: {volatile:g} uncorrected ECC errors since the driver loaded"))
    elif aggregate:
        findings.append(Finding("gpu_ecc", gpu.bus_id, WARN,
                                f"{gpu.label}: {aggregate:g} uncorrected ECC errors over its life"))
    elif (volatile is not None or aggregate is not None) and not broken:
        findings.append(Finding("gpu_ecc", gpu.bus_id, OK, f"{gpu.label}: no uncorrected ECC errors"))

    retired = _flag(gpu.cells["retired_pages.pending"])
    if retired is not None:
        metrics.add("gpu_retired_pages_pending", "1 when retired pages wait for a GPU reset.", int(retired), labels)
        findings.append(Finding("gpu_retired_pages", gpu.bus_id, WARN if retired else OK,
                                f"{gpu.label}: retired pages pending, reset the GPU when drained" if retired
                                else f"{gpu.label}: no retired pages pending"))

    if remap is not None:
        pending = _flag(remap["remapped_rows.pending"])
        failed = _flag(remap["remapped_rows.failure"])
        for metric, key in (("pending", "remapped_rows.pending"), ("failure", "remapped_rows.failure")):
            flag = _flag(remap[key])
            if flag is not None:
                metrics.add(f"gpu_remapped_rows_{metric}", f"1 when a row remapping is {metric}.", int(flag), labels)
        for metric in ("correctable", "uncorrectable"):
            count = _number(remap[f"remapped_rows.{metric}"])
            if count is not None:
                metrics.add(f"gpu_remapped_rows_{metric}", f"Rows remapped for {metric} errors.", count, labels)
        if failed:
            findings.append(Finding("gpu_remapped_rows", gpu.bus_id, CRITICAL,
                                    f"{gpu.label}: row remapping failed, the GPU needs replacing"))
        elif pending:
            findings.append(Finding("gpu_remapped_rows", gpu.bus_id, WARN,
                                    f"{gpu.label}: remapped rows pending, reset the GPU when drained"))
        elif pending is not None or failed is not None:
            findings.append(Finding("gpu_remapped_rows", gpu.bus_id, OK, f"{gpu.label}: no row remapping pending"))
    return findings


# --------------------------------------------------------------------------- XID errors

@dataclass
class Xid:
    timestamp: float
    pci: str
    code: int
    text: str


def parse_kernel_log(text: str) -> tuple[list[Xid], float | None]:
    """XID lines of a kernel log (dmesg or `journalctl -k -o short-monotonic`) and its latest timestamp."""
    xids, latest = [], None
    for line in text.splitlines():
        stamp = _KTIME_RE.match(line)
        if not stamp:
            continue
        ts = float(stamp.group("ts"))
        latest = ts if latest is None else max(latest, ts)
        match = _XID_RE.search(line)
        if match:
            xids.append(Xid(ts, match.group("pci"), int(match.group("xid")), (match.group("rest") or "").strip()))
    return xids, latest


def boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def check_xids(config: Config, previous: dict[str, Any], metrics: Metrics, runner: Runner,
               current_boot: str) -> tuple[list[Finding], dict[str, Any]]:
    """New XID lines since the last run (or since boot on a first run); returns the new cursor."""
    gpu_cfg = config.gpu
    result = runner(list(gpu_cfg.kernel_log_command), gpu_cfg.kernel_log_timeout_s)
    if not result.ok:
        return ([Finding("kernel_log", "xid", WARN, f"cannot read the kernel log, XID errors unchecked: "
                                                    f"{result.describe()}")], previous)
    xids, latest = parse_kernel_log(result.stdout)
    same_boot = previous.get("boot_id") == current_boot and current_boot != ""
    since = previous.get("last_ts") if same_boot else None
    new = [x for x in xids if since is None or x.timestamp > since]
    cursor = {"boot_id": current_boot, "last_ts": latest if latest is not None else (since or 0.0)}
    if latest is not None and since is not None:
        cursor["last_ts"] = max(latest, since)

    grouped: dict[tuple[int, str], list[Xid]] = {}
    for xid in new:
        if xid.code not in gpu_cfg.xid_ignore:
            grouped.setdefault((xid.code, xid.pci), []).append(xid)
    findings = [Finding("kernel_log", "xid", OK, f"{len(new)} new XID lines")]
    for (code, pci), lines in sorted(grouped.items()):
        severity = CRITICAL if code in gpu_cfg.xid_critical else WARN
        times = f" x{len(lines)}" if len(lines) > 1 else ""
        findings.append(Finding("gpu_xid", f"{code}@{pci}", severity,
                                f"XID {code}{times} on {pci}: {lines[-1].text[:160]}", event=True))
        metrics.add("gpu_xid_new", "XID lines seen since the previous run.", len(lines), {"xid": str(code), "pci": pci})
    return findings, cursor


