"""One slot switch of one service on this host, as a single transaction, and its recovery.

    preflight -> start idle slot -> health gate -> smoke checks -> journal -> switch -> verify through nginx
              -> smoke checks through nginx -> watch (the old slot still runs) -> record -> boot enablement
              -> drain and stop the old slot

The smoke checks (fleet_slots.smoke, the catalog's `deploy.smoke`) are requests the new release
must answer as expected: a failure before the switch aborts like a failed health gate, after it
like a failed verify; both mark the release bad on this host.

The watch (fleet_slots.watch, the catalog's `deploy` section) judges the new slot on its health
and the service's real traffic through nginx for a few seconds after the switch; a breach switches
traffic straight back to the old slot, which still runs, and the move fails like a failed verify:
the new slot is stopped and the release marked bad on this host.

Each slot has its own environment file (<config_dir>/<service>/<port>.env): the new slot starts
with the live slot's configuration (deploy, rollback, restart) or with a new one (reconfigure,
site.yml applying a catalog change), so the serving slot's configuration is never touched.

Every phase is journaled in the state file (state.Move) before the next one changes anything, so
a run killed at any point leaves a `pending` move that the next run reconciles first: finished
when nginx already routes to the new slot and it is healthy, otherwise traffic is put back on the
old slot. Nothing here reloads nginx: the switch is one value in its slot table (fleet_slots.nginx).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import host, lock, nginx, smoke, state
from . import watch as watching
from .state import Move, State

HALT_POINTS = ("start", "canary", "switch", "record", "drain")
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
    config_dir: str = "/etc/fleet"
    watch: watching.Limits = field(default_factory=watching.Limits)  # seconds 0: no watch
    smoke: tuple[smoke.Check, ...] = ()  # the catalog's deploy.smoke; () for none

    def env_file(self, port: int) -> Path:
        return Path(self.config_dir) / self.service / f"{port}.env"

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


@dataclass(frozen=True)
class SlotConfig:
    """A slot's configuration: its environment file's text and the digest state records for it."""

    digest: str
    env: str


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
    watch: dict[str, Any] = field(default_factory=dict)  # watching.Figures.as_dict(); {} when not watched
    canary: dict[str, Any] = field(default_factory=dict)  # a canary step: weight, from_weight, set_epoch


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


def _metrics_baseline(spec: Spec) -> dict[str, Any] | None:
    """nginx's request figures of the service just before the switch (None when unreadable)."""
    try:
        return nginx.metrics(spec.service, window=10, control_socket=spec.control_socket)
    except (nginx.NginxControlError, ValueError):
        return None


def _seen(figures: watching.Figures) -> str:
    p99 = "" if figures.p99_ms is None else f", p99 {figures.p99_ms:.0f} ms"
    return (f"{figures.requests} requests, {figures.errors} 5xx{p99} through nginx, "
            f"{figures.health_failed} of {figures.polls} health polls failed; judged on {figures.judged_on}")


def watch_new_slot(spec: Spec, current: State, port: int, baseline: dict[str, Any] | None,
                   switched_at: float) -> watching.Figures:
    """Watch the new slot for spec.watch.seconds after the switch; on a breach, switch traffic
    back to the old slot at once (it still runs) and return the figures with `revert_s`."""
    from_port = current.pending.from_port if current.pending else current.live_port
    unit = host.unit_of(spec.service, port)
    url = f"http://127.0.0.1:{port}{spec.health_path}"
    figures = watching.watch(
        spec.watch, service=spec.service,
        healthy=lambda: spec.passes(host.get(url, timeout=max(0.5, spec.watch.interval * 4))),
        unit_active=lambda: host.unit_active(unit) == "active",
        read_metrics=lambda: nginx.metrics(spec.service, window=10, control_socket=spec.control_socket),
        baseline=baseline, switched_at=switched_at, judge_traffic=current.maintenance is None)
    if figures.breach:
        nginx.switch(spec.service, from_port, spec.control_socket)
        figures.revert_s = time.monotonic() - switched_at
    return figures


