"""hot_deploy.yml and rollback.yml on the lab fleet: the happy path, every failure behaviour,
and a small load run that fails on any dropped request.

Each test works on its own service so that tests do not depend on each other's outcome; tests
that only need one host use --limit to keep the suite fast.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time

import yaml

from bench.loadgen import LoadGenerator, Sample, Target, failures, summarize

from .conftest import ROOT, Lab
from .helpers import HOST1, HOST2, HOST3, SERVER_NAME, audit, flat, served, start_playbook, state, summary_of
from .test_status_audit_lab import STATUS_TASK, cells, printed
from .test_status_audit_lab import run as status_json


def test_deploys_alternate_slots_and_rollback_returns_to_the_right_release(lab: Lab):
    host, service = HOST1, "main-api"
    before = state(lab, host, service)
    live, start = before["live_port"], before["slots"][str(before["live_port"])]["release"]
    other = 9010 if live == 8010 else 8010
    first, second = [r for r in ("1.1.0", "1.2.0", "2.0.0") if r != start][:2]
    steps = [
        (("hot_deploy.yml", "-e", f"version={first}"), first, other),
        (("hot_deploy.yml", "-e", f"version={second}"), second, live),
        (("rollback.yml",), first, other),
        (("rollback.yml",), start, live),
    ]
    for args, release, slot in steps:
        lab.playbook(args[0], "-e", f"service={service}", *args[1:], "--limit", host)
        now = state(lab, host, service)
        assert (now["live_port"], now["slots"][str(slot)]["release"]) == (slot, release), args
        assert (served(lab, host, service)["version"], served(lab, host, service)["port"]) == (release, slot)
        idle = other if slot == live else live
        assert lab.ssh(host, f"systemctl is-active {service}@{idle}", check=False).stdout.strip() != "active"
    assert now["history"] == before["history"]
    records = [r for r in audit(lab, host) if r["service"] == service]
    assert [(r["mode"], r["to_release"], r["result"]) for r in records[-4:]] == [
        ("deploy", first, "ok"), ("deploy", second, "ok"), ("rollback", first, "ok"), ("rollback", start, "ok")]
    assert {"start", "health_gate", "switch", "verify", "record", "drain"} <= set(records[-1]["durations"])


def test_check_mode_shows_the_plan_and_changes_nothing(lab: Lab):
    host, service = HOST2, "main-api"
    before = state(lab, host, service)
    live, release = before["live_port"], before["slots"][str(before["live_port"])]["release"]
    target = "1.2.0" if release != "1.2.0" else "1.1.0"
    result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={target}", "--check",
                          "-e", "canary=5,25,100", "-e", "watch=3", "--limit", host)
    assert f"main-api: {release} on slot {live} -> {target} on slot {9010 if live == 8010 else 8010}" in result.stdout
    assert "(canary: 5%, 25%, 100%, each step watched 3s)" in flat(result.stdout)
    assert state(lab, host, service) == before
    assert served(lab, host, service)["version"] == release


def test_failed_health_gate_keeps_the_old_release_and_stops_the_rollout(lab: Lab):
    service = "personas-api"
    before = state(lab, HOST1, service)
    live, release = before["live_port"], before["slots"][str(before["live_port"])]["release"]
    idle = 9000 if live == 8000 else 8000
    second_before = state(lab, HOST2, service)
    second_audit = [r for r in audit(lab, HOST2) if r["service"] == service]
    result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "version=9.9.9-unhealthy",
                          "-e", "health_timeout=5", "-e", "retry_bad_release=true",  # marked bad by an earlier run
                          "--limit", f"{HOST1},{HOST2}", check=False)
    assert result.returncode != 0
    message = result.stdout
    # which host, which check, what it saw
    assert f"FAILED on {HOST1} in the health gate step" in message
    assert f"GET http://127.0.0.1:{idle}/health" in message and "saw status 503" in message
    assert '\\"status\\": \\"failing\\"' in message or '"status": "failing"' in message
    first = state(lab, HOST1, service)
    assert first["live_port"] == live and "9.9.9-unhealthy" in first["bad_releases"]
    assert str(idle) not in first["slots"]
    assert lab.ssh(HOST1, f"systemctl is-active {service}@{idle}", check=False).stdout.strip() != "active"
    assert lab.ssh(HOST1, f"test -e /opt/fleet/{service}/slots/{idle}", check=False).returncode != 0
    assert served(lab, HOST1, service)["version"] == release
    # the rollout stopped: the next host was never touched
    assert state(lab, HOST2, service) == second_before
    assert [r for r in audit(lab, HOST2) if r["service"] == service] == second_audit
    assert HOST2 in summary_of(message) and "not started" in summary_of(message)
    # and the bad release is refused next time, with advice
    again = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "version=9.9.9-unhealthy",
                         "--limit", HOST1, check=False)
    assert again.returncode != 0 and f"was marked bad on {HOST1}" in again.stdout


def nginx_processes(lab: Lab, host: str) -> str:
    return lab.ssh(host, "pgrep -d, -f 'nginx: (master|worker)'").stdout.strip()


def test_a_switch_reloads_nothing_and_keeps_idle_connections(lab: Lab):
    """The switch is one value in nginx's slot table: no reload (same master and workers, so a
    broken file on disk does not matter), and an idle keep-alive client connection is still
    usable afterwards, on the new slot."""
    host, service = HOST3, "main-api"
    before = state(lab, host, service)
    target = "1.1.0" if before["slots"][str(before["live_port"])]["release"] != "1.1.0" else "1.2.0"
    processes = nginx_processes(lab, host)
    client = http.client.HTTPConnection(lab.hosts[host], 80, timeout=10)
    client.request("GET", "/", headers={"Host": SERVER_NAME.format(service)})
    first = json.loads(client.getresponse().read())
    lab.ssh(host, "echo 'this is not nginx syntax;' > /etc/nginx/conf.d/zz-broken.conf")
    try:
        lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={target}", "--limit", host)
    finally:
        lab.ssh(host, "rm -f /etc/nginx/conf.d/zz-broken.conf")
    client.request("GET", "/", headers={"Host": SERVER_NAME.format(service)})  # same socket, not checked
    second = json.loads(client.getresponse().read())
    client.close()
    after = state(lab, host, service)
    assert first["port"] == before["live_port"] and second["port"] == after["live_port"] != before["live_port"]
    assert second["version"] == target
    assert nginx_processes(lab, host) == processes
    assert lab.ssh(host, f"systemctl is-active {service}@{before['live_port']}", check=False).stdout.strip() \
        == "inactive"


def test_a_held_lock_refuses_a_second_deploy_and_breaks_only_on_purpose(lab: Lab):
    host, service = HOST2, "zapier-mcp"
    stale = {"deploy_id": "zapier-mcp-old", "owner": "carol@ci", "started": "2026-01-01T00:00:00Z",
             "started_epoch": 0, "expires": "2026-01-01T00:30:00Z", "expires_epoch": 1800}
    lab.ssh(host, f"mkdir -p /var/lib/fleet/locks && echo '{json.dumps(stale)}' > /var/lib/fleet/locks/{service}.lock")
    refused = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "version=1.1.0", "--limit", host,
                           check=False)
    assert refused.returncode != 0
    assert "held by carol@ci since 2026-01-01T00:00:00Z" in refused.stdout and "stale" in refused.stdout
    assert "break_lock=true" in refused.stdout
    assert state(lab, host, service)["live_port"] == 8090
    broken = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "version=1.1.0", "--limit", host,
                          "-e", "break_lock=true")
    assert "deployed" in summary_of(broken.stdout)
    assert audit(lab, host)[-1]["broke_lock"]["owner"] == "carol@ci"
    assert lab.ssh(host, f"test -e /var/lib/fleet/locks/{service}.lock", check=False).returncode != 0


def test_a_concurrent_deploy_of_the_same_service_is_refused(lab: Lab, tmp_path):
    """The first deploy's engine is frozen right after it started the new slot (the drill), so it
    holds the lock for as long as the test needs; once thawed it finishes on its own."""
    host, service = HOST3, "zapier-mcp"
    marker = f"/run/fleet-slots/{service}.halted"
    log = (tmp_path / "first.log").open("w")
    first = start_playbook(lab, log, "hot_deploy.yml", "-e", f"service={service}", "-e", "version=3.0.0-slow",
                           "-e", "drill_halt_after=start", "--limit", host)
    try:
        deadline = time.monotonic() + 120
        while lab.ssh(host, f"test -e {marker}", check=False).returncode != 0:
            assert time.monotonic() < deadline and first.poll() is None, (
                f"first deploy never reached its start:\n{(tmp_path / 'first.log').read_text()[-3000:]}")
            time.sleep(0.3)
        second = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "version=1.2.0", "--limit", host,
                              check=False)
    finally:
        lab.ssh(host, f"read pid point < {marker}; rm -f {marker}; kill -CONT $pid", check=False)
        first.wait(timeout=300)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert second.returncode != 0
    assert f"{host}: deploy lock of {service} is held by" in second.stdout and "since" in second.stdout
    assert state(lab, host, service)["slots"][str(state(lab, host, service)["live_port"])]["release"] == "3.0.0-slow"


def test_bad_input_fails_before_anything_changes(lab: Lab, tmp_path):
    before = {h: state(lab, h, "main-api") for h in lab.hosts}
    unknown = lab.playbook("hot_deploy.yml", "-e", "service=nope", check=False)
    assert unknown.returncode != 0 and "unknown service 'nope'" in unknown.stdout
    no_service = lab.playbook("hot_deploy.yml", check=False)
    assert no_service.returncode != 0 and "-e service=<name>" in no_service.stdout
    no_release = lab.playbook("hot_deploy.yml", "-e", "service=main-api", "-e", "version=7.7.7", check=False)
    assert no_release.returncode != 0 and "no release of main-api 7.7.7" in no_release.stdout
    # Checked before the health gate: a duration in the wrong unit must not mark a good release bad.
    durations = lab.playbook("hot_deploy.yml", "-e", "service=main-api", "-e", "version=1.1.0",
                             "-e", "health_timeout=2m", "-e", "drain_timeout=0", "-e", "batch_size=1,0",
                             "-e", "watch=900", check=False)
    assert durations.returncode != 0
    assert "health_timeout must be a number of seconds, e.g. health_timeout=120 for two minutes; got '2m'" in (
        flat(durations.stdout))
    assert "drain_timeout must be more than 0 seconds" in flat(durations.stdout)
    assert "'0' in '1,0' is none of those" in flat(durations.stdout)
    assert "watch must be at most 600 seconds; got '900'" in flat(durations.stdout)
    canary = lab.playbook("hot_deploy.yml", "-e", "service=main-api", "-e", "version=1.1.0", "-e", "canary=5,25",
                          check=False)
    assert canary.returncode != 0 and (
        "canary must end with 100, the step that finishes the switch, e.g. canary=5,25,100; got '5,25'.") in (
        flat(canary.stdout))
    restart = lab.playbook("hot_deploy.yml", "-e", "service=main-api", "-e", "restart=true", "-e", "canary=5,100",
                           check=False)
    assert restart.returncode != 0 and "canary goes with a deploy of a new release, not with restart=true" in (
        flat(restart.stdout))
    catalog = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/fleet_services.yml").read_text())
    catalog["fleet_services"]["main-api"]["group"] = "web"
    override = tmp_path / "catalog.json"
    override.write_text(json.dumps(catalog))
    gpu_host = lab.groups["gpu"][0]
    outside = lab.playbook("hot_deploy.yml", "-e", "service=main-api", "-e", f"@{override}", "--limit", gpu_host,
                           check=False)
    assert outside.returncode != 0 and f"{gpu_host} is not in group 'web' that runs main-api" in outside.stdout
    assert {h: state(lab, h, "main-api") for h in lab.hosts} == before


def test_unreachable_host_mid_rollout_stops_and_the_summary_says_where_each_host_is(lab: Lab, tmp_path):
    service, victim = "infrastructure", HOST2
    log_path = tmp_path / "deploy.log"
    process = start_playbook(lab, log_path.open("w"), "hot_deploy.yml", "-e", f"service={service}",
                             "-e", "version=1.2.0")
    deadline = time.monotonic() + 300
    while "PLAY [Roll out" not in log_path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)
    # the victim answered the plan; now its sshd and every session go away
    subprocess.run(["docker", "exec", victim, "sh", "-c", "systemctl stop ssh.service ssh.socket; pkill sshd"],
                   check=False)
    process.wait(timeout=300)
    try:
        output = log_path.read_text()
        assert process.returncode != 0
        summary = summary_of(output)
        assert HOST1 in summary and "deployed" in summary.split(HOST1, 1)[1].splitlines()[0]
        assert "unreachable" in summary.split(victim, 1)[1].splitlines()[0]
        assert "not started" in summary.split(HOST3, 1)[1].splitlines()[0]
        assert f"on 1.2.0: {HOST1}\n" in summary
        assert f"still on the previous release: {HOST2}, {HOST3}" in summary
    finally:
        subprocess.run(["docker", "exec", victim, "systemctl", "start", "ssh.service"], check=True)
    assert served(lab, HOST3, service)["version"] == "1.0.0"


def test_hot_deploy_under_load_drops_no_request(lab: Lab):
    """The small version of bench/hot_deploy_bench.py: any failed request fails the test."""
    service = "personas-api"
    targets = [Target(h, a, SERVER_NAME.format(service)) for h, a in sorted(lab.hosts.items())]
    load = LoadGenerator(targets, total_rate=60).start()
    time.sleep(2)
    versions = {h: served(lab, h, service)["version"] for h in lab.hosts}
    target_release = "2.0.0"
    deploy = threading.Thread(target=lab.playbook, args=("hot_deploy.yml", "-e", f"service={service}",
                                                          "-e", f"version={target_release}"))
    deploy.start()
    deploy.join(timeout=600)
    time.sleep(2)
    samples = load.stop()
    figures = summarize(samples)
    print(f"hot deploy under load: {figures}")
    assert figures["requests"] > 500
    assert failures(samples) == [], failures(samples)[:10]
    assert {s.version for s in samples} == set(versions.values()) | {target_release}
    assert all(served(lab, h, service)["version"] == target_release for h in lab.hosts)


def test_a_release_failing_real_requests_is_switched_back_by_the_watch_and_the_rollout_halts(lab: Lab):
    """4.0.0-flaky answers /health but every fifth other request with 500. Under load, host 1 (the
    first in name order) is switched to it, its watch sees the 5xx through nginx and switches
    traffic back to the old slot, still running; the release is marked bad there, the host fails
    and the rollout halts: hosts 2 and 3 are never touched. The exposure is measured both on the
    host (the engine's switch-to-revert time) and by the clients (answers of the bad release)."""
    service, bad = "zapier-mcp", "4.0.0-flaky"
    before = {h: state(lab, h, service) for h in lab.hosts}
    audits = {h: [r for r in audit(lab, h) if r["service"] == service] for h in lab.hosts}
    releases = {h: s["slots"][str(s["live_port"])]["release"] for h, s in before.items()}
    live = before[HOST1]["live_port"]
    idle = 9090 if live == 8090 else 8090
    targets = [Target(h, lab.hosts[h], SERVER_NAME.format(service)) for h in sorted(lab.hosts)]
    load = LoadGenerator(targets, total_rate=60, modes=("reuse-get", "reuse-post")).start()
    time.sleep(1)
    try:
        result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={bad}",
                              "-e", "watch=5", "-e", "retry_bad_release=true", check=False)
    finally:
        time.sleep(1)
        samples = load.stop()
    message = flat(result.stdout)
    assert result.returncode != 0, message[-3000:]
    assert f"FAILED on {HOST1} in the watch step" in message, message[-3000:]
    assert "breached its limits" in message and "answered 5xx" in message
    assert f"switched back to slot {live}" in message and "release marked bad on this host" in message

    # Host 1: traffic back on the old release and slot, the bad release marked and recorded.
    first = state(lab, HOST1, service)
    assert (first["live_port"], first["slots"][str(live)]["release"]) == (live, releases[HOST1]), first
    assert bad in first["bad_releases"] and first["pending"] is None and str(idle) not in first["slots"]
    assert served(lab, HOST1, service)["version"] == releases[HOST1]
    assert lab.ssh(HOST1, f"systemctl is-active {service}@{idle}", check=False).stdout.strip() != "active"
    assert lab.ssh(HOST1, f"systemctl is-active {service}@{live}", check=False).stdout.strip() == "active"
    line = [r for r in audit(lab, HOST1) if r["service"] == service][-1]
    assert (line["mode"], line["to_release"], line["result"], line["phase"]) == ("deploy", bad, "failed", "watch")
    watched = line["watch"]
    assert watched["breach"] and watched["errors"] >= 1 and watched["revert_s"] is not None

    # The rollout halted: hosts 2 and 3 untouched.
    for other in (HOST2, HOST3):
        assert state(lab, other, service) == before[other]
        assert [r for r in audit(lab, other) if r["service"] == service] == audits[other]
        assert "not started" in summary_of(result.stdout).split(other, 1)[1].splitlines()[0]

    # Exposure: what the clients got from the bad release, and for how long.
    exposed = [s for s in samples if s.version == bad]
    assert exposed and {s.host for s in exposed} == {HOST1}
    window = max(s.t + s.latency for s in exposed) - min(s.t for s in exposed)
    failed = failures(samples)
    print(f"watch exposure on {HOST1}: {len(exposed)} client requests reached {bad} "
          f"({sum(s.failed for s in exposed)} answered 5xx) within {window:.2f}s as the clients saw it; "
          f"the engine switched back {watched['revert_s']:.2f}s after the switch ({watched['requests']} requests, "
          f"{watched['errors']} 5xx through nginx: {watched['breach']}); load: {summarize(samples)}")
    assert watched["revert_s"] < 5 and window < 5
    # The only failures are the bad release's own 500s: switching there and back dropped nothing.
    assert all(s.version == bad and s.status == 500 for s in failed), failed[:10]


