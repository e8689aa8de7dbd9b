"""One slot switch of one service on this host, as a single transaction, and its recovery.

    preflight -> start idle slot -> health gate -> journal -> switch -> verify through nginx
              -> record -> boot enablement -> drain and stop the old slot

Every phase is journaled in the state file (state.Move) before the next one changes anything, so
a run killed at any point leaves a `pending` move that the next run reconciles first: finished
when nginx already routes to the new slot and it is healthy, otherwise traffic is put back on the
old slot. Nothing here reloads nginx: the switch is one value in its slot table (fleet_slots.nginx).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import host, lock, nginx, state
from .state import Move, State

HALT_POINTS = ("start", "switch", "record", "drain")
HALT_DIR = "/run/fleet-slots"


@dataclass(frozen=True)
class Spec:
    """What the engine needs to know of a service (from the validated catalog)."""

    service: str
    blue_port: int
    health_path: str = "/health"
    health_status: int = 200
    health_body: str = ""
    health_timeout: float = 30.0
    health_interval: float = 0.05
    health_start_grace: float = 0.0
    drain_timeout: float = 30.0
    verify_url: str = "http://127.0.0.1/health"  # the health path through nginx
    verify_host: str | None = None
    verify_timeout: float = 15.0
    keep: int = 5  # releases kept on the host (never the live one, a slot's or the rollback target)
    service_root: str = "/opt/fleet"
    state_dir: str = state.STATE_DIR
    lock_dir: str = lock.LOCK_DIR
    control_socket: str = nginx.CONTROL_SOCKET

    def slot_link(self, port: int) -> Path:
        return Path(self.service_root) / self.service / "slots" / str(port)

    def release_dir(self, release: str) -> Path:
        return Path(self.service_root) / self.service / "releases" / release

    def passes(self, probe: host.Probe) -> bool:
        """Whether a health answer is the one the catalog expects."""
        return probe.status == self.health_status and self.health_body in probe.body

    def staged(self, release: str) -> bool:
        """A release is in place once its unpack finished (it writes .fleet-release last)."""
        return (self.release_dir(release) / ".fleet-release").exists()


class Failed(RuntimeError):
    """A step failed; `phase` says where (the undo depends on it)."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


@dataclass
class Outcome:
    result: str  # ok, failed, unchanged
    message: str
    phase: str = ""
    from_port: int = 0
    to_port: int = 0
    from_release: str = ""
    to_release: str = ""
    durations: dict[str, float] = field(default_factory=dict)
    reconciled: str = ""
    broke_lock: dict[str, Any] = field(default_factory=dict)


class Clock:
    """Durations of the phases, in seconds."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.durations: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.durations[name] = round(now - self._last, 3)
        self._last = now


def load(spec: Spec) -> State:
    current = state.load(spec.service, spec.state_dir)
    if current is None:
        where = state.path_of(spec.service, spec.state_dir)
        raise Failed("preflight", f"{spec.service} has no deploy state ({where}): run site.yml on this host first")
    return current


def _halt(point: str, halt_after: str | None, service: str) -> None:
    """Drill: freeze this process at a phase boundary, as if the controller died right there.

    The marker file tells the drill where it stopped; whoever runs the drill kills the frozen
    process (and the controller), then checks that the next run reconciles."""
    if halt_after != point:
        return
    os.makedirs(HALT_DIR, exist_ok=True)
    Path(HALT_DIR, f"{service}.halted").write_text(f"{os.getpid()} {point}\n")
    os.kill(os.getpid(), signal.SIGSTOP)


# -- the checks --------------------------------------------------------------------------------
def gate(spec: Spec, port: int) -> None:
    """Poll the slot's health until it passes; Failed with what it saw."""
    unit = host.unit_of(spec.service, port)
    url = f"http://127.0.0.1:{port}{spec.health_path}"
    time.sleep(spec.health_start_grace)
    deadline = time.monotonic() + spec.health_timeout
    attempts = 0
    while True:
        attempts += 1
        probe = host.get(url, timeout=min(5.0, spec.health_timeout))
        if spec.passes(probe):
            break
        activity = host.unit_active(unit)
        if activity == "failed" or time.monotonic() + spec.health_interval > deadline:
            raise Failed("health gate", (
                f"GET {url} did not pass in {spec.health_timeout:g}s ({attempts} attempts): wanted status "
                f"{spec.health_status}{' and body containing ' + repr(spec.health_body) if spec.health_body else ''}; "
                f"saw {probe.describe()}; {unit} is {activity}"))
        time.sleep(spec.health_interval)
    # The answer must come from the new process, not from something else on the port.
    owners = host.listeners(port)
    strays = [p for p in owners if p.unit != unit]
    if host.unit_active(unit) != "active" or strays or not owners:
        raise Failed("health gate", (
            f"port {port} answered, but not from {unit} ({host.unit_active(unit)}): listeners "
            + (", ".join(f"PID {p.pid} ({p.command}) in {p.unit or 'no unit'}" for p in owners) or "none")))


