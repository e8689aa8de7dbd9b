"""Every traffic move goes through the slots: a configuration change applied by site.yml, a
zero-downtime restart, a one-host canary undone by rollback.yml, and site.yml meeting a deploy
that holds the lock. Each runs under load from clients that reuse keep-alive connections without
checking them, and fails on any failed request.

Each test works on its own service (and leaves it as it found it where later tests depend on
the catalog), reading slots from the state instead of assuming them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bench.loadgen import LoadGenerator, Sample, Target, failures, summarize

from .conftest import ROOT, Lab
from .helpers import HOST2, HOST3, SERVER_NAME, audit, flat, served, start_playbook, state, summary_of

CATALOG = ROOT / "inventories" / "lab" / "group_vars" / "all" / "fleet_services.yml"


@contextmanager
def under_load(lab: Lab, service: str, hosts: list[str] | None = None) -> Iterator[list[Sample]]:
    """Reuse-without-checking clients (GET and POST) against every host's nginx for `service`;
    the samples land in the yielded list when the block ends."""
    targets = [Target(h, lab.hosts[h], SERVER_NAME.format(service)) for h in sorted(hosts or lab.hosts)]
    load = LoadGenerator(targets, total_rate=60, modes=("reuse-get", "reuse-post")).start()
    samples: list[Sample] = []
    time.sleep(1)
    try:
        yield samples
    finally:
        time.sleep(1)
        samples.extend(load.stop())


def assert_no_failed_request(samples: list[Sample], what: str) -> None:
    print(f"{what}: {summarize(samples)}")
    assert len(samples) > 100, summarize(samples)
    assert failures(samples) == [], failures(samples)[:10]


def catalog_with(tmp_path: Path, service: str, **environment: str) -> Path:
    """The lab catalog with extra environment for one service, as an extra-vars file."""
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["fleet_services"][service]["environment"].update(environment)
    path = tmp_path / "catalog.yml"
    path.write_text(yaml.safe_dump(catalog))
    return path


def test_a_changed_secret_is_applied_through_a_slot_switch_without_a_drop(lab: Lab, tmp_path):
    service, secret = "infrastructure", f"s3cret-{os.getpid()}"
    before = {h: state(lab, h, service) for h in lab.hosts}
    changed = catalog_with(tmp_path, service, API_TOKEN=secret)
    with under_load(lab, service) as samples:
        run = lab.playbook("site.yml", "--tags", "service", "-e", f"@{changed}")
    assert_no_failed_request(samples, "secret change under load")
    assert secret not in run.stdout
    for host, old in before.items():
        now = state(lab, host, service)
        new_port, old_port = now["live_port"], old["live_port"]
        assert new_port != old_port and now["slots"][str(new_port)]["release"] == old["slots"][str(old_port)]["release"]
        assert now["history"] == old["history"] and now["pending"] is None
        assert f'API_TOKEN="{secret}"' in lab.ssh(host, f"cat /etc/fleet/{service}/{new_port}.env").stdout
        assert lab.ssh(host, f"test -e /etc/fleet/{service}/{old_port}.env", check=False).returncode == 1
        assert lab.ssh(host, f"systemctl is-active {service}@{old_port}", check=False).stdout.strip() == "inactive"
        line = [e for e in audit(lab, host) if e["service"] == service][-1]
        assert (line["mode"], line["result"], line["who"]) == ("reconfigure", "ok", "site.yml")
        print(f"{host}: configuration change moved {old_port} -> {new_port} in {line['seconds']}s {line['durations']}")
    # One batch at a time: each host's move started after the previous one finished.
    moves = [e for h in lab.hosts for e in audit(lab, h) if (e["mode"], e["service"]) == ("reconfigure", service)]
    lines = sorted(moves, key=lambda e: e["time"])[-3:]
    assert [e["host"] for e in lines] == sorted(lab.hosts)
    assert all(a["finished"] <= b["time"] for a, b in itertools.pairwise(lines))
    again = lab.playbook("site.yml", "--tags", "service", "-e", f"@{changed}")
    assert "changed=0" in again.stdout.split("PLAY RECAP", 1)[1]
    with under_load(lab, service) as samples:
        lab.playbook("site.yml", "--tags", "service")  # back to the lab catalog, another switch
    assert_no_failed_request(samples, "secret removed under load")


def test_a_bad_configuration_stops_at_the_first_host_with_the_old_one_serving(lab: Lab, tmp_path):
    service = "infrastructure"
    before = {h: state(lab, h, service) for h in lab.hosts}
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["fleet_services"][service]["command"] = "/usr/bin/python3 app.py --port {port} --no-such-flag"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(catalog))
    with under_load(lab, service) as samples:
        run = lab.playbook("site.yml", "--tags", "service", "-e", f"@{broken}", "-e", "service_health_wait=5",
                           check=False)
    assert_no_failed_request(samples, "bad configuration under load")
    assert run.returncode != 0
    assert "did not pass in 5s" in flat(run.stdout) and "Traffic stays on" in flat(run.stdout)
    first, *rest = sorted(lab.hosts)
    assert state(lab, first, service)["live_port"] == before[first]["live_port"]
    assert state(lab, first, service)["bad_releases"] == before[first]["bad_releases"]
    for host in rest:  # never reached: the play stopped after the first batch
        assert state(lab, host, service) == before[host]
    lab.playbook("site.yml", "--tags", "service")  # the catalog is good again: nothing to move
    assert all(state(lab, h, service)["live_port"] == before[h]["live_port"] for h in lab.hosts)


def test_a_zero_downtime_restart_moves_each_host_to_its_other_slot(lab: Lab):
    service = "main-api"
    before = {h: state(lab, h, service) for h in lab.hosts}
    with under_load(lab, service) as samples:
        run = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "restart=true")
    assert_no_failed_request(samples, "restart under load")
    assert "restarted" in summary_of(run.stdout)
    for host, old in before.items():
        now = state(lab, host, service)
        assert now["live_port"] != old["live_port"]
        assert now["slots"][str(now["live_port"])]["release"] == old["slots"][str(old["live_port"])]["release"]
        assert served(lab, host, service)["port"] == now["live_port"]
        assert audit(lab, host)[-1]["mode"] == "restart"


def test_a_one_host_canary_then_rollback_moves_only_the_canary(lab: Lab):
    service = "personas-api"
    canary, *others = sorted(lab.hosts)
    releases = {h: served(lab, h, service)["version"] for h in lab.hosts}
    canary_release = next(r for r in ("1.1.0", "1.2.0", "2.0.0") if r not in releases.values())
    others_before = {h: state(lab, h, service) for h in others}
    with under_load(lab, service) as samples:
        lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={canary_release}",
                     "--limit", canary)
        assert served(lab, canary, service)["version"] == canary_release
        run = lab.playbook("rollback.yml", "-e", f"service={service}")
    assert_no_failed_request(samples, "canary and rollback under load")
    assert served(lab, canary, service)["version"] == releases[canary]
    assert {h: state(lab, h, service) for h in others} == others_before
    summary = flat(summary_of(run.stdout))
    assert f"{canary} {canary_release} " in summary and "rolled back" in summary
    for host in others:
        port = others_before[host]["live_port"]
        assert f"{host} {releases[host]} (:{port}) 0.0s unchanged: on {releases[host]}, not on {canary_release}" \
            in summary


def test_site_yml_waits_for_a_deploy_holding_the_lock_and_fails_naming_it_when_too_long(lab: Lab, tmp_path):
    host, service = HOST2, "zapier-mcp"
    release = "1.1.0" if served(lab, host, service)["version"] != "1.1.0" else "1.2.0"
    marker = f"/run/fleet-slots/{service}.halted"

    def frozen_deploy(version: str, log: Path) -> tuple[subprocess.Popen, int]:
        """A deploy whose engine froze right after starting the new slot, holding the lock."""
        lab.ssh(host, f"rm -f {marker}")
        deploy = start_playbook(lab, log.open("w"), "hot_deploy.yml", "-e", f"service={service}", "-e",
                                f"version={version}", "-e", "drill_halt_after=start", "--limit", host)
        deadline = time.monotonic() + 180
        while lab.ssh(host, f"cat {marker}", check=False).returncode != 0:
            assert deploy.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        return deploy, int(lab.ssh(host, f"cat {marker}").stdout.split()[0])

    with under_load(lab, service, [host]) as samples:
        # Too long: site.yml gives up after service_lock_wait, naming the deploy, and changes nothing.
        deploy, pid = frozen_deploy(release, tmp_path / "deploy-1.log")
        before = state(lab, host, service)
        refused = lab.playbook("site.yml", "--tags", "service", "--limit", host, "-e", "service_lock_wait=3",
                               check=False)
        assert refused.returncode != 0
        assert "deploy lock of zapier-mcp is held by" in flat(refused.stdout)
        assert "site.yml waited 3s for it to be released" in flat(refused.stdout)
        assert state(lab, host, service) == before
        lab.ssh(host, f"kill -CONT {pid}")
        assert deploy.wait(timeout=300) == 0, (tmp_path / "deploy-1.log").read_text()[-3000:]
        # Waited for: site.yml starts while the deploy holds the lock, the deploy is let go once
        # site.yml is at the service, and site.yml then sees the new live slot and leaves it alone.
        back = before["slots"][str(before["live_port"])]["release"]
        deploy, pid = frozen_deploy(back, tmp_path / "deploy-2.log")
        site_log = tmp_path / "site.log"
        site = start_playbook(lab, site_log.open("w"), "site.yml", "--tags", "service", "--limit", host)
        deadline = time.monotonic() + 300
        # The task converges the host's services in turn; the ones before this one take well
        # under a second each.
        while "TASK [service : Converge through the slot engine]" not in site_log.read_text():
            assert site.poll() is None and time.monotonic() < deadline, site_log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        lab.ssh(host, f"kill -CONT {pid}")
        assert deploy.wait(timeout=300) == 0, (tmp_path / "deploy-2.log").read_text()[-3000:]
        assert site.wait(timeout=300) == 0, site_log.read_text()[-3000:]
    assert_no_failed_request(samples, "site.yml racing a deploy under load")
    now = state(lab, host, service)
    assert now["slots"][str(now["live_port"])]["release"] == back and now["pending"] is None
    assert (served(lab, host, service)["version"], served(lab, host, service)["port"]) == (back, now["live_port"])
    idle = 8090 if now["live_port"] == 9090 else 9090
    assert lab.ssh(host, f"systemctl is-active {service}@{idle}", check=False).stdout.strip() == "inactive"


def test_a_rebuilt_host_joins_on_the_release_the_fleet_runs_and_skew_is_reported(lab: Lab):
    service, rebuilt = "main-api", HOST3
    others = sorted(h for h in lab.hosts if h != rebuilt)
    theirs = served(lab, rebuilt, service)["version"]
    fleet_release = next(r for r in ("1.1.0", "1.2.0", "2.0.0") if r != theirs)
    lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={fleet_release}",
                 "--limit", ",".join(others))
    skew = lab.playbook("site.yml", "--check", "--tags", "service")
    described = sorted([f"{fleet_release} on {', '.join(others)}", f"{theirs} on {rebuilt}"])
    assert f"{service}: its hosts run different releases ({'; '.join(described)})" in flat(skew.stdout)
    # The host is rebuilt: its deploy state and slots are gone, the catalog still says 1.0.0.
    lab.ssh(rebuilt, f"systemctl stop '{service}@*.service'; rm -rf /var/lib/fleet/state/{service}.json "
                     f"/opt/fleet/{service}/slots /etc/fleet/{service}")
    lab.playbook("site.yml", "--tags", "service", "--limit", rebuilt)
    assert (served(lab, rebuilt, service)["version"], served(lab, rebuilt, service)["port"]) == (fleet_release, 8010)
    assert state(lab, rebuilt, service)["history"] == [fleet_release]


def test_a_service_dropped_from_the_catalog_is_retired_once(lab: Lab, tmp_path):
    host, service, port = HOST3, "retiree", 8200
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["fleet_services"][service] = {**catalog["fleet_services"]["main-api"], "port": port,
                                          "environment": {"DEMO_SERVICE_NAME": service},
                                          "nginx": {"server_names": [f"{service}.fleet.test"]}}
    with_retiree = tmp_path / "with-retiree.yml"
    with_retiree.write_text(yaml.safe_dump(catalog))
    tags = ("--tags", "service,nginx,logrotate", "--limit", host)
    lab.playbook("site.yml", *tags, "-e", f"@{with_retiree}")
    assert served(lab, host, service)["port"] == port
    run = lab.playbook("site.yml", *tags)
    assert f"retired {service}: slots {port} stopped and disabled" in flat(run.stdout)
    for unit in (f"{service}@{port}", f"{service}@{port + 1000}"):
        assert lab.ssh(host, f"systemctl is-active {unit}", check=False).stdout.strip() == "inactive"
        assert lab.ssh(host, f"systemctl is-enabled {unit}", check=False).returncode != 0
    left = lab.ssh(host, f"ls -d /etc/systemd/system/{service}@.service /etc/fleet/{service} /opt/fleet/{service} "
                         f"/var/lib/fleet/state/{service}.json /etc/nginx/fleet/*/{service}.conf 2>/dev/null; "
                         f"grep -l {service} /etc/logrotate.d/* 2>/dev/null", check=False).stdout
    assert left == ""
    assert lab.ssh(host, f"ss -Hltn 'sport = :{port}'").stdout == ""
    assert [e for e in audit(lab, host) if e["service"] == service][-1]["mode"] == "retire"
    again = lab.playbook("site.yml", *tags)
    assert f"retired {service}" not in flat(again.stdout) and "changed=0" in again.stdout.split("PLAY RECAP", 1)[1]
