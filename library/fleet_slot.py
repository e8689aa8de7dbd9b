#!/usr/bin/python3
"""Ansible module: one call into fleet's slot engine on the host (the fleet_slots package)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_slot
short_description: Read, reconcile or move a service between its two slots, in one call on the host
description:
  - A thin wrapper of the C(fleet_slots) package (module_utils, the same code the slot_engine role
    installs on every host for the fleet-slot command, the local fact and the health checker), which
    owns the deploy state, the deploy lock, the nginx slot table and the switch transaction. The
    package travels with every call, so the host always runs the controller's version.
  - O(action=plan) reads the state and the lock; a move a killed run left pending is reconciled
    (and audited) when no other deploy holds the lock, or O(break_lock=true) (not in check mode).
  - O(action=run) also removes all but the newest C(release.keep) releases after a move, never one
    a slot points at or the rollback target.
  - O(action=run) takes the lock, reconciles, moves the service to O(release) (O(mode=deploy)),
    back to O(release) or else to the release before the live one (O(mode=rollback)) or restarts
    the live release on the other slot (O(mode=restart)), releases the lock and appends the audit
    line. Nothing reloads nginx.
  - O(action=canary) is one step of a canary (hot_deploy.yml -e canary=5,25,100) on this host: under the
    deploy lock, the first step starts O(release) on the idle slot and health-gates it; each step then has
    nginx send exactly O(weight) percent of the service's requests there (no reload; the old slot stays live)
    and watches it for O(watch) seconds, taking the canary back on a breach (every request on the old slot,
    the new one stopped, the release marked bad). Between steps the lock stays this deploy's. O(weight=0)
    takes this deploy's canary back; its end (100) is O(action=run) of the same O(deploy_id).
  - O(action=converge) is site.yml's call for one service. Under the deploy lock (waiting up to
    O(lock_wait) seconds for a running deploy), it reconciles an interrupted move, starts a service
    without state on its blue slot with O(release), starts a live slot that is down, and applies a
    changed configuration (O(env) and the unit file O(unit_file)) to a serving slot only through a
    C(reconfigure) move to the idle slot when O(allow_move), else returns RV(result=move needed).
  - O(action=retire) stops, disables and removes every service with a state on the host that is
    not in O(keep) (units, environment files, releases, slot links, state; logs are kept), with
    an audit line each.
  - O(action=status) reports, for each service of O(services) (and with O(include_unlisted) each
    other service with a state on the host), its state, nginx's route, both slots' units, the live
    slot's health now (O(probe_timeout)), the deploy lock and the newest line of O(audit_log); it
    changes nothing (status.yml).
  - O(action=maintenance) turns the maintenance mode of O(service) on (O(maintenance=true): nginx
    answers it with 503, C(Retry-After) of O(retry_after) seconds and its maintenance page) or off,
    without an nginx reload: recorded in the deploy state under the deploy lock (waiting up to
    O(lock_wait) seconds), set in nginx's slot table, and audited with O(reason). Check mode says
    what would change.
  - O(action=audit) returns the newest O(limit) raw lines of O(audit_log) and its rotated copies
    about O(services) (every line when O(services) is empty), newest first, skipping copies last
    written before O(since_epoch); it changes nothing (audit.yml parses and merges them).
options:
  action: {type: str, required: true, choices: [plan, run, canary, converge, retire, status, audit, maintenance],
           description: What to do.}
  weight: {type: int, description: "canary: the new slot's share of the requests, percent (1 to 99), or 0 to take
      the canary back."}
  maintenance: {type: bool, description: "maintenance: true to turn it on, false to turn it off."}
  retry_after: {type: int, default: 600, description: "maintenance: the Retry-After nginx sends, in seconds."}
  reason: {type: str, default: "", description: "maintenance: why, for the audit line and the status table."}
  services: {type: list, elements: dict, default: [], description: "status, audit: entries of the validated
      catalog (fleet_catalog); audit reads only their names."}
  include_unlisted: {type: bool, default: false, description: "status: also report services with a state here
      that are not in O(services)."}
  probe_timeout: {type: float, default: 2, description: "status: seconds the live slot's health answer may take."}
  since_epoch: {type: float, default: 0, description: "audit: skip rotated copies last written before this time."}
  limit: {type: int, default: 0, description: "audit: the most lines returned (0: all)."}
  keep: {type: list, elements: str, default: [], description: "retire: the services this host runs."}
  unit_dir: {type: path, default: /etc/systemd/system, description: "retire: where the template units are."}
  service: {type: dict, description: The service's entry of the validated catalog (fleet_catalog).}
  release: {type: str, description: "The release to move to (run), to start a service without state on
      (converge), or whose presence on the host to report (plan: RV(staged))."}
  mode: {type: str, default: deploy, choices: [deploy, rollback, restart], description: The kind of move.}
  env: {type: str, default: "", description: "converge: the environment file's text (secrets: never logged)."}
  unit_file: {type: path, description: "converge: the service's template unit; with O(env), the configuration digest."}
  allow_move: {type: bool, default: false, description: "converge: apply a configuration change through a move."}
  lock_wait: {type: float, default: 0, description: Seconds to wait for another run's lock before failing.}
  deploy_id: {type: str, default: "", description: Identifies this run (lock, journal, audit).}
  owner: {type: str, default: "", description: Who runs it (user@controller).}
  hostname: {type: str, default: "", description: The inventory name, for the audit line.}
  lock_ttl: {type: int, default: 1800, description: Seconds until the lock counts as stale.}
  break_lock: {type: bool, default: false, description: Break a lock held by another deploy.}
  retry_bad_release: {type: bool, default: false, description: Try a release marked bad on the host.}
  health:
    type: dict
    default: {}
    description: Overrides of the catalog's health settings, in seconds; unset ones take the catalog's.
    suboptions:
      timeout: {type: float, description: Seconds the new slot may take to pass its health check.}
      interval: {type: float, description: Seconds between health polls.}
      start_grace: {type: float, description: Seconds before the first health poll.}
  drain_timeout: {type: float, description: Overrides the catalog's drain_timeout.}
  verify_timeout: {type: float, default: 15, description: How long nginx may take to serve the new slot.}
  watch: {type: float, description: "Overrides the catalog's C(deploy.watch): seconds the new slot is watched after
      the switch (its health, the service's 5xx share and p99 through nginx) while the old slot still runs; a
      breach switches traffic back and marks the release bad on the host. 0: no watch."}
  smoke: {type: list, elements: dict, description: "Overrides the catalog's C(deploy.smoke) (entries of method, path,
      status, body; [] for none): requests the new slot must answer as expected, before the switch (a failure
      aborts as a failed health gate does) and through nginx after it (a failure switches traffic back). A
      failure marks the release bad on the host."}
  audit_log: {type: path, default: /var/log/fleet/deploy.log, description: One JSON line per run and host.}
  halt_after: {type: str, choices: [start, canary, switch, record, drain], description: "Drill only. Freeze the
      engine after this phase, as if the controller died there."}
  service_root: {type: path, default: /opt/fleet, description: Releases and slot links.}
  state_dir: {type: path, default: /var/lib/fleet/state, description: Deploy state files.}
  lock_dir: {type: path, default: /var/lib/fleet/locks, description: Deploy lock files.}
  control_socket: {type: path, default: /run/fleet-nginx/control.sock, description: nginx's slot table.}
  config_dir: {type: path, default: /etc/fleet, description: "Per-slot environment files:
      <config_dir>/<service>/<port>.env."}
"""

