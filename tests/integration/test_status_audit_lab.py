"""status.yml and audit.yml on the lab fleet: the table and the JSON document against each host's own
state files, locks and audit log; a held lock and a pending move; an unreachable host; bad input;
check mode; the audit lines merged newest first with a limit and a since.

Earlier tests may have deployed, so nothing here assumes a slot or a release: every expectation is
read from the hosts first. The audit lines are the ones site.yml and earlier tests wrote.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .conftest import ROOT, Lab
from .helpers import HOST3

CATALOG = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/fleet_services.yml").read_text())["fleet_services"]
STATUS_TASK = "Print the status table, or the report as JSON"
AUDIT_TASK = "Print the audit lines"
# Every state file, lock file and audit line of a host, and both slot units' states of each catalog
# service, in one ssh call.
FACTS = r"""
import glob, json, os, subprocess
states = {os.path.basename(p)[:-5]: json.load(open(p)) for p in glob.glob("/var/lib/fleet/state/*.json")}
locks = {os.path.basename(p)[:-5]: open(p).read() for p in glob.glob("/var/lib/fleet/locks/*.lock")}
units = [f"{s}@{p}.service" for s, blue in BLUE_PORTS.items() for p in (blue, blue + 1000)]
active = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True).stdout.split()
try:
    log = open("/var/log/fleet/deploy.log").read().splitlines()
except FileNotFoundError:
    log = []