def _watch_or_fail(spec: Spec, current: State, port: int, baseline: dict[str, Any] | None, since: float,
                   outcome: Outcome, clock: Clock, share: str = "", during: str = "after the switch") -> None:
    """Watch the new slot (phase watch) into `outcome`; Failed on a breach, once traffic is back."""
    outcome.phase = "watch"
    figures = watch_new_slot(spec, current, port, baseline, since)
    outcome.watch = figures.as_dict()
    clock.lap("watch")
    if figures.breach:
        back = current.pending.from_port if current.pending else current.live_port
        raise Failed("watch", (
            f"watch: {outcome.to_release} on slot {port}{share} breached its limits {figures.seconds:.2f}s {during}: "
            f"{figures.breach} ({_seen(figures)}); traffic was switched back to slot {back} "
            f"{figures.revert_s:.2f}s {during}"))


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


def smoke_check(spec: Spec, port: int | None) -> None:
    """The smoke checks against slot `port` directly, or through nginx (None) as verify does."""
    if port is not None:
        failure = smoke.first_failure(spec.smoke, f"http://127.0.0.1:{port}", f"against the new slot {port}")
    else:
        base = spec.verify_url[: len(spec.verify_url) - len(spec.health_path)]
        failure = smoke.first_failure(spec.smoke, base, "through nginx", spec.verify_host)
    if failure:
        raise Failed("smoke", failure)


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
         halt_after: str | None = None, config: SlotConfig | None = None) -> Outcome:
    """Move the service to `to_release` on the idle slot, with `config` or else the live slot's
    configuration. The state is saved at every phase. A canary of this move (the pending move in
    phase canary, see canary_step) is finished from its switch on: its new slot already runs."""
    clock = Clock()
    from_port, from_release = current.live_port, current.live_release
    outcome = Outcome("failed", "", "preflight", from_port, current.idle_port(spec.blue_port), from_release,
                      to_release)
    old_unit = host.unit_of(spec.service, from_port)
    resumed = current.pending.weight if current.pending is not None and current.pending.canary else 0
    try:
        if resumed:
            idle = current.pending.to_port if current.pending else 0
        else:
            idle = _start_new_slot(spec, current, to_release, mode, deploy_id, owner, config, outcome, clock,
                                   halt_after)
        new_unit = host.unit_of(spec.service, idle)

        outcome.phase = "switch"
        baseline = _metrics_baseline(spec) if spec.watch.seconds > 0 else None
        nginx.switch(spec.service, idle, spec.control_socket)
        switched_at = time.monotonic()
        if resumed:
            outcome.canary = {"weight": 100, "from_weight": resumed, "set_epoch": time.time()}
        current.advance("switched")
        state.save(current, spec.state_dir)
        clock.lap("switch")
        _halt("switch", halt_after, spec.service)

        outcome.phase = "verify"
        verify(spec, idle)
        clock.lap("verify")

        if spec.smoke:
            outcome.phase = "smoke"
            smoke_check(spec, None)
            clock.lap("smoke_nginx")

        if spec.watch.seconds > 0:
            _watch_or_fail(spec, current, idle, baseline, switched_at, outcome, clock)

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
        _finish(spec, current)
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


def _start_new_slot(spec: Spec, current: State, to_release: str, mode: str, deploy_id: str, owner: str,
                    config: SlotConfig | None, outcome: Outcome, clock: Clock, halt_after: str | None) -> int:
    """Preflight, journal the move, start `to_release` on the idle slot and health-gate it; returns
    the idle port (the move is pending in phase healthy)."""
    from_port, from_release = current.live_port, current.live_release
    if not spec.staged(to_release):
        raise Failed("preflight", f"release {to_release} is not staged in {spec.release_dir(to_release)}")
    idle = preflight(spec, current)

    outcome.phase = "start"
    current.begin(Move(deploy_id, mode, from_port, idle, from_release, to_release, owner=owner,
                       history_before=list(current.history),
                       config=config.digest if config else current.live_config,
                       from_config=current.live_config,
                       from_released=str(current.slots[str(from_port)].get("released") or "")))
    state.save(current, spec.state_dir)
    _configure_slot(spec, idle, from_port, config)
    host.point_slot(spec.slot_link(idle), to_release)
    host.start(host.unit_of(spec.service, idle))
    clock.lap("start")
    _halt("start", halt_after, spec.service)

    outcome.phase = "health gate"
    gate(spec, idle)
    current.advance("healthy")
    state.save(current, spec.state_dir)
    clock.lap("health_gate")

    if spec.smoke:
        outcome.phase = "smoke"
        smoke_check(spec, idle)
        clock.lap("smoke")
    return idle