EXAMPLES = r"""
- name: Deploy main-api 1.2.0 on this host
  fleet_slot:
    action: run
    service: "{{ fleet_catalog['main-api'] }}"
    release: 1.2.0
    deploy_id: "{{ deploy_id }}"
    owner: alice@laptop
"""

RETURN = r"""
result: {type: str, description: "run: ok, failed or unchanged. converge: installed, started, reconfigured,
    repaired, move needed, unchanged or failed."}
message: {type: str, description: What happened, or what failed and where traffic is.}
phase: {type: str, description: The phase that failed (or ran last).}
durations: {type: dict, description: "Seconds per phase (start, health_gate, smoke, switch, verify, smoke_nginx,
    watch, record, drain)."}
watch: {type: dict, description: "run, converge: what the watch saw (seconds, requests, errors, p99_ms, polls,
    health_failed, judged_on, metrics_error) and, on a breach, why (breach) and the seconds from the switch
    to traffic back on the old slot (revert_s); empty when there was no watch."}
reconciled: {type: str, description: An interrupted move found and what was done about it.}
canary: {type: dict, description: "canary, and run ending a canary: the step's weight (0 when taken back, 100 at its
    end), from_weight and set_epoch (when nginx took the new weight); empty otherwise."}
state: {type: dict, description: The service's deploy state after the call.}
staged: {type: bool, description: "plan: whether O(release) is unpacked on the host."}
retired: {type: list, description: "retire: one line per service retired."}
services: {type: dict, description: "status: per service: in_catalog, state, state_error, live_port,
    idle_port, routed, lock, units (port: systemctl is-active), health (port, status, ms, ok, error),
    last_audit (raw line), requests (nginx's request figures, fleet_slots.metrics.summary; null when not
    counted)."}
routes: {type: dict, description: "status: nginx's slot table, service: port."}
routes_error: {type: str, description: "status: why nginx's slot table could not be read."}
metrics_error: {type: str, description: "status: why nginx's request figures could not be read."}
lines: {type: list, description: "audit: raw audit lines, newest first."}
maintenance: {type: dict, description: "maintenance: the state's record after the call (since, by, reason,
    retry_after), null when off."}
changes: {type: list, description: "maintenance: what changed (or would, in check mode)."}
"""