def other_release(current: str) -> str:
    return "1.2.0" if current == "1.1.0" else "1.1.0"


def units_agree_with_state(lab: Lab, host: str, service: str, slots: tuple[int, int]) -> None:
    """No pending move; nginx routes the state's live slot, which alone runs and starts at boot."""
    now = state(lab, host, service)
    assert now["pending"] is None, now
    assert lab.ssh(host, f"fleet-slot status {service}", check=False).returncode == 0
    for port in slots:
        live = port == now["live_port"]
        active = lab.ssh(host, f"systemctl is-active {service}@{port}", check=False).stdout.strip()
        enabled = lab.ssh(host, f"systemctl is-enabled {service}@{port}", check=False).stdout.strip()
        assert (active == "active", enabled == "enabled") == (live, live), (port, active, enabled, now)
    assert served(lab, host, service)["port"] == now["live_port"]


# Where the drill froze the move -> the journal's phase, and what the next run must do about it.
JOURNAL = {
    "start": ("started", "never got traffic, so traffic is on"),
    "switch": ("switched", "serves and is healthy, so the move was finished"),
    "record": ("recorded", "serves and is healthy, so the move was finished"),
    "drain": ("draining", "serves and is healthy, so the move was finished"),
}


def test_a_deploy_killed_at_any_phase_is_reconciled_by_the_next_run_without_a_drop(lab: Lab, tmp_path):
    """Kill the controller (and the engine on the host) right after each phase of a move; the next
    plain run (a deploy, or site.yml) takes over the dead deploy's lock and reconciles the move: clients that reuse
    keep-alive connections without checking see no failure, and state, nginx and units agree."""
    host, service = HOST1, "zapier-mcp"
    slots = (8090, 9090)
    target = Target(host, lab.hosts[host], SERVER_NAME.format(service))
    load = LoadGenerator([target], total_rate=60).start()
    try:
        for phase in ("start", "switch", "record", "drain"):
            before = state(lab, host, service)
            release = other_release(before["slots"][str(before["live_port"])]["release"])
            reconciled_before = sum(1 for r in audit(lab, host) if r["mode"] == "reconcile")
            log = (tmp_path / f"{phase}.log").open("w")
            controller = subprocess.Popen(
                lab.argv("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={release}",
                         "-e", f"drill_halt_after={phase}", "--limit", host),
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            marker = f"/run/fleet-slots/{service}.halted"
            deadline = time.monotonic() + 120
            while lab.ssh(host, f"test -e {marker}", check=False).returncode != 0:
                assert controller.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / f"{phase}.log").read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(controller.pid, signal.SIGKILL)
            controller.wait()
            lab.ssh(host, f"read pid point < {marker}; kill -9 $pid; rm -f {marker}")
            assert state(lab, host, service)["pending"] is not None
            # Whichever run comes next settles it: the deploy again, or site.yml (one of them here).
            next_run = (("site.yml", "--tags", "service") if phase == "switch" else
                        ("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={release}"))
            resumed = lab.playbook(*next_run, "--limit", host)
            journaled, outcome = JOURNAL[phase]
            assert f"interrupted after its {journaled} phase" in flat(resumed.stdout), phase
            assert outcome in flat(resumed.stdout), phase
            now = state(lab, host, service)
            assert now["slots"][str(now["live_port"])]["release"] == release, (phase, now)
            units_agree_with_state(lab, host, service, slots)
            reconciles = [r for r in audit(lab, host) if r["mode"] == "reconcile"]
            assert len(reconciles) == reconciled_before + 1 and reconciles[-1]["broke_lock"]["pid"], reconciles
    finally:
        samples = load.stop()
    print(f"killed at each phase boundary under load: {summarize(samples)}")
    assert failures(samples) == [], failures(samples)[:10]