def verify(spec: Spec, port: int) -> None:
    """Through nginx, the service's health must now be served by `port`."""
    want = f"127.0.0.1:{port}"
    deadline = time.monotonic() + spec.verify_timeout
    while True:
        probe = host.get(spec.verify_url, spec.verify_host)
        if spec.passes(probe) and probe.upstream == want:
            return
        if time.monotonic() > deadline:
            raise Failed("verify", (
                f"GET {spec.verify_url}{' (Host: ' + spec.verify_host + ')' if spec.verify_host else ''} through "
                f"nginx was not served by {want}: saw {probe.describe()}, served by {probe.upstream or 'nobody'}"))
        time.sleep(0.05)


def preflight(spec: Spec, current: State) -> int:
    """Check the host agrees with the state and clear the idle slot; returns the idle port."""
    routed = nginx.route(spec.service, spec.control_socket)
    if routed != current.live_port:
        raise Failed("preflight", (
            f"nginx routes {spec.service} to slot {routed} but the deploy state says {current.live_port} is live; "
            "run site.yml on this host to put nginx back on the state's live slot"))
    idle = current.idle_port(spec.blue_port)
    unit = host.unit_of(spec.service, idle)
    for listener in host.listeners(idle):
        if listener.unit != unit:
            raise Failed("preflight", (
                f"port {idle}, the idle slot of {spec.service}, is held by PID {listener.pid} ({listener.command}), "
                f"which is not {unit} but {listener.unit or 'no systemd unit'}; stop it or free the port"))
    # Whatever still runs on the idle slot serves nobody (nginx routes to the live one): a
    # leftover of a failed or interrupted move.
    if host.unit_active(unit) != "inactive":
        host.stop(unit)
    return idle


# -- the transaction ---------------------------------------------------------------------------
def move(spec: Spec, current: State, to_release: str, mode: str, deploy_id: str, owner: str,
         halt_after: str | None = None) -> Outcome:
    """Move the service to `to_release` on the idle slot. The state is saved at every phase."""
    clock = Clock()
    from_port, from_release = current.live_port, current.live_release
    outcome = Outcome("failed", "", "preflight", from_port, current.idle_port(spec.blue_port), from_release,
                      to_release)
    old_unit = host.unit_of(spec.service, from_port)
    try:
        if not spec.staged(to_release):
            raise Failed("preflight", f"release {to_release} is not staged in {spec.release_dir(to_release)}")
        idle = preflight(spec, current)
        new_unit = host.unit_of(spec.service, idle)

        outcome.phase = "start"
        current.begin(Move(deploy_id, mode, from_port, idle, from_release, to_release, owner=owner,
                           history_before=list(current.history)))
        state.save(current, spec.state_dir)
        host.point_slot(spec.slot_link(idle), to_release)
        host.start(new_unit)
        clock.lap("start")
        _halt("start", halt_after, spec.service)

        outcome.phase = "health gate"
        gate(spec, idle)
        current.advance("healthy")
        state.save(current, spec.state_dir)
        clock.lap("health_gate")

        outcome.phase = "switch"
        nginx.switch(spec.service, idle, spec.control_socket)
        current.advance("switched")
        state.save(current, spec.state_dir)
        clock.lap("switch")
        _halt("switch", halt_after, spec.service)

        outcome.phase = "verify"
        verify(spec, idle)
        clock.lap("verify")

        outcome.phase = "record"
        current.commit()
        state.save(current, spec.state_dir)
        host.enable_at_boot(new_unit, old_unit)
        clock.lap("record")
        _halt("record", halt_after, spec.service)

        outcome.phase = "drain"
        current.advance("draining")
        state.save(current, spec.state_dir)
        drain(spec, old_unit, halt_after)
        current.finish()
        state.save(current, spec.state_dir)
        clock.lap("drain")
    except (Failed, nginx.NginxControlError, RuntimeError, OSError) as err:
        phase = err.phase if isinstance(err, Failed) else outcome.phase
        outcome.phase = phase
        outcome.durations = clock.durations
        outcome.message = f"{err}. {undo(spec, current, phase)}"
        return outcome
    outcome.result, outcome.durations = "ok", clock.durations
    outcome.message = f"{spec.service} {from_release} -> {to_release} now live on slot {outcome.to_port}"
    try:
        prune(spec, current)
    except OSError as err:  # housekeeping: the move itself succeeded
        outcome.message += f"; removing old releases failed: {err}"
    return outcome


