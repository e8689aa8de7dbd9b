#!/usr/bin/python3
"""Ansible module: a per-service deploy lock on the managed host (owner, start, expiry)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_deploy_lock
short_description: Take, inspect or release a per-service deploy lock
description:
  - The lock is a JSON file created atomically (O_EXCL), holding the deploy id, its owner, when
    it started and when it expires.
  - O(state=present) takes the lock or fails naming who holds it and since when. An expired lock
    is reported as stale but still refused: it is broken only when O(break_lock=true), and the
    broken lock is returned so the deploy can record it. Never silently.
  - O(state=absent) releases the lock only if O(deploy_id) holds it.
  - O(state=query) only reports; it changes nothing.
options:
  path: {type: path, required: true, description: Lock file.}
  state: {type: str, default: present, choices: [present, absent, query], description: What to do.}
  deploy_id: {type: str, required: true, description: Identifies this deploy run.}
  owner: {type: str, default: "", description: Who runs the deploy (user@controller).}
  service: {type: str, default: "", description: The service being deployed.}
  ttl: {type: int, default: 1800, description: Seconds until the lock counts as stale.}
  break_lock: {type: bool, default: false, description: Break a lock held by another deploy.}
"""

EXAMPLES = r"""
- name: Take the deploy lock of main-api
  fleet_deploy_lock:
    path: /var/lib/fleet/locks/main-api.lock
    deploy_id: "{{ deploy_id }}"
    owner: alice@laptop
"""

RETURN = r"""
lock: {type: dict, description: The lock now held (present) or found (query).}
broken: {type: dict, description: A lock that was broken, when break_lock was used.}
held_by_other: {type: bool, description: With state=query, whether another deploy holds it.}
"""

import json
import os
import time
from datetime import UTC, datetime

from ansible.module_utils.basic import AnsibleModule


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_lock(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"deploy_id": "?", "owner": "unknown", "started": "?", "expires_epoch": 0,
                "error": f"unreadable lock file: {err}"}


def describe(lock: dict) -> str:
    stale = " (stale: expired " + lock.get("expires", "?") + ")" if lock.get("expires_epoch", 0) < time.time() else ""
    return (f"held by {lock.get('owner', 'unknown')} since {lock.get('started', '?')} "
            f"(deploy {lock.get('deploy_id', '?')}, expires {lock.get('expires', '?')}){stale}")


def create(path: str, lock: dict) -> bool:
    """Create the lock file atomically; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(lock, handle)
        handle.write("\n")
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent", "query"]},
            "deploy_id": {"type": "str", "required": True},
            "owner": {"type": "str", "default": ""},
            "service": {"type": "str", "default": ""},
            "ttl": {"type": "int", "default": 1800},
            "break_lock": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    current = read_lock(p["path"])
    mine = current is not None and current.get("deploy_id") == p["deploy_id"]

    if p["state"] == "query":
        module.exit_json(changed=False, lock=current or {}, held_by_other=bool(current) and not mine,
                         msg=describe(current) if current else "free")

    if p["state"] == "absent":
        if not mine:
            module.exit_json(changed=False, lock=current or {}, msg="not held by this deploy; left alone")
        if not module.check_mode:
            os.unlink(p["path"])
        module.exit_json(changed=True, lock={}, msg="released")

    if mine:
        module.exit_json(changed=False, lock=current)
    broken = {}
    if current is not None:
        if not p["break_lock"]:
            module.fail_json(
                msg=(f"deploy lock of {p['service'] or p['path']} is {describe(current)}; refusing to deploy. "
                     "If that deploy is dead, run again with -e break_lock=true to break it on purpose."),
                lock=current)
        broken = current
    now = time.time()
    lock = {"deploy_id": p["deploy_id"], "owner": p["owner"], "service": p["service"], "pid": os.getpid(),
            "started": iso(now), "started_epoch": now, "expires": iso(now + p["ttl"]),
            "expires_epoch": now + p["ttl"]}
    if module.check_mode:
        module.exit_json(changed=True, lock=lock, broken=broken)
    os.makedirs(os.path.dirname(p["path"]), mode=0o755, exist_ok=True)
    if broken:
        os.unlink(p["path"])
    if not create(p["path"], lock):
        module.fail_json(msg=f"deploy lock of {p['service'] or p['path']} was taken by another deploy just now: "
                             f"{describe(read_lock(p['path']) or {})}")
    module.exit_json(changed=True, lock=lock, broken=broken,
                     msg=f"lock taken{'; broke the lock ' + describe(broken) if broken else ''}")


if __name__ == "__main__":
    main()