def test_a_stray_process_on_the_idle_port_is_refused_by_name_and_revert_all_moves_the_others_back(lab: Lab):
    """Something else listening on the idle slot's port would pass a health check by port alone:
    the deploy refuses there before starting anything, naming the process, and traffic stays. The
    rollout (one host at a time, in name order) had moved the hosts before it: with
    on_failure=revert_all they are moved back to the release they ran, each through a slot switch."""
    host, service = HOST3, "personas-api"
    before = {h: state(lab, h, service) for h in lab.hosts}
    releases = {h: s["slots"][str(s["live_port"])]["release"] for h, s in before.items()}
    target = next(r for r in ("1.1.0", "1.2.0", "2.0.0") if r not in releases.values())
    idle = 9000 if before[host]["live_port"] == 8000 else 8000
    lab.ssh(host, f"systemd-run --unit fleet-test-stray python3 -m http.server --bind 127.0.0.1 {idle}")
    try:
        deadline = time.monotonic() + 20
        while lab.ssh(host, f"ss -Hltn 'sport = :{idle}' | grep -q LISTEN", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the stray process never listened"
            time.sleep(0.2)
        result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={target}",
                              "-e", "on_failure=revert_all", check=False)
    finally:
        lab.ssh(host, "systemctl stop fleet-test-stray", check=False)
    assert result.returncode != 0
    message = flat(result.stdout)
    assert f"in the preflight step: port {idle}, the idle slot of {service}, is held by PID" in message
    assert "python3 -m http.server" in message and "fleet-test-stray.service" in message
    assert state(lab, host, service) == before[host]
    assert served(lab, host, service)["port"] == before[host]["live_port"]

    moved = sorted(h for h in lab.hosts if h != host)
    summary = summary_of(result.stdout)
    reverts = result.stdout.split("(on_failure=revert_all)] ***", 1)[-1].split("TASK [", 1)[0]
    for other in moved:
        now = state(lab, other, service)
        assert now["slots"][str(now["live_port"])]["release"] == releases[other], (other, now, reverts, summary)
        assert now["pending"] is None and served(lab, other, service)["version"] == releases[other]
        assert "put back (on_failure=revert_all)" in summary.split(other, 1)[1].splitlines()[0]
        deploy_line, revert_line = [e for e in audit(lab, other) if e["service"] == service][-2:]
        assert (deploy_line["mode"], deploy_line["result"], deploy_line["to_release"]) == ("deploy", "ok", target)
        assert (revert_line["mode"], revert_line["result"], revert_line["to_release"]) == (
            "rollback", "ok", releases[other])
    assert f"still on the previous release: {', '.join(sorted(lab.hosts))}" in summary
    assert f"on_failure=revert_all moved back to the release they ran: {', '.join(moved)}." in message, summary


