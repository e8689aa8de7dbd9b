"""The host itself: TLS certificates nearing expiry, disk and inode headroom, memory, and the
last backup's outcome."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from .alerts import redact_credentials
from .common import Finding, Metrics, Runner, iso, parse_time
from .config import CRITICAL, OK, UNKNOWN, WARN, BackupSettings, DiskSettings, MemorySettings, TlsSettings

# --------------------------------------------------------------------------- TLS certificates

def check_certificates(tls: TlsSettings, metrics: Metrics, runner: Runner, now: dt.datetime) -> list[Finding]:
    """Days left on each <dir>/<name>/fullchain.pem of the configured directories."""
    findings = []
    for directory in tls.certificate_dirs:
        for pem in sorted(Path(directory).glob("*/fullchain.pem")):
            name = pem.parent.name
            result = runner([tls.openssl, "x509", "-noout", "-enddate", "-in", str(pem)], tls.timeout_s)
            value = result.stdout.strip().partition("notAfter=")[2]
            try:
                expires = dt.datetime.strptime(value, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.UTC)
            except ValueError:
                findings.append(Finding("tls", name, CRITICAL, f"cannot read the expiry of {pem}: "
                                                               f"{result.describe() if not result.ok else value!r}"))
                continue
            days = (expires - now).total_seconds() / 86400
            metrics.add("tls_certificate_expiry_timestamp_seconds", "When each TLS certificate expires.",
                        expires.timestamp(), {"certificate": name})
            when = f"{pem} expires {iso(expires)}"
            if days < 0:
                findings.append(Finding("tls", name, CRITICAL, f"{when}: expired {-days:.0f} days ago"))
            elif days < tls.warn_days:
                findings.append(Finding("tls", name, CRITICAL if days < tls.critical_days else WARN, (
                    f"{when}, in {days:.0f} days: certbot renews 30 days ahead on the host that issues it, "
                    "and a copy reaches the other hosts at their next site.yml run")))
            else:
                findings.append(Finding("tls", name, OK, f"{when}, in {days:.0f} days"))
    return findings


def check_disks(disk: DiskSettings, metrics: Metrics) -> list[Finding]:
    findings, seen = [], set()
    for path in disk.paths:
        try:
            st_dev = os.stat(path).st_dev
            vfs = os.statvfs(path)
        except FileNotFoundError:
            findings.append(Finding("disk", path, OK, f"{path} does not exist on this host: skipped"))
            continue
        except OSError as exc:
            findings.append(Finding("disk", path, WARN, f"cannot check {path}: {exc.strerror or exc}"))
            continue
        if st_dev in seen or vfs.f_blocks == 0:
            continue
        seen.add(st_dev)
        for check, free, total, what in (("disk", vfs.f_bavail, vfs.f_blocks, "space"),
                                         ("disk_inodes", vfs.f_favail, vfs.f_files, "inodes")):
            if not total:
                continue
            pct = 100.0 * free / total
            metrics.add(f"{check}_free_ratio", f"Free {what} on the filesystem holding the path.",
                        round(pct / 100, 4), {"path": path})
            severity = CRITICAL if pct < disk.critical_free_pct else WARN if pct < disk.warn_free_pct else OK
            findings.append(Finding(check, path, severity, f"{path}: {pct:.1f}% {what} free"))
    return findings


def check_memory(memory: MemorySettings, metrics: Metrics, meminfo: str = "/proc/meminfo") -> list[Finding]:
    values: dict[str, float] = {}
    try:
        for line in Path(meminfo).read_text().splitlines():
            name, _, rest = line.partition(":")
            if rest.split():
                values[name] = float(rest.split()[0])
    except OSError as exc:
        return [Finding("memory", "host", UNKNOWN, f"cannot read {meminfo}: {exc.strerror or exc}")]
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if not total or available is None:
        return [Finding("memory", "host", UNKNOWN, f"{meminfo} lacks MemTotal/MemAvailable")]
    pct = 100.0 * available / total
    metrics.add("memory_available_ratio", "MemAvailable / MemTotal.", round(pct / 100, 4))
    severity = (CRITICAL if pct < memory.critical_available_pct
                else WARN if pct < memory.warn_available_pct else OK)
    return [Finding("memory", "host", severity, f"{pct:.1f}% memory available")]


def check_backup(backup: BackupSettings, metrics: Metrics, now: dt.datetime) -> list[Finding]:
    path = Path(backup.status_file)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        metrics.add("backup_status_present", "1 when the backup job has written its outcome.", 0)
        return [Finding("backup", "last_run", backup.missing, f"no backup has run yet ({path} is absent)")]
    except (OSError, ValueError) as exc:
        return [Finding("backup", "last_run", CRITICAL, f"unreadable backup status {path}: {exc}")]
    metrics.add("backup_status_present", "1 when the backup job has written its outcome.", 1)
    if not isinstance(record, dict):
        return [Finding("backup", "last_run", CRITICAL, f"{path} is not a JSON object")]
    # Redacted before it is cut short: a URL cut before its "@" no longer looks like one.
    status, message = record.get("status"), redact_credentials(str(record.get("message", "")))[:200]
    finished = parse_time(record.get("finished"))
    if finished is not None:
        age_h = max(0.0, (now - finished).total_seconds() / 3600)
        metrics.add("backup_age_seconds", "Seconds since the last backup finished.", round(age_h * 3600))
    metrics.add("backup_last_ok", "1 when the last backup succeeded.", 1 if status == "ok" else 0)
    if status == "failed":
        return [Finding("backup", "last_run", CRITICAL,
                        f"last backup failed (finished {record.get('finished', '?')}): {message}")]
    if status != "ok":
        return [Finding("backup", "last_run", WARN, f"{path}: unknown status {status!r}")]
    if finished is None:
        return [Finding("backup", "last_run", WARN, f"{path}: no valid 'finished' time")]
    if age_h > backup.critical_age_h:
        return [Finding("backup", "last_run", CRITICAL, f"last good backup is {age_h:.0f} h old "
                                                         f"(critical above {backup.critical_age_h:g} h)")]
    if age_h > backup.warn_age_h:
        return [Finding("backup", "last_run", WARN, f"last good backup is {age_h:.0f} h old "
                                                     f"(warning above {backup.warn_age_h:g} h)")]
    return [Finding("backup", "last_run", OK, f"last backup ok, {age_h:.1f} h ago")]