def drain(spec: Spec, unit: str, halt_after: str | None = None) -> None:
    """Stop the old slot gracefully: SIGTERM, it finishes its in-flight requests (nginx sends it no
    new ones), systemd kills it after drain_timeout (the unit's TimeoutStopSec)."""
    host.stop(unit, wait=False)
    _halt("drain", halt_after, spec.service)
    if not host.wait_inactive(unit, spec.drain_timeout + 5):
        raise Failed("drain", f"{unit} did not stop within {spec.drain_timeout + 5:g}s")


def prune(spec: Spec, current: State) -> list[str]:
    """Remove all but the newest `keep` releases; never one a slot points at or the rollback target."""
    protected = {str(slot["release"]) for slot in current.slots.values()} | set(current.history[-2:])
    releases = sorted((p for p in spec.release_dir("").iterdir() if p.is_dir()),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p for p in releases[spec.keep:] if p.name not in protected]
    for path in removed:
        shutil.rmtree(path)
    return [p.name for p in removed]


def undo(spec: Spec, current: State, phase: str) -> str:
    """Put things back after a failed phase; returns what the operator should know."""
    move_ = current.pending
    if move_ is None:
        return f"Nothing changed: traffic stays on {current.live_release} (slot {current.live_port})."
    new_unit = host.unit_of(spec.service, move_.to_port)
    if phase in ("drain",) or move_.phase in ("recorded", "draining"):
        return (f"Traffic is on {move_.to_release} (slot {move_.to_port}); the old slot "
                f"{move_.from_port} needs a look, the next run finishes the move.")
    notes = []
    if move_.phase == "switched" or phase in ("switch", "verify"):
        try:
            nginx.switch(spec.service, move_.from_port, spec.control_socket)
        except nginx.NginxControlError as err:
            notes.append(f"putting nginx back failed too: {err}")
    host.systemctl("stop", new_unit, check=False)
    host.systemctl("reset-failed", new_unit, check=False)
    spec.slot_link(move_.to_port).unlink(missing_ok=True)
    bad = phase in ("health gate", "verify")
    current.abandon(bad=bad)
    state.save(current, spec.state_dir)
    return " ".join([f"Traffic stays on {move_.from_release} (slot {move_.from_port})"
                     + (", release marked bad on this host." if bad else "."), *notes])


# -- recovery ----------------------------------------------------------------------------------
def reconcile(spec: Spec, current: State) -> str:
    """Resolve a move a killed run left pending; returns what was found and done ("" if none)."""
    move_ = current.pending
    if move_ is None:
        return ""
    found = (f"found {move_.mode} {move_.deploy_id} by {move_.owner or 'unknown'} interrupted after its "
             f"{move_.phase} phase ({move_.from_release} slot {move_.from_port} -> {move_.to_release} "
             f"slot {move_.to_port})")
    routed = nginx.route(spec.service, spec.control_socket)
    new_unit, old_unit = host.unit_of(spec.service, move_.to_port), host.unit_of(spec.service, move_.from_port)
    new_ok = host.unit_active(new_unit) == "active" and _healthy(spec, move_.to_port)
    if routed == move_.to_port and new_ok:
        if move_.phase in ("healthy", "switched"):
            current.commit()
            state.save(current, spec.state_dir)
        host.enable_at_boot(new_unit, old_unit)
        current.advance("draining")
        state.save(current, spec.state_dir)
        drain(spec, old_unit)
        current.finish()
        state.save(current, spec.state_dir)
        return f"{found}: slot {move_.to_port} serves and is healthy, so the move was finished and {old_unit} stopped"
    # Traffic goes (back) to the old slot, started again if the drain had stopped it.
    if host.unit_active(old_unit) != "active":
        host.start(old_unit)
    if not _healthy(spec, move_.from_port, timeout=spec.health_timeout):
        raise Failed("reconcile", (
            f"{found}: slot {move_.to_port} {'is not healthy' if routed == move_.to_port else 'never got traffic'}, "
            f"and the old slot {move_.from_port} is not healthy either; nginx still routes to {routed}. "
            "Look at both units' logs before deploying again"))
    if routed != move_.from_port:
        nginx.switch(spec.service, move_.from_port, spec.control_socket)
    if move_.phase in ("recorded", "draining"):
        current.revert()
    host.enable_at_boot(old_unit, new_unit)
    host.systemctl("stop", new_unit, check=False)
    spec.slot_link(move_.to_port).unlink(missing_ok=True)
    current.abandon()
    state.save(current, spec.state_dir)
    return (f"{found}: slot {move_.to_port} {'was not healthy' if routed == move_.to_port else 'never got traffic'}, "
            f"so traffic is on {move_.from_release} (slot {move_.from_port}) and {new_unit} was stopped")