def test_a_canary_sends_each_steps_share_of_the_requests_to_the_new_release(lab: Lab):
    """-e canary=5,25,100 under keep-alive load on every host at once: the share of requests the
    new release served in each step, as the clients saw it, within 2 points of the step's weight
    (nginx splits by count, not at random); nothing failed; an audit line per host per step."""
    service, watch_s = "main-api", 3
    before = {h: state(lab, h, service) for h in lab.hosts}
    releases = {h: s["slots"][str(s["live_port"])]["release"] for h, s in before.items()}
    target = next(r for r in ("1.1.0", "1.2.0", "2.0.0") if r not in releases.values())
    audits = {h: len(audit(lab, h)) for h in lab.hosts}
    targets = [Target(h, lab.hosts[h], SERVER_NAME.format(service)) for h in sorted(lab.hosts)]
    load = LoadGenerator(targets, total_rate=150, modes=("reuse-get", "reuse-post")).start()
    wall0 = time.time() - (time.monotonic() - load.t0)  # a sample's t is seconds since load.t0
    started = time.monotonic()
    try:
        result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={target}",
                              "-e", "canary=5,25,100", "-e", f"watch={watch_s}", "-e", "batch_size=3",
                              "-e", "retry_bad_release=true", check=False)
    finally:
        time.sleep(1)
        samples = load.stop()
    took = time.monotonic() - started
    assert result.returncode == 0, flat(result.stdout)[-3000:]
    assert failures(samples) == [], failures(samples)[:10]

    shares: dict[int, list[Sample]] = {}
    for host in sorted(lab.hosts):
        lines = [r for r in audit(lab, host)[audits[host]:] if r["service"] == service]
        assert [(r["mode"], r["result"], r["canary"]["weight"]) for r in lines] == [
            ("canary", "ok", 5), ("canary", "ok", 25), ("deploy", "ok", 100)], lines
        assert all(r["to_release"] == target for r in lines)
        assert state(lab, host, service)["weight"] is None
        assert served(lab, host, service)["version"] == target
        # Each step from the moment nginx took its weight to the next one's (the 100: its watch).
        bounds = [r["canary"]["set_epoch"] - wall0 for r in lines]
        bounds.append(bounds[-1] + watch_s)
        for weight, start, end in zip((5, 25, 100), bounds[:-1], bounds[1:], strict=True):
            step = [s for s in samples if s.host == host and start <= s.t < end]
            shares.setdefault(weight, []).extend(step)
    figures = {w: (sum(s.version == target for s in step), len(step)) for w, step in shares.items()}
    print(f"canary 5,25,100 (watch {watch_s}s) under load on {len(lab.hosts)} hosts in {took:.0f}s: " + ", ".join(
        f"{w}%: {new}/{total} = {100 * new / total:.2f}% new" for w, (new, total) in figures.items())
        + f"; load: {summarize(samples)}")
    for weight, (new, total) in figures.items():
        assert total >= 200, figures
        assert abs(100 * new / total - weight) <= 2, figures