from dataclasses import asdict
from hashlib import sha256
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

# host and watch (imported by engine) and metrics (by status) are named here because Mitogen ships just the
# module_utils a module names itself, not those its module_utils import relatively.
from ansible.module_utils.fleet_slots import (  # noqa: F401
    audit,
    engine,
    host,
    lock,
    maintenance,
    metrics,
    nginx,
    smoke,
    state,
    status,
    watch,
)


def spec_of(p: dict) -> engine.Spec:
    svc, health = p["service"], p["service"]["health"]
    overrides = {k: v for k, v in (p["health"] or {}).items() if v not in (None, "")}
    location = svc["nginx"]["location"].rstrip("/")
    return engine.Spec(
        service=svc["name"], blue_port=int(svc["blue_port"]),
        health_path=health["path"], health_status=int(health["status"]), health_body=health.get("body") or "",
        health_timeout=float(overrides.get("timeout", health["timeout"])),
        health_interval=float(overrides.get("interval", health["interval"])),
        health_start_grace=float(overrides.get("start_grace", health["start_grace"])),
        drain_timeout=float(p["drain_timeout"] or svc["drain_timeout"]),
        verify_url="http://127.0.0.1" + ("" if svc["nginx"]["server_names"] else location) + health["path"],
        verify_host=(svc["nginx"]["server_names"] or [None])[0], verify_timeout=p["verify_timeout"],
        keep=int(svc["release"]["keep"]),
        watch=watch.limits_of(svc.get("deploy"), None if p["watch"] in (None, "") else float(p["watch"])),
        smoke=smoke.checks_of((svc.get("deploy") or {}).get("smoke") if p["smoke"] is None else p["smoke"]),
        service_root=p["service_root"], state_dir=p["state_dir"], lock_dir=p["lock_dir"],
        control_socket=p["control_socket"], config_dir=p["config_dir"],
    )


def config_of(p: dict) -> engine.SlotConfig:
    """The slot configuration site.yml wants: the environment's text; the digest covers the unit too."""
    unit = Path(p["unit_file"]).read_bytes() if p["unit_file"] and Path(p["unit_file"]).exists() else b""
    return engine.SlotConfig(sha256(unit + b"\0" + p["env"].encode()).hexdigest(), p["env"])


def check_of(svc: dict) -> engine.Spec:
    """What status reads of a catalog service: its slots and its health check."""
    health = svc.get("health") or {}
    return engine.Spec(service=svc["name"], blue_port=int(svc["blue_port"]),
                       health_path=health.get("path", "/health"), health_status=int(health.get("status", 200)),
                       health_body=health.get("body") or "")


