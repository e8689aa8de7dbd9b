"""Maintenance mode of one service on this host: nginx answers it with 503, a Retry-After header and
its maintenance page, without a reload; maintenance.yml's call (the fleet_slot module).

The deploy state records it (state.State.maintenance, under the service's deploy lock so that no
deploy overwrites it), and nginx's slot table holds it (a value in its shared dict, set through
the control socket): the state is the truth, which nginx's Lua reads at every start and reload, so
maintenance survives both and a reboot. Switching it is one state write, one control call and one
audit line; a switch that changes nothing (already on with the same Retry-After, already off)
writes no audit line, but still puts nginx's table back in line with the state.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import lock, nginx, state
from .engine import Outcome, write_audit


@dataclass
class Switch:
    """What a maintenance switch did (or would do, in check mode)."""

    result: str  # changed, unchanged, failed
    message: str
    maintenance: dict[str, Any] | None = None  # the state's record after the switch
    nginx_was: int | None = None  # nginx's Retry-After for the service before (None: not in maintenance)
    changes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def switch(service: str, on: bool, *, retry_after: int, reason: str, owner: str, deploy_id: str,
           hostname: str = "", audit_log: str | None = None, state_dir: str = state.STATE_DIR,
           lock_dir: str = lock.LOCK_DIR, control_socket: str = nginx.CONTROL_SOCKET, lock_wait: float = 0,
           check: bool = False) -> Switch:
    """Turn maintenance of `service` on (with `retry_after` seconds) or off on this host."""
    if check:
        return _plan(service, on, retry_after, reason, state_dir, control_socket)
    started = time.time()
    try:
        broken = lock.acquire(service, deploy_id, owner, 120, False, lock_dir, wait=lock_wait)
    except lock.LockHeld as err:
        return Switch("failed", f"{err}; maintenance of {service} left as it was after waiting {lock_wait:g}s. "
                                "Run it again when that deploy has finished.")
    try:
        done = _switch_locked(service, on, retry_after, reason, owner, state_dir, control_socket)
    finally:
        lock.release(service, deploy_id, lock_dir)
    if audit_log and done.result != "unchanged":
        current = state.load(service, state_dir)
        port, release = (current.live_port, current.live_release) if current else (0, "")
        record = done.maintenance or {}
        write_audit(audit_log, Outcome("ok" if done.result == "changed" else "failed", done.message, "maintenance",
                                       port, port, release, release, broke_lock=broken),
                    service, f"maintenance-{'on' if on else 'off'}", deploy_id, owner, hostname, started,
                    extra={"reason": reason, "retry_after": record.get("retry_after") if on else None})
    return done


def _nginx_value(service: str, control_socket: str) -> int | None:
    try:
        return nginx.maintenance(control_socket).get(service)
    except nginx.NginxControlError as err:
        if ": 404 " in str(err):  # fleet_slots.lua from before maintenance mode
            raise nginx.NginxControlError(f"{err}: this host's nginx has no maintenance mode yet; run site.yml "
                                          "(--tags nginx) on it first") from err
        raise


def _changes(current: state.State, on: bool, retry_after: int, reason: str, routed: int | None) -> list[str]:
    """What must change, in words: the state's record, nginx's table."""
    was = current.maintenance
    todo = []
    if on and was is None:
        todo.append(f"record maintenance (Retry-After {retry_after}s) in the deploy state")
    elif on and was is not None and (was["retry_after"] != retry_after or was["reason"] != reason):
        todo.append(f"update the recorded maintenance (Retry-After {was['retry_after']}s -> {retry_after}s)")
    elif not on and was is not None:
        todo.append(f"clear the maintenance recorded since {was['since']} by {was['by'] or '?'}")
    if on and routed != retry_after:
        todo.append(f"answer {current.service} with 503 and its maintenance page in nginx (Retry-After "
                    f"{retry_after}s)")
    elif not on and routed is not None:
        todo.append(f"route {current.service} to its live slot {current.live_port} in nginx again")
    return todo


def _load(service: str, state_dir: str) -> state.State:
    current = state.load(service, state_dir)
    if current is None:
        raise state.StateError(f"{service} has no deploy state ({state.path_of(service, state_dir)}): run "
                               "site.yml on this host first")
    return current


def _plan(service: str, on: bool, retry_after: int, reason: str, state_dir: str, control_socket: str) -> Switch:
    try:
        current = _load(service, state_dir)
        routed = _nginx_value(service, control_socket)
    except (state.StateError, nginx.NginxControlError) as err:
        return Switch("failed", str(err))
    todo = _changes(current, on, retry_after, reason, routed)
    word = "on" if on else "off"
    return Switch("changed" if todo else "unchanged",
                  f"would turn maintenance of {service} {word}: {'; '.join(todo)}" if todo
                  else f"maintenance of {service} is already {word}", current.maintenance, routed, todo)


def _switch_locked(service: str, on: bool, retry_after: int, reason: str, owner: str, state_dir: str,
                   control_socket: str) -> Switch:
    current: state.State | None = None
    try:
        current = _load(service, state_dir)
        routed = _nginx_value(service, control_socket)
        todo = _changes(current, on, retry_after, reason, routed)
        word = "on" if on else "off"
        if not todo:
            return Switch("unchanged", f"maintenance of {service} is already {word}", current.maintenance, routed)
        # The state first: if nginx is not told (a crash right here), its next start or reload reads it.
        if on:
            current.start_maintenance(owner, reason, retry_after)
        else:
            current.end_maintenance()
        state.save(current, state_dir)
        if on:
            nginx.set_maintenance(service, retry_after, control_socket)
        elif routed is not None:
            nginx.clear_maintenance(service, control_socket)
    except (state.StateError, nginx.NginxControlError, OSError) as err:
        return Switch("failed", f"{service}: {err}", current.maintenance if current else None)
    what = (f"nginx answers {service} with 503 and its maintenance page (Retry-After {retry_after}s)" if on
            else f"nginx routes {service} to its live slot {current.live_port} again")
    return Switch("changed", f"maintenance of {service} {word}: {what}", current.maintenance, routed, todo)