def test_a_canary_killed_mid_step_is_shown_then_taken_back_by_the_next_run(lab: Lab, tmp_path):
    """The engine frozen right after it set the first step's weight (the drill), the controller
    and the engine killed there: status.yml shows the weight meanwhile; the next run (a deploy)
    takes the dead deploy's lock over and puts every request back on the old slot (the
    conservative answer: only an operator's run goes further), without a failed request."""
    host, service = HOST2, "infrastructure"
    slots = (8080, 9080)
    before = state(lab, host, service)
    live = before["slots"][str(before["live_port"])]["release"]
    release = other_release(live)
    marker = f"/run/fleet-slots/{service}.halted"
    load = LoadGenerator([Target(host, lab.hosts[host], SERVER_NAME.format(service))], total_rate=60,
                         modes=("reuse-get", "reuse-post")).start()
    try:
        log = (tmp_path / "canary.log").open("w")
        controller = subprocess.Popen(
            lab.argv("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={release}",
                     "-e", "canary=20,100", "-e", "watch=30", "-e", "drill_halt_after=canary",
                     "-e", "retry_bad_release=true", "--limit", host),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while lab.ssh(host, f"test -e {marker}", check=False).returncode != 0:
            assert controller.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "canary.log").read_text()[-3000:]
            time.sleep(0.3)
        held = state(lab, host, service)
        assert (held["weight"], held["pending"]["phase"], held["live_port"]) == (20, "canary", before["live_port"])
        status = status_json(lab, "status.yml", "-e", f"service={service}", "--limit", host)
        table = printed(status.stdout, STATUS_TASK)
        [row] = [cells(line) for line in table[1:] if line.startswith(service)]
        assert row[8] == "20%", table
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait()
        lab.ssh(host, f"read pid point < {marker}; kill -9 $pid; rm -f {marker}")
        # The next run: a deploy of the release that is live (site.yml reconciles the same way, see
        # test_a_deploy_killed_at_any_phase_is_reconciled_by_the_next_run_without_a_drop).
        resumed = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={live}",
                               "--limit", host)
    finally:
        time.sleep(1)
        samples = load.stop()
    assert "interrupted after its canary 20% phase" in flat(resumed.stdout)
    assert "had 20% of the requests in an unfinished canary, so traffic is on" in flat(resumed.stdout)
    now = state(lab, host, service)
    assert now["slots"][str(now["live_port"])]["release"] == live
    assert now["weight"] is None and release not in now["bad_releases"]
    units_agree_with_state(lab, host, service, slots)
    new = [s for s in samples if s.version == release]
    print(f"killed canary at 20%: {len(new)} of {len(samples)} requests reached {release} before the take-back; "
          f"{summarize(samples)}")
    assert new and failures(samples) == [], failures(samples)[:10]