def run_maintenance(module: AnsibleModule) -> None:
    """action=maintenance: one switch of the service's maintenance mode on this host."""
    p = module.params
    if p["retry_after"] < 1:
        module.fail_json(msg=f"retry_after must be at least 1 second, got {p['retry_after']}")
    done = maintenance.switch(
        p["service"]["name"], p["maintenance"], retry_after=p["retry_after"], reason=p["reason"], owner=p["owner"],
        deploy_id=p["deploy_id"], hostname=p["hostname"], audit_log=p["audit_log"], state_dir=p["state_dir"],
        lock_dir=p["lock_dir"], control_socket=p["control_socket"], lock_wait=p["lock_wait"],
        check=module.check_mode)
    if done.result == "failed":
        module.fail_json(msg=done.message, **done.as_dict())
    module.exit_json(changed=done.result == "changed", msg=done.message, **done.as_dict())


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True,
                       "choices": ["plan", "run", "canary", "converge", "retire", "status", "audit", "maintenance"]},
            "weight": {"type": "int"},
            "maintenance": {"type": "bool"},
            "retry_after": {"type": "int", "default": 600},
            "reason": {"type": "str", "default": ""},
            "services": {"type": "list", "elements": "dict", "default": []},
            "include_unlisted": {"type": "bool", "default": False},
            "probe_timeout": {"type": "float", "default": 2.0},
            "since_epoch": {"type": "float", "default": 0.0},
            "limit": {"type": "int", "default": 0},
            "keep": {"type": "list", "elements": "str", "default": []},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "service": {"type": "dict"},
            "release": {"type": "str"},
            "mode": {"type": "str", "default": "deploy", "choices": ["deploy", "rollback", "restart"]},
            "deploy_id": {"type": "str", "default": ""},
            "owner": {"type": "str", "default": ""},
            "hostname": {"type": "str", "default": ""},
            "lock_ttl": {"type": "int", "default": 1800},
            "break_lock": {"type": "bool", "default": False},
            "retry_bad_release": {"type": "bool", "default": False},
            "health": {"type": "dict", "default": {}, "options": {
                "timeout": {"type": "float"}, "interval": {"type": "float"}, "start_grace": {"type": "float"}}},
            "drain_timeout": {"type": "float"},
            "verify_timeout": {"type": "float", "default": 15.0},
            "watch": {"type": "float"},
            "smoke": {"type": "list", "elements": "dict"},
            "audit_log": {"type": "path", "default": "/var/log/fleet/deploy.log"},
            "halt_after": {"type": "str", "choices": ["start", "canary", "switch", "record", "drain"]},
            "service_root": {"type": "path", "default": "/opt/fleet"},
            "state_dir": {"type": "path", "default": "/var/lib/fleet/state"},
            "lock_dir": {"type": "path", "default": "/var/lib/fleet/locks"},
            "control_socket": {"type": "path", "default": "/run/fleet-nginx/control.sock"},
            "config_dir": {"type": "path", "default": "/etc/fleet"},
            "env": {"type": "str", "default": "", "no_log": True},
            "unit_file": {"type": "path"},
            "allow_move": {"type": "bool", "default": False},
            "lock_wait": {"type": "float", "default": 0.0},
        },
        required_if=[("action", "plan", ["service"]),
                     ("action", "run", ["service", "deploy_id"]),
                     ("action", "canary", ["service", "deploy_id", "release", "weight"]),
                     ("action", "converge", ["service", "deploy_id", "release"]),
                     ("action", "maintenance", ["service", "deploy_id", "maintenance"])],
        supports_check_mode=True,
    )
    p = module.params

    if p["action"] == "status":
        module.exit_json(changed=False, **status.report(
            [check_of(svc) for svc in p["services"]], include_unlisted=p["include_unlisted"],
            state_dir=p["state_dir"], lock_dir=p["lock_dir"], control_socket=p["control_socket"],
            audit_log=p["audit_log"], probe_timeout=p["probe_timeout"]))

    if p["action"] == "audit":
        names = [svc["name"] for svc in p["services"]] or None
        module.exit_json(changed=False, lines=audit.newest(p["audit_log"], names, p["since_epoch"], p["limit"]))

    if p["action"] == "retire":
        try:
            retired = engine.retire(
                p["keep"], state_dir=p["state_dir"], lock_dir=p["lock_dir"], config_dir=p["config_dir"],
                service_root=p["service_root"], unit_dir=p["unit_dir"], deploy_id=p["deploy_id"] or "retire",
                owner=p["owner"], hostname=p["hostname"], lock_wait=p["lock_wait"], audit_log=p["audit_log"],
                check=module.check_mode)
        except lock.LockHeld as err:
            module.fail_json(msg=f"{err}; not retired: run again when that deploy has finished")
        module.exit_json(changed=bool(retired), retired=retired)

    if p["action"] == "maintenance":
        run_maintenance(module)

    name = p["service"]["name"]
    try:
        spec = spec_of(p)
        if p["action"] == "plan":
            planned = engine.plan(spec, p["deploy_id"], p["owner"], module.check_mode, p["break_lock"],
                                  p["audit_log"], p["hostname"], p["release"])
            module.exit_json(changed=bool(planned["reconciled"]), **planned)

        if p["action"] == "converge":
            outcome = engine.converge(
                spec, release=p["release"], config=config_of(p), deploy_id=p["deploy_id"], owner=p["owner"],
                hostname=p["hostname"], lock_wait=p["lock_wait"], lock_ttl=p["lock_ttl"], audit_log=p["audit_log"],
                allow_move=p["allow_move"], check=module.check_mode)
            changed = outcome.result not in ("unchanged", "move needed", "failed") or bool(outcome.reconciled)
        elif module.check_mode:
            module.exit_json(changed=False, skipped=True, msg="check mode: nothing moved")
        else:
            common = {k: p[k] for k in ("release", "deploy_id", "owner", "hostname", "lock_ttl", "break_lock",
                                        "audit_log", "retry_bad_release", "halt_after", "lock_wait")}
            if p["action"] == "canary":
                if not 0 <= p["weight"] <= 99:
                    module.fail_json(msg=f"weight must be from 0 (take the canary back) to 99 percent, "
                                         f"not {p['weight']}")
                outcome = engine.canary(spec, weight=p["weight"], **common)
            else:
                outcome = engine.run(spec, mode=p["mode"], **common)
            changed = outcome.result == "ok"
    except (engine.Failed, state.StateError, nginx.NginxControlError) as err:
        module.fail_json(msg=f"{name}: {err}")
    after = state.load(name, p["state_dir"])
    result = {**asdict(outcome), "state": after.to_dict() if after else {}}
    if outcome.result == "failed":
        module.fail_json(msg=outcome.message, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
