"""Reading the deploy audit log on the host; engine.write_audit writes it, one JSON object a line.

The logrotate role rotates it daily: <log>.1 stays plain for a day, older copies are <log>.N.gz.
These readers walk the log and its rotated copies from the newest line back and hand back raw
lines: parsing them, and merging several hosts' lines, is the controller's work
(filter_plugins/fleet_audit.py), so one parser decides what a line means.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import re
from collections.abc import Collection, Iterator
from pathlib import Path

# Files are skipped by the host's clock, `since` comes from the controller's: this much skew is
# allowed for (the controller filters the lines by their own times anyway).
CLOCK_SKEW = 3600.0


def log_files(path: str) -> list[Path]:
    """The log, then its rotated copies from newest (.1) to oldest; only those that exist."""
    log = Path(path)
    numbered: list[tuple[int, Path]] = []
    for copy in log.parent.glob(f"{log.name}.*"):
        match = re.fullmatch(re.escape(log.name) + r"\.([0-9]+)(\.gz)?", copy.name)
        if match:
            numbered.append((int(match.group(1)), copy))
    return ([log] if log.is_file() else []) + [copy for _, copy in sorted(numbered)]


def _read(path: Path) -> list[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        # The writer appends under an exclusive flock: a shared one means no half-written last line.
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        return handle.read().splitlines()


def lines_newest_first(path: str, since_epoch: float = 0.0) -> Iterator[str]:
    """Every non-blank line, newest first. A file last written before `since_epoch` holds only
    older lines (each line is appended when its run finishes), so it and older copies are skipped
    (allowing CLOCK_SKEW seconds between the host's clock and whoever chose `since_epoch`)."""
    for copy in log_files(path):
        try:
            if copy.stat().st_mtime < since_epoch - CLOCK_SKEW:
                return
            lines = _read(copy)
        except (OSError, EOFError):  # rotated away meanwhile, or a truncated .gz
            continue
        yield from (line for line in reversed(lines) if line.strip())


def service_of(line: str) -> str | None:
    """The service a line is about; None when the line is not an audit record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    service = record.get("service") if isinstance(record, dict) else None
    return service if isinstance(service, str) else None


def newest(path: str, services: Collection[str] | None = None, since_epoch: float = 0.0,
           limit: int = 0) -> list[str]:
    """The newest `limit` lines (0: all) about `services` (None: every line, unreadable ones too),
    newest first, from files written since `since_epoch`."""
    found = []
    for line in lines_newest_first(path, since_epoch):
        if services is None or service_of(line) in services:
            found.append(line)
            if limit and len(found) >= limit:
                break
    return found


def last_of_each(path: str, services: Collection[str]) -> dict[str, str]:
    """Each service's newest line; services without one are left out."""
    wanted, found = set(services), {}
    if not wanted:
        return {}
    for line in lines_newest_first(path):
        service = service_of(line)
        if service in wanted and service not in found:
            found[service] = line
            if len(found) == len(wanted):
                break
    return found