print(json.dumps({"states": states, "locks": locks, "units": dict(zip(units, active)), "audit": log}))
"""


def facts(lab: Lab, host: str) -> dict[str, Any]:
    ports = json.dumps({name: svc["port"] for name, svc in CATALOG.items()})
    out = lab.ssh(host, f"python3 -c {shlex_quote(FACTS.replace('BLUE_PORTS', ports))}").stdout
    return json.loads(out)


def shlex_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def run(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook with results printed as JSON whatever ansible.cfg says, so the tests can read them."""
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    return subprocess.run(lab.argv(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def printed(output: str, task: str) -> Any:
    """The msg of the named debug task in a run's output."""
    after = output.split(f"TASK [{task}]", 1)[1]
    start = after.index("=> ") + 3
    return json.JSONDecoder().raw_decode(after[start:])[0]["msg"]


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def recap_changed(output: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)}


def short(stamp: str) -> str:
    return f"{stamp[:10]} {stamp[11:16]}Z"


def idle_of(service: str, live: int) -> int:
    blue = CATALOG[service]["port"]
    return blue + 1000 if live == blue else blue


def newest_record(lines: list[str], service: str) -> dict[str, Any] | None:
    records = [json.loads(line) for line in lines if line.strip()]
    return next((r for r in reversed(records) if r.get("service") == service), None)


def test_the_table_shows_what_each_hosts_state_says(lab: Lab):
    seen = {host: facts(lab, host) for host in lab.hosts}
    started = time.monotonic()
    result = run(lab, "status.yml")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(recap_changed(result.stdout).values()) == {0}
    table = printed(result.stdout, STATUS_TASK)
    assert cells(table[0]) == ["SERVICE", "HOST", "LIVE", "IDLE", "HEALTH", "LAST DEPLOY", "LOCK", "PENDING",
                               "CANARY", "REQ/S", "5XX", "P99", "AVAIL 24H"]
    rows = {(c[0], c[1]): c for c in map(cells, table[1:]) if len(c) == 13}
    assert set(rows) == {(service, host) for host, f in seen.items() for service in set(CATALOG) | set(f["states"])}
    for host, found in seen.items():
        for service in set(CATALOG) - set(found["states"]):
            assert rows[(service, host)][2] == "no state"
        for service, state in found["states"].items():
            row, live = rows[(service, host)], state["live_port"]
            idle = idle_of(service, live)
            assert row[2] == f"{live} {state['slots'][str(live)]['release']}", row
            idle_word = {"active": "running", "inactive": "stopped"}.get(found["units"][f"{service}@{idle}.service"])
            assert row[3].startswith(f"{idle} {idle_word}"), row
            if found["units"][f"{service}@{live}.service"] == "active":
                assert re.fullmatch(r"200 \d+ms", row[4]), row
            last = newest_record(found["audit"], service)
            assert last is not None, f"{host} {service}: no audit line (site.yml writes one at install)"
            assert row[5] == f"{short(last['finished'])} {last['mode']} {last['result']} {last['who']}", row
            assert (row[6] == "-") == (service not in found["locks"]), row
            assert (row[7] == "-") == (state.get("pending") is None), row
            assert row[8] == "-", row  # the engine keeps no canary weight
            # nginx's figures for the service on the host (exact counts: test_request_figures_lab.py)
            assert re.fullmatch(r"0|<0\.01|\d+(\.\d+)?", row[9]), row
            assert re.fullmatch(r"-|0%|\d+\.\d\d%", row[10]), row
            assert re.fullmatch(r"-|>?\d+(\.\d+)?(ms|s)", row[11]), row
            assert re.fullmatch(r"no traffic|100%|\d+\.\d\d%", row[12]), row
    print(f"status.yml on {len(lab.hosts)} hosts took {took:.1f}s")
    assert took < 30, f"status.yml took {took:.1f}s: it should read each host in one call"


def test_json_in_check_mode_reports_an_unreachable_host_and_changes_nothing(lab: Lab, tmp_path: Path):
    ghost = tmp_path / "ghost.yml"
    ghost.write_text(yaml.safe_dump({"all": {"children": {"fleet": {"children": {"web": {"hosts": {
        "ghost-1": {"ansible_host": "127.0.0.1", "ansible_port": 9}}}}}}}}))
    before = {host: facts(lab, host) for host in lab.hosts}
    result = run(lab, "-i", str(ghost), "status.yml", "--check", "-e", "format=json")
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(recap_changed(result.stdout).values()) == {0}
    report = printed(result.stdout, STATUS_TASK)
    assert json.loads(json.dumps(report)) == report and report["service"] is None
    assert report["hosts"]["ghost-1"]["reachable"] is False
    rows = {(r["service"], r["host"]): r for r in report["rows"]}
    assert {s for (s, h), r in rows.items() if h == "ghost-1" and r["reachable"] is False} == set(CATALOG)
    for host, found in before.items():
        for service, state in found["states"].items():
            row = rows[(service, host)]
            assert (row["live"]["port"], row["live"]["release"]) == (
                state["live_port"], state["slots"][str(state["live_port"])]["release"])
            assert row["live"]["nginx_agrees"] is True, row
            assert row["idle"]["port"] == idle_of(service, state["live_port"])
            assert (row["pending"] is None) == (state.get("pending") is None), row
    assert {host: facts(lab, host) for host in lab.hosts} == before


def test_a_held_lock_and_a_pending_move_show_in_the_table(lab: Lab):
    host, service = HOST3, "personas-api"
    path = f"/var/lib/fleet/state/{service}.json"
    saved = lab.ssh(host, f"cat {path}").stdout
    state = json.loads(saved)
    live, release = state["live_port"], state["slots"][str(state["live_port"])]["release"]
    idle = idle_of(service, live)
    # The lock is taken through lock.py by a process that stays alive (exec'd into sleep), as a
    # running deploy holds it; the move is journaled through state.py, as an interrupted deploy leaves it.
    hold = (f"import os; from fleet_slots import lock, state; lock.acquire('{service}', 'status-test-hold', "
            f"'tester@status', 600); s = state.load('{service}'); "
            f"s.begin(state.Move('status-test-move', 'deploy', s.live_port, {idle}, s.live_release, '9.9.9', "
            f"owner='tester@status')); state.save(s); os.execvp('sleep', ['sleep', '120'])")
    lab.ssh(host, f"cd /usr/local/lib/fleet && (setsid python3 -c {shlex_quote(hold)} >/dev/null 2>&1 &)")
    try:
        deadline = time.monotonic() + 20
        while "status-test-move" not in lab.ssh(host, f"cat {path}").stdout:
            assert time.monotonic() < deadline, "the lock holder never journaled its move"
            time.sleep(0.2)
        result = run(lab, "status.yml", "-e", f"service={service}", "--limit", host)
        assert result.returncode == 0, result.stdout[-3000:]
        table = printed(result.stdout, STATUS_TASK)
        rows = [cells(line) for line in table[1:] if line.startswith(service)]
        assert len(rows) == 1, table
        (row,) = rows
        assert row[6].startswith("tester@status since ") and "(dead)" not in row[6], row
        assert row[7] == f"deploy {release}->9.9.9 {live}->{idle} after started", row
        assert f"{host} {service}: locked by deploy status-test-hold" in " ".join(table)
        assert f"{host} {service}: interrupted deploy status-test-move by tester@status" in " ".join(table)
    finally:
        restore = base64.b64encode(saved.encode()).decode()
        lab.ssh(host, f"echo {restore} | base64 -d > {path}.tmp && mv {path}.tmp {path}")
        lock_file = f"/var/lib/fleet/locks/{service}.lock"
        lab.ssh(host, f"pid=$(python3 -c \"import json; print(json.load(open('{lock_file}'))['pid'])\" 2>/dev/null) "
                      f"&& kill $pid; rm -f {lock_file}", check=False)
    assert lab.ssh(host, f"cat {path}").stdout == saved


def test_bad_input_fails_before_any_host_is_read(lab: Lab):
    status = run(lab, "status.yml", "-e", "service=nope", "-e", "format=xml")
    assert status.returncode != 0
    assert "service must be one of the catalog's services: infrastructure, main-api, personas-api, zapier-mcp" \
        in status.stdout
    assert "format must be one of table, json; got 'xml'" in status.stdout
    assert "TASK [Read each service's slots" not in status.stdout
    audit = run(lab, "audit.yml", "-e", "limit=ten", "-e", "since=yesterday")
    assert audit.returncode != 0
    assert "limit must be a whole number of lines from 1 to 10000 (default 20); got 'ten'" in audit.stdout
    assert "since must be an ISO 8601 time" in audit.stdout and "90m, 2h, 3d, 1w" in audit.stdout
    assert "TASK [Read the newest audit lines" not in audit.stdout


def audit_rows(output: str) -> list[list[str]]:
    lines = printed(output, AUDIT_TASK)
    assert cells(lines[0])[:4] == ["WHEN", "HOST", "SERVICE", "MODE"], lines
    return [cells(line) for line in lines[1:] if re.match(r"\d{4}-\d\d-\d\dT", line)]


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def test_audit_merges_the_hosts_lines_newest_first_with_a_limit_and_a_since(lab: Lab):
    logs = {host: facts(lab, host)["audit"] for host in lab.hosts}
    records = [(host, json.loads(line)) for host, lines in logs.items() for line in lines if line.strip()]
    assert len(records) >= 6, "site.yml writes an install line per service and host"
    whens = sorted((r["finished"] for _, r in records), reverse=True)
    known = {(r["finished"], host, r["service"], r["mode"]) for host, r in records}

    newest = run(lab, "audit.yml", "--check", "-e", "limit=5", "-e", "since=1w")
    assert newest.returncode == 0, newest.stdout[-3000:]
    assert set(recap_changed(newest.stdout).values()) == {0}
    rows = audit_rows(newest.stdout)
    assert [row[0] for row in rows] == whens[:5]
    assert all((row[0], row[1], row[2], row[3]) in known for row in rows), rows

    service = max(records, key=lambda hr: hr[1]["finished"])[1]["service"]
    mine = sorted((r["finished"] for _, r in records if r["service"] == service), reverse=True)
    since = mine[len(mine) // 2]
    chosen = run(lab, "audit.yml", "-e", f"service={service}", "-e", f"since={since}", "-e", "limit=100")
    assert chosen.returncode == 0, chosen.stdout[-3000:]
    rows = audit_rows(chosen.stdout)
    assert {row[2] for row in rows} == {service}
    assert [row[0] for row in rows] == [w for w in mine if epoch(w) >= epoch(since)]
    assert {host: facts(lab, host)["audit"] for host in lab.hosts} == logs  # reading wrote nothing