def test_a_breach_in_a_canary_step_on_one_host_takes_it_back_on_every_host(lab: Lab):
    """4.0.0-flaky answers every fifth request with 500. Only host 1 gets load, so only its watch
    sees the 5xx: it breaches in the 50% step and takes its canary back (release marked bad there);
    hosts 2 and 3, whose step passed, take theirs back too (not marked) and the run fails before
    any host is switched."""
    service, bad = "zapier-mcp", "4.0.0-flaky"
    before = {h: state(lab, h, service) for h in lab.hosts}
    releases = {h: s["slots"][str(s["live_port"])]["release"] for h, s in before.items()}
    audits = {h: len(audit(lab, h)) for h in lab.hosts}
    load = LoadGenerator([Target(HOST1, lab.hosts[HOST1], SERVER_NAME.format(service))], total_rate=60,
                         modes=("reuse-get", "reuse-post")).start()
    try:
        result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={bad}",
                              "-e", "canary=50,100", "-e", "watch=3", "-e", "retry_bad_release=true", check=False)
    finally:
        samples = load.stop()
    message = flat(result.stdout)
    assert result.returncode != 0, message[-3000:]
    assert f"canary 50% of {service} {bad} FAILED on {HOST1} in the watch step" in message, message[-3000:]
    assert "with 50% of the requests breached its limits" in message
    assert f"failed on {HOST1}: taken back on {HOST2}" in message and f"taken back on {HOST3}" in message
    summary = summary_of(result.stdout)
    for host in lab.hosts:
        now = state(lab, host, service)
        assert (now["live_port"], now["pending"], now["weight"]) == (before[host]["live_port"], None, None), now
        assert served(lab, host, service)["version"] == releases[host]
        assert (bad in now["bad_releases"]) == (host == HOST1)
        lines = [(r["mode"], r["result"], r["canary"]["weight"]) for r in audit(lab, host)[audits[host]:]
                 if r["service"] == service]
        assert lines == ([("canary", "failed", 50)] if host == HOST1 else
                         [("canary", "ok", 50), ("canary", "ok", 0)]), (host, lines)
        if host != HOST1:
            assert "canary taken back" in summary.split(host, 1)[1].splitlines()[0]
    assert all(s.version == bad and s.status == 500 for s in failures(samples)), failures(samples)[:10]
    print(f"canary breach on {HOST1} at 50%: {sum(s.version == bad for s in samples)} of {len(samples)} requests "
          f"reached {bad}, {len(failures(samples))} answered 500; {summarize(samples)}")