def canary_step(spec: Spec, current: State, to_release: str, weight: int, deploy_id: str, owner: str,
                halt_after: str | None = None) -> Outcome:
    """One step of a canary: on the first, start `to_release` on the idle slot and health-gate it
    (as move() does); then journal the weight, have nginx send exactly `weight` percent of the
    requests there (the old slot stays live) and watch the new slot for spec.watch.seconds. A
    breach, like any failure, puts every request back on the old slot, stops the new one and (for
    a failed health gate or watch) marks the release bad. move() finishes the canary (weight 100)."""
    clock = Clock()
    pending = current.pending if current.pending is not None and current.pending.canary else None
    outcome = Outcome("failed", "", "preflight", current.live_port, current.idle_port(spec.blue_port),
                      current.live_release, to_release)
    try:
        if pending is None:
            idle = _start_new_slot(spec, current, to_release, "deploy", deploy_id, owner, None, outcome, clock,
                                   halt_after)
        else:
            idle = pending.to_port
        outcome.phase = "canary"
        baseline = _metrics_baseline(spec) if spec.watch.seconds > 0 else None
        from_weight = pending.weight if pending else 0
        current.canary(weight)
        state.save(current, spec.state_dir)
        nginx.set_canary(spec.service, idle, weight, spec.control_socket)
        set_at = time.monotonic()
        outcome.canary = {"weight": weight, "from_weight": from_weight, "set_epoch": time.time()}
        clock.lap("canary")
        _halt("canary", halt_after, spec.service)

        if spec.watch.seconds > 0:
            _watch_or_fail(spec, current, idle, baseline, set_at, outcome, clock,
                           f" with {weight}% of the requests", "into the step")
    except (Failed, nginx.NginxControlError, state.StateError, RuntimeError, OSError) as err:
        outcome.phase = err.phase if isinstance(err, Failed) else outcome.phase
        outcome.durations = clock.durations
        outcome.message = f"{err}. {undo(spec, current, outcome.phase)}"
        return outcome
    outcome.result, outcome.durations, outcome.to_port = "ok", clock.durations, idle
    outcome.message = (f"{spec.service} {to_release} on slot {idle} takes {weight}% of the requests, "
                       f"{current.live_release} on slot {current.live_port} the rest")
    return outcome


def _configure_slot(spec: Spec, port: int, live_port: int, config: SlotConfig | None) -> None:
    """Give the slot at `port` its environment file: `config`'s, or a copy of the live slot's."""
    if config is not None:
        host.write_private(spec.env_file(port), config.env)
        return
    try:
        host.write_private(spec.env_file(port), spec.env_file(live_port).read_text(encoding="utf-8"))
    except FileNotFoundError:  # a unit of an older layout reads no per-slot file
        spec.env_file(port).unlink(missing_ok=True)


def _finish(spec: Spec, current: State) -> None:
    """The old slot is stopped: clear the journal and remove its environment (old secrets)."""
    old_port = current.pending.from_port if current.pending else 0
    current.finish()
    state.save(current, spec.state_dir)
    spec.env_file(old_port).unlink(missing_ok=True)


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
    if move_.phase in ("canary", "switched") or phase in ("canary", "switch", "verify", "watch"):
        try:
            nginx.switch(spec.service, move_.from_port, spec.control_socket)
        except nginx.NginxControlError as err:
            notes.append(f"putting nginx back failed too: {err}")
    host.systemctl("stop", new_unit, check=False)
    host.systemctl("reset-failed", new_unit, check=False)
    spec.slot_link(move_.to_port).unlink(missing_ok=True)
    spec.env_file(move_.to_port).unlink(missing_ok=True)
    bad = phase in ("health gate", "smoke", "verify", "watch")
    current.abandon(bad=bad)
    state.save(current, spec.state_dir)
    return " ".join([f"Traffic stays on {move_.from_release} (slot {move_.from_port})"
                     + (", release marked bad on this host." if bad else "."), *notes])


