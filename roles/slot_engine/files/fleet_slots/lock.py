"""A per-service deploy lock on the host: a JSON file created atomically (O_EXCL).

It holds the deploy id, its owner, when it started and when it expires. An expired lock is called
stale but still refused: only an explicit break takes it, and the broken lock is returned so the
deploy can record it. Breaking a lock never touches the slots: the engine reconciles the broken
deploy's journal, which never stops the slot nginx serves.

The lock is only held inside one call of the engine on this host, by the process whose pid it
records. A lock whose process no longer runs here was left by a deploy that died (the controller
killed mid-move, a crash): it is taken over without being asked, and reported as broken.

A canary (several engine calls, one per step, then the move) holds the lock between its calls:
hand_over() leaves it without a pid, "between canary steps", until it expires (the run's lock
ttl); the same deploy's next call takes it back. Another run is refused meanwhile; once that lock
expires, its canary counts as dead and is taken over like a dead process's.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOCK_DIR = "/var/lib/fleet/locks"


class LockHeld(RuntimeError):
    def __init__(self, service: str, lock: dict[str, Any]) -> None:
        super().__init__(f"deploy lock of {service} is {describe(lock)}")
        self.lock = lock


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def path_of(service: str, lock_dir: str = LOCK_DIR) -> Path:
    return Path(lock_dir) / f"{service}.lock"


def read(service: str, lock_dir: str = LOCK_DIR) -> dict[str, Any] | None:
    try:
        data = json.loads(path_of(service, lock_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"deploy_id": "?", "owner": "unknown", "started": "?", "expires_epoch": 0,
                "error": f"unreadable lock file: {err}"}
    return data if isinstance(data, dict) else {"deploy_id": "?", "owner": "unknown", "expires_epoch": 0}


def alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned(lock: dict[str, Any]) -> bool:
    """The lock's holder died: it recorded a pid that no longer runs on this host, or it was handed
    over between canary steps and expired before the next step took it back."""
    if lock.get("handover"):
        return float(lock.get("expires_epoch", 0)) < time.time()
    return "pid" in lock and not alive(lock["pid"])


def in_progress(lock: dict[str, Any] | None) -> bool:
    """A deploy holds the lock right now: its process still runs here and the lock has not expired."""
    return lock is not None and not orphaned(lock) and float(lock.get("expires_epoch", 0)) >= time.time()


def held_by_other(lock: dict[str, Any] | None, deploy_id: str) -> bool:
    """A live holder other than `deploy_id` has the lock."""
    return lock is not None and lock.get("deploy_id") != deploy_id and not orphaned(lock)


def describe(lock: dict[str, Any]) -> str:
    stale = f" (stale: expired {lock.get('expires', '?')})" if lock.get("expires_epoch", 0) < time.time() else ""
    if lock.get("handover"):
        dead = ("; it is between canary steps" if not orphaned(lock) else
                "; it was between canary steps and its next step never came, so that deploy died")
    else:
        dead = f"; its process {lock['pid']} no longer runs here, so that deploy died" if orphaned(lock) else ""
    return (f"held by {lock.get('owner', 'unknown')} since {lock.get('started', '?')} "
            f"(deploy {lock.get('deploy_id', '?')}, expires {lock.get('expires', '?')}){stale}{dead}")


def acquire(service: str, deploy_id: str, owner: str, ttl: float, break_lock: bool = False,
            lock_dir: str = LOCK_DIR, wait: float = 0) -> dict[str, Any]:
    """Take the lock; returns the lock it broke ({} if none): one whose holder died, or any with
    `break_lock`. While another live deploy holds it, retry for up to `wait` seconds, then LockHeld."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return _acquire(service, deploy_id, owner, ttl, break_lock, lock_dir)
        except LockHeld:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _acquire(service: str, deploy_id: str, owner: str, ttl: float, break_lock: bool, lock_dir: str) -> dict[str, Any]:
    current = read(service, lock_dir)
    if current is not None and current.get("deploy_id") == deploy_id:
        if current.get("handover"):  # the next call of a canary takes its lock back
            _write(path_of(service, lock_dir), {k: v for k, v in current.items() if k != "handover"} | {
                "pid": os.getpid()})
        return {}
    broken: dict[str, Any] = {}
    path = path_of(service, lock_dir)
    if current is not None:
        if not break_lock and not orphaned(current):
            raise LockHeld(service, current)
        broken = current
        path.unlink(missing_ok=True)
    now = time.time()
    lock = {"deploy_id": deploy_id, "owner": owner, "service": service, "pid": os.getpid(),
            "started": iso(now), "started_epoch": now, "expires": iso(now + ttl), "expires_epoch": now + ttl}
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise LockHeld(service, read(service, lock_dir) or {}) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(lock, handle)
        handle.write("\n")
    return broken


def _write(path: Path, lock: dict[str, Any]) -> None:
    """Replace a lock this deploy holds (write and rename: a reader sees the old or the new)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(lock) + "\n", encoding="utf-8")
    temporary.chmod(0o644)
    temporary.rename(path)


def hand_over(service: str, deploy_id: str, ttl: float, lock_dir: str = LOCK_DIR) -> bool:
    """Keep the lock of `deploy_id` between two calls of its canary: no pid, expiring in `ttl`
    seconds (then orphaned); False when `deploy_id` does not hold it."""
    current = read(service, lock_dir)
    if current is None or current.get("deploy_id") != deploy_id:
        return False
    now = time.time()
    kept = {k: v for k, v in current.items() if k != "pid"}
    _write(path_of(service, lock_dir), kept | {"handover": True, "expires": iso(now + ttl),
                                                "expires_epoch": now + ttl})
    return True


def release(service: str, deploy_id: str, lock_dir: str = LOCK_DIR) -> bool:
    """Release the lock if `deploy_id` holds it; another deploy's lock is left alone."""
    current = read(service, lock_dir)
    if current is None or current.get("deploy_id") != deploy_id:
        return False
    path_of(service, lock_dir).unlink(missing_ok=True)
    return True