def _healthy(spec: Spec, port: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if spec.passes(host.get(f"http://127.0.0.1:{port}{spec.health_path}", timeout=2.0)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# -- entry points (the Ansible module and the CLI call these) ----------------------------------
def plan(spec: Spec, deploy_id: str, owner: str, check: bool, break_lock: bool = False,
         audit_log: str | None = None, hostname: str = "", release: str | None = None) -> dict[str, Any]:
    """Read-mostly: the state and the lock. A move a killed run left pending is reconciled (and
    audited) when the lock is free or its holder died, or when `break_lock` is given."""
    held = lock.read(spec.service, spec.lock_dir)
    held_by_other = lock.held_by_other(held, deploy_id)
    current = load(spec)
    reconciled = ""
    move_ = current.pending
    if move_ is not None and not check and (break_lock or not held_by_other):
        started = time.time()
        broken = lock.acquire(spec.service, deploy_id, owner, 600, break_lock, spec.lock_dir)
        try:
            reconciled = reconcile(spec, current)
        finally:
            lock.release(spec.service, deploy_id, spec.lock_dir)
        held_by_other = False
        if audit_log:
            write_audit(audit_log, Outcome("ok", reconciled, "reconcile", move_.from_port, move_.to_port,
                                           move_.from_release, move_.to_release, broke_lock=broken,
                                           reconciled=reconciled),
                        spec.service, "reconcile", deploy_id, owner, hostname, started)
    return {"state": current.to_dict(), "held_by_other": held_by_other, "lock": held or {},
            "lock_msg": lock.describe(held) if held else "free", "reconciled": reconciled,
            "staged": bool(release) and spec.staged(str(release))}


def run(spec: Spec, *, mode: str, release: str | None, deploy_id: str, owner: str, hostname: str,
        lock_ttl: float, break_lock: bool, audit_log: str | None, retry_bad_release: bool = False,
        halt_after: str | None = None) -> Outcome:
    """Lock, reconcile, move, unlock, audit: one host's whole deploy, rollback or restart."""
    started = time.time()
    try:
        broken = lock.acquire(spec.service, deploy_id, owner, lock_ttl, break_lock, spec.lock_dir)
    except lock.LockHeld as err:
        return Outcome("failed", f"{err}; refusing to {mode}. If that deploy is dead, run again with "
                                 "-e break_lock=true to break it on purpose.", "lock")
    try:
        outcome = _run_locked(spec, mode, release, deploy_id, owner, retry_bad_release, halt_after)
        outcome.broke_lock = broken
    finally:
        lock.release(spec.service, deploy_id, spec.lock_dir)
    if audit_log and outcome.result != "unchanged":
        write_audit(audit_log, outcome, spec.service, mode, deploy_id, owner, hostname, started)
    return outcome


def _run_locked(spec: Spec, mode: str, release: str | None, deploy_id: str, owner: str,
                retry_bad_release: bool, halt_after: str | None) -> Outcome:
    try:
        current = load(spec)
        reconciled = reconcile(spec, current)
    except (Failed, nginx.NginxControlError, state.StateError) as err:
        return Outcome("failed", str(err), getattr(err, "phase", "reconcile"))
    target = release if mode == "deploy" else current.rollback_target() if mode == "rollback" else current.live_release
    live = Outcome("unchanged", "", "", current.live_port, current.live_port, current.live_release,
                   target or "", reconciled=reconciled)
    if not target:
        live.result, live.phase = "failed", "plan"
        live.message = (f"{spec.service} has no earlier good release to roll back to (live: {current.live_release}, "
                        f"history: {' -> '.join(current.history)})")
        return live
    if target == current.live_release and mode != "restart":
        live.message = f"{spec.service} {target} is already live on slot {current.live_port}"
        return live
    if target in current.bad_releases and not retry_bad_release:
        live.result, live.phase = "failed", "plan"
        live.message = (f"{spec.service} {target} was marked bad on this host (it failed its health gate); "
                        "pass -e retry_bad_release=true to try it again")
        return live
    outcome = move(spec, current, target, mode, deploy_id, owner, halt_after)
    outcome.reconciled = reconciled
    return outcome


def write_audit(path: str, outcome: Outcome, service: str, mode: str, deploy_id: str, owner: str,
                hostname: str, started: float) -> None:
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "who": owner, "deploy_id": deploy_id, "host": hostname or socket.gethostname(), "service": service,
        "mode": mode, "from_release": outcome.from_release, "to_release": outcome.to_release,
        "from_slot": outcome.from_port, "to_slot": outcome.to_port, "result": outcome.result,
        "phase": outcome.phase, "message": outcome.message, "seconds": round(time.time() - started, 3),
        "durations": outcome.durations, "broke_lock": outcome.broke_lock, "reconciled": outcome.reconciled,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, sort_keys=True) + "\n")