# -- recovery ----------------------------------------------------------------------------------
def reconcile(spec: Spec, current: State) -> str:
    """Resolve a move a killed run left pending; returns what was found and done ("" if none).

    A canary left between its steps (phase canary: the old slot is live, the new one has a share
    of the requests) is taken back, whatever the new slot's health: every request goes to the old
    slot again and the new one is stopped. Only the operator's run decides to go further."""
    move_ = current.pending
    if move_ is None:
        return ""
    found = (f"found {move_.mode} {move_.deploy_id} by {move_.owner or 'unknown'} interrupted after its "
             f"{move_.phase}{f' {move_.weight}%' if move_.canary else ''} phase ({move_.from_release} slot "
             f"{move_.from_port} -> {move_.to_release} slot {move_.to_port})")
    routed = nginx.route(spec.service, spec.control_socket)
    new_unit, old_unit = host.unit_of(spec.service, move_.to_port), host.unit_of(spec.service, move_.from_port)
    new_ok = host.unit_active(new_unit) == "active" and _healthy(spec, move_.to_port)
    if routed == move_.to_port and new_ok:
        if move_.phase in ("healthy", "canary", "switched"):
            current.commit()
            state.save(current, spec.state_dir)
        host.enable_at_boot(new_unit, old_unit)
        current.advance("draining")
        state.save(current, spec.state_dir)
        drain(spec, old_unit)
        _finish(spec, current)
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
    elif move_.canary:
        nginx.clear_canary(spec.service, spec.control_socket)
    if move_.phase in ("recorded", "draining"):
        current.revert()
    host.enable_at_boot(old_unit, new_unit)
    host.systemctl("stop", new_unit, check=False)
    spec.slot_link(move_.to_port).unlink(missing_ok=True)
    spec.env_file(move_.to_port).unlink(missing_ok=True)
    current.abandon()
    state.save(current, spec.state_dir)
    why = ("was not healthy" if routed == move_.to_port else
           f"had {move_.weight}% of the requests in an unfinished canary" if move_.canary else "never got traffic")
    return (f"{found}: slot {move_.to_port} {why}, "
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


def _lock(spec: Spec, deploy_id: str, owner: str, lock_ttl: float, break_lock: bool, lock_wait: float,
          refused: str) -> dict[str, Any] | Outcome:
    """Take the service's deploy lock: the lock it broke ({} if none), or the failed Outcome."""
    try:
        return lock.acquire(spec.service, deploy_id, owner, lock_ttl, break_lock, spec.lock_dir, wait=lock_wait)
    except lock.LockHeld as err:
        return Outcome("failed", f"{err}; refusing {refused}. If that deploy is dead, run again with "
                                 "-e break_lock=true to break it on purpose.", "lock")


def run(spec: Spec, *, mode: str, release: str | None, deploy_id: str, owner: str, hostname: str,
        lock_ttl: float, break_lock: bool, audit_log: str | None, retry_bad_release: bool = False,
        halt_after: str | None = None, lock_wait: float = 0) -> Outcome:
    """Lock, reconcile, move, unlock, audit: one host's whole deploy, rollback or restart. A lock
    taken meanwhile (site.yml converging the service) is waited for up to `lock_wait` seconds."""
    started = time.time()
    broken = _lock(spec, deploy_id, owner, lock_ttl, break_lock, lock_wait, f"to {mode}")
    if isinstance(broken, Outcome):
        return broken
    try:
        outcome = _run_locked(spec, mode, release, deploy_id, owner, retry_bad_release, halt_after)
        outcome.broke_lock = broken
    finally:
        lock.release(spec.service, deploy_id, spec.lock_dir)
    if audit_log and outcome.result != "unchanged":
        write_audit(audit_log, outcome, spec.service, mode, deploy_id, owner, hostname, started,
                    extra={"release_sha256": release_sha256(spec, outcome.to_release)})
    return outcome


def release_sha256(spec: Spec, release: str) -> str:
    """The sha256 of the archive `release` was unpacked from, as its marker (.fleet-release) says;
    '' when unknown (no such release, or unpacked before the marker recorded it)."""
    try:
        marker = json.loads((spec.release_dir(release) / ".fleet-release").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(marker.get("sha256") or "") if isinstance(marker, dict) and release else ""


def _run_locked(spec: Spec, mode: str, release: str | None, deploy_id: str, owner: str,
                retry_bad_release: bool, halt_after: str | None) -> Outcome:
    try:
        current = load(spec)
        if _own_canary(current, deploy_id, release) and mode == "deploy":
            return move(spec, current, str(release), mode, deploy_id, owner, halt_after)  # its weight 100
        reconciled = reconcile(spec, current)
    except (Failed, nginx.NginxControlError, state.StateError) as err:
        return Outcome("failed", str(err), getattr(err, "phase", "reconcile"))
    # A rollback goes to `release` when the run chose it fleet-wide, else to this host's previous one.
    target = (release if mode == "deploy" else (release or current.rollback_target()) if mode == "rollback"
              else current.live_release)
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
        live.message = (f"{spec.service} {target} was marked bad on this host (it failed its health gate, "
                        "smoke checks, verification or watch); "
                        "pass -e retry_bad_release=true to try it again")
        return live
    outcome = move(spec, current, target, mode, deploy_id, owner, halt_after)
    outcome.reconciled = reconciled
    return outcome


def _own_canary(current: State, deploy_id: str, release: str | None) -> bool:
    """The pending move is a canary of this deploy, to `release`: its next step or its end."""
    move_ = current.pending
    return move_ is not None and move_.canary and move_.deploy_id == deploy_id and move_.to_release == release


# How long a canary's lock waits for its next step at most (the run's lock_ttl, when shorter).
CANARY_HANDOVER = 3600.0


def canary(spec: Spec, *, release: str, weight: int, deploy_id: str, owner: str, hostname: str, lock_ttl: float,
           break_lock: bool, audit_log: str | None, retry_bad_release: bool = False, halt_after: str | None = None,
           lock_wait: float = 0) -> Outcome:
    """One step of a canary of `release` on this host (weight 1 to 99; its end, 100, is run() of
    the same deploy), or, with weight 0, the canary taken back: every request on the old slot
    again and the new slot stopped. Between the steps the lock stays this deploy's (handed over,
    without a process, for lock_ttl seconds at most): other runs are refused until the next
    step, the end or the take-back; once it expires, the next run takes it over and reconciles
    (takes the canary back). One audit line per step."""
    started = time.time()
    broken = _lock(spec, deploy_id, owner, lock_ttl, break_lock, lock_wait, "a canary step")
    if isinstance(broken, Outcome):
        return broken
    outcome = Outcome("failed", "", "canary")
    try:
        outcome = _canary_locked(spec, release, weight, deploy_id, owner, retry_bad_release, halt_after)
        outcome.broke_lock = broken
    finally:
        if outcome.result == "ok" and weight > 0:
            lock.hand_over(spec.service, deploy_id, min(float(lock_ttl), CANARY_HANDOVER), spec.lock_dir)
        else:
            lock.release(spec.service, deploy_id, spec.lock_dir)
    if audit_log and outcome.result != "unchanged":
        write_audit(audit_log, outcome, spec.service, "canary", deploy_id, owner, hostname, started)
    return outcome


def _canary_locked(spec: Spec, release: str, weight: int, deploy_id: str, owner: str, retry_bad_release: bool,
                   halt_after: str | None) -> Outcome:
    try:
        current = load(spec)
        ours = _own_canary(current, deploy_id, release)
        if weight == 0:
            if not ours:
                return Outcome("unchanged", f"{spec.service}: no canary of {deploy_id} here", "", current.live_port,
                               current.live_port, current.live_release, current.live_release)
            move_ = current.pending
            assert move_ is not None
            taken = Outcome("ok", "", "canary", move_.from_port, move_.to_port, move_.from_release, move_.to_release,
                            canary={"weight": 0, "from_weight": move_.weight, "set_epoch": time.time()})
            taken.message = f"canary taken back from {move_.weight}%: {undo(spec, current, 'canary')}"
            return taken
        reconciled = "" if ours else reconcile(spec, current)
    except (Failed, nginx.NginxControlError, state.StateError) as err:
        return Outcome("failed", str(err), getattr(err, "phase", "reconcile"))
    live = Outcome("unchanged", "", "", current.live_port, current.live_port, current.live_release, release,
                   reconciled=reconciled)
    if not ours and release == current.live_release:
        live.message = f"{spec.service} {release} is already live on slot {current.live_port}"
        return live
    if not ours and release in current.bad_releases and not retry_bad_release:
        live.result, live.phase = "failed", "plan"
        live.message = (f"{spec.service} {release} was marked bad on this host (it failed its health gate, "
                        "verification or watch); pass -e retry_bad_release=true to try it again")
        return live
    if current.weight is not None and weight <= current.weight:
        live.result, live.phase = "failed", "canary"
        live.message = f"{spec.service}: canary steps only go up: {weight}% after {current.weight}%"
        return live
    outcome = canary_step(spec, current, release, weight, deploy_id, owner, halt_after)
    outcome.reconciled = reconciled
    return outcome


def converge(spec: Spec, *, release: str, config: SlotConfig, deploy_id: str, owner: str, hostname: str,
             lock_wait: float, lock_ttl: float, audit_log: str | None, allow_move: bool, check: bool) -> Outcome:
    """site.yml's call for one service on this host: bring it to the catalog's configuration
    without ever restarting a serving slot in place.

    Under the service's deploy lock (a running deploy is waited for, up to `lock_wait` seconds):
    an interrupted move is reconciled first; a service without state starts `release` on its blue
    slot ("installed"); a live slot that is down is started in place ("started"); a configuration
    change of a serving slot goes through a `reconfigure` move to the idle slot ("reconfigured")
    when `allow_move`, and is otherwise reported ("move needed") for a later, batched call.
    """
    if check:
        return _converge_plan(spec, state.load(spec.service, spec.state_dir), config)
    started = time.time()
    try:
        broken = lock.acquire(spec.service, deploy_id, owner, lock_ttl, False, spec.lock_dir, wait=lock_wait)
    except lock.LockHeld as err:
        return Outcome("failed", f"{err}; site.yml waited {lock_wait:g}s for it to be released and changed nothing "
                                 f"on {spec.service}. Run it again when that deploy has finished.", "lock")
    try:
        outcome = _converge_locked(spec, release, config, deploy_id, owner, allow_move)
        outcome.broke_lock = broken
    except (Failed, nginx.NginxControlError, state.StateError, RuntimeError, OSError) as err:
        outcome = Outcome("failed", f"{spec.service}: {err}", getattr(err, "phase", "converge"))
    finally:
        lock.release(spec.service, deploy_id, spec.lock_dir)
    if audit_log and (outcome.result not in ("unchanged", "move needed") or outcome.reconciled):
        # The audit's result is ok or failed, as for a deploy; the mode says what was done.
        audited = replace(outcome, result="failed" if outcome.result == "failed" else "ok")
        mode = CONVERGE_MODES.get(outcome.result, "reconcile")  # nothing else done: the reconcile's line
        write_audit(audit_log, audited, spec.service, mode, deploy_id, owner, hostname, started)
    return outcome


# The audit log's mode for what site.yml did to a service.
CONVERGE_MODES = {"installed": "install", "started": "start", "reconfigured": "reconfigure", "repaired": "repair"}


def _converge_plan(spec: Spec, current: State | None, config: SlotConfig) -> Outcome:
    """Check mode: what converge would do, changing nothing."""
    if current is None:
        return Outcome("installed", f"would start {spec.service} on slot {spec.blue_port}")
    live = current.live_port
    todo = Outcome("unchanged", f"{spec.service} {current.live_release} is live on slot {live}", "",
                   live, live, current.live_release, current.live_release)
    if current.pending is not None:
        todo.reconciled = f"would reconcile the interrupted {current.pending.mode} {current.pending.deploy_id}"
    if host.unit_active(host.unit_of(spec.service, live)) != "active":
        todo.result, todo.message = "started", f"would start the live slot {live} of {spec.service}, which is down"
    elif current.live_config != config.digest:
        todo.result, todo.to_port = "move needed", current.idle_port(spec.blue_port)
        todo.message = (f"configuration of {spec.service} changed: would move it to slot {todo.to_port} "
                        "with the new configuration")
    return todo


def _converge_locked(spec: Spec, release: str, config: SlotConfig, deploy_id: str, owner: str,
                     allow_move: bool) -> Outcome:
    current = state.load(spec.service, spec.state_dir)
    if current is None:
        current = state.initial(spec.service, spec.blue_port, release, config.digest)
        _start_in_place(spec, current, config)
        return Outcome("installed", f"{spec.service} {release} started on slot {spec.blue_port}", "start",
                       0, spec.blue_port, "", release)
    reconciled = reconcile(spec, current)
    live, idle = current.live_port, current.idle_port(spec.blue_port)
    outcome = Outcome("unchanged", f"{spec.service} {current.live_release} is live on slot {live}", "",
                      live, live, current.live_release, current.live_release, reconciled=reconciled)
    if host.unit_active(host.unit_of(spec.service, live)) != "active":
        # Down, so serving nobody: starting it in place (with the catalog's configuration) is the fix.
        _start_in_place(spec, current, config)
        outcome.result, outcome.phase = "started", "start"
        outcome.message = f"the live slot {live} of {spec.service} was down and is started again"
    elif current.live_config != config.digest:
        if not allow_move:
            outcome.result, outcome.to_port = "move needed", idle
            outcome.message = (f"configuration of {spec.service} changed: it moves to slot {idle} with the new "
                               "configuration in the batched play that follows")
            return outcome
        moved = move(spec, current, current.live_release, "reconfigure", deploy_id, owner, config=config)
        moved.reconciled = reconciled
        if moved.result == "ok":
            moved.result = "reconfigured"
            moved.message = f"{spec.service} {current.live_release} moved to slot {idle} with its new configuration"
        return moved
    elif any([_ensure_slot(spec, current), host.write_private(spec.env_file(live), config.env),
              _ensure_route(spec, current)]):
        outcome.result = "repaired"
        outcome.message += "; its slot link, environment file, boot enablement or nginx route were put back"
    return outcome


def _ensure_slot(spec: Spec, current: State) -> bool:
    """The live slot's link points at its release and it alone starts at boot; True if repaired."""
    live, idle = current.live_port, current.idle_port(spec.blue_port)
    link = spec.slot_link(live)
    repaired = False
    if not link.is_symlink() or os.readlink(link) != f"../releases/{current.live_release}":
        link.parent.mkdir(parents=True, exist_ok=True)
        host.point_slot(link, current.live_release)
        repaired = True
    unit, idle_unit = host.unit_of(spec.service, live), host.unit_of(spec.service, idle)
    if not host.enabled(unit) or host.enabled(idle_unit):
        host.enable_at_boot(unit, idle_unit)
        repaired = True
    return repaired


def _start_in_place(spec: Spec, current: State, config: SlotConfig) -> None:
    """Start the live slot, which serves nothing now, with `config`; health-gate it."""
    if not spec.staged(current.live_release):
        where = spec.release_dir(current.live_release)
        raise Failed("start", f"release {current.live_release} is not staged in {where}")
    host.write_private(spec.env_file(current.live_port), config.env)
    current.configure(config.digest)
    state.save(current, spec.state_dir)
    _ensure_slot(spec, current)
    host.start(host.unit_of(spec.service, current.live_port))
    gate(spec, current.live_port)
    _ensure_route(spec, current)


def _ensure_route(spec: Spec, current: State) -> bool:
    """nginx routes the service to the state's live slot (it may not, after a lost state file);
    True if it was put back. A service nginx does not know yet is left to nginx's next reload,
    which reads the state."""
    try:
        routed = nginx.route(spec.service, spec.control_socket)
    except nginx.NginxControlError:
        return False  # nginx not set up yet
    if routed is None or routed == current.live_port:
        return False
    nginx.switch(spec.service, current.live_port, spec.control_socket)
    return True


def retire(keep: list[str], *, state_dir: str, lock_dir: str, config_dir: str, service_root: str, unit_dir: str,
           deploy_id: str, owner: str, hostname: str, lock_wait: float, audit_log: str | None,
           check: bool) -> list[str]:
    """Stop and remove every service that has a state here but is not in `keep` (the catalog
    dropped it, or moved it off this host): both slots stopped and disabled, its template unit,
    environment files, releases and slot links, state and lock removed; its logs stay. Returns one
    line per retired service (what would be retired, in check mode)."""
    done = []
    for name, current in state.load_all(state_dir).items():
        if name in keep or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            continue
        if check:
            done.append(f"would retire {name}")
            continue
        started = time.time()
        lock.acquire(name, deploy_id, owner, 600, False, lock_dir, wait=lock_wait)
        ports = sorted({int(p) for p in current.slots} | {current.live_port}) if isinstance(current, State) else []
        for unit in [host.unit_of(name, port) for port in ports] + _enabled_instances(unit_dir, name):
            host.systemctl("disable", "--no-reload", unit, check=False)
            host.systemctl("stop", unit, check=False)
        Path(unit_dir, f"{name}@.service").unlink(missing_ok=True)
        host.systemctl("daemon-reload", check=False)
        for tree in (Path(config_dir, name), Path(service_root, name)):
            shutil.rmtree(tree, ignore_errors=True)
        state.path_of(name, state_dir).unlink(missing_ok=True)
        lock.path_of(name, lock_dir).unlink(missing_ok=True)
        line = (f"retired {name}: slots {', '.join(map(str, ports)) or '?'} stopped and disabled, its unit, "
                "environment, releases and state removed (its logs are kept)")
        if audit_log:
            live = current.live_port if isinstance(current, State) else 0
            release = current.live_release if isinstance(current, State) else ""
            write_audit(audit_log, Outcome("ok", line, "retire", live, 0, release, ""), name, "retire", deploy_id,
                        owner, hostname, started)
        done.append(line)
    return done


def _enabled_instances(unit_dir: str, name: str) -> list[str]:
    return sorted(p.name for p in Path(unit_dir).glob(f"*.wants/{name}@*.service"))


def write_audit(path: str, outcome: Outcome, service: str, mode: str, deploy_id: str, owner: str,
                hostname: str, started: float, extra: dict[str, Any] | None = None) -> None:
    """Append the run's audit line; `extra` adds fields of its own (a maintenance switch's reason)."""
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "who": owner, "deploy_id": deploy_id, "host": hostname or socket.gethostname(), "service": service,
        "mode": mode, "from_release": outcome.from_release, "to_release": outcome.to_release,
        "from_slot": outcome.from_port, "to_slot": outcome.to_port, "result": outcome.result,
        "phase": outcome.phase, "message": outcome.message, "seconds": round(time.time() - started, 3),
        "durations": outcome.durations, "broke_lock": outcome.broke_lock, "reconciled": outcome.reconciled,
    }
    if outcome.watch:
        line["watch"] = outcome.watch
    if outcome.canary:
        line["canary"] = outcome.canary
    line.update(extra or {})
    data = memoryview((json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        # Two deploys on one host append at once. O_APPEND alone keeps a write whole only where
        # the filesystem serialises writes (not NFS, not a short write): the lock keeps each line
        # whole everywhere, for every writer and reader that takes it (closing the fd releases it).
        fcntl.flock(fd, fcntl.LOCK_EX)
        while data:  # one write, unless the kernel takes only part of it
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
