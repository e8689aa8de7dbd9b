"""site.yml on the lab fleet: every service answers through every host's nginx, and a second
run changes nothing."""

from __future__ import annotations

import json
import re
import urllib.request

import yaml

from .conftest import ROOT, Lab
from .helpers import HOST3, flat

CATALOG = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/fleet_services.yml").read_text())
SERVICES = {name: spec["port"] for name, spec in CATALOG["fleet_services"].items()}


def through_nginx(address: str, service: str) -> dict:
    request = urllib.request.Request(f"http://{address}/health", headers={"Host": f"{service}.fleet.test"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        return json.load(response)


def test_every_service_answers_through_every_hosts_nginx(lab: Lab):
    for host, address in lab.hosts.items():
        for service in SERVICES:
            live = json.loads(lab.ssh(host, f"cat /var/lib/fleet/state/{service}.json").stdout)["live_port"]
            health = through_nginx(address, service)
            assert (health["status"], health["service"], health["port"]) == ("ok", service, live), host


def test_second_site_run_changes_nothing(lab: Lab):
    recap = lab.playbook("site.yml").stdout.split("PLAY RECAP", 1)[1]
    changed = dict(re.findall(r"^(\S+)\s*:.*?changed=(\d+)", recap, re.MULTILINE))
    assert set(changed) == set(lab.hosts)
    assert all(count == "0" for count in changed.values()), recap


def test_site_rejects_a_bad_catalog_before_changing_anything(lab: Lab):
    result = lab.playbook("site.yml", "-e", '{"fleet_services": {"zapier-mcp": {"port": 80}}}', check=False)
    assert result.returncode != 0
    assert "fleet_services.zapier-mcp.port: 80 is reserved" in result.stdout
    assert "changed=0" in result.stdout.split("PLAY RECAP", 1)[1]


def test_slot_ports_are_not_reachable_from_another_host(lab: Lab):
    first, second = sorted(lab.hosts)[:2]
    for port in (p for blue in SERVICES.values() for p in (blue, blue + 1000)):
        probe = lab.ssh(first, f"curl -s --max-time 3 http://{lab.hosts[second]}:{port}/health", check=False)
        assert probe.returncode != 0, f"{second}:{port} answered from {first}"


def test_a_failed_certificate_request_fails_the_host_only_after_its_other_roles_ran(lab: Lab):
    """The ACME server refuses (here: nothing listens on its port): backup, logrotate and ufw still
    converge on that host, nginx keeps serving over plain HTTP, and the run fails naming why."""
    result = lab.playbook("site.yml", "--limit", HOST3, "--tags", "certbot,backup,logrotate,ufw",
                          "-e", "certbot_skip_domains_regex=^$",
                          "-e", "certbot_acme_server=https://127.0.0.1:1/directory", check=False)
    assert result.returncode != 0
    out = flat(result.stdout)
    assert (f"certbot could not get the certificate of {', '.join(sorted(SERVICES))} on {HOST3}; nginx serves "
            "them over plain HTTP until it does." in out)
    verdict = flat(result.stdout.split("TASK [Fail the host, naming the certificates", 1)[1])
    assert "Connection refused" in verdict and "Saving debug log" not in verdict  # certbot's reason, not its chatter
    after_certbot = result.stdout.split("TASK [certbot : Record the certificates certbot could not get", 1)[1]
    for role in ("backup", "logrotate", "ufw"):
        assert f"TASK [{role} :" in after_certbot, role
    assert re.search(rf"^{HOST3}\s*:.*failed=1 ", result.stdout.split("PLAY RECAP", 1)[1], re.MULTILINE)
    for service in SERVICES:
        assert through_nginx(lab.hosts[HOST3], service)["service"] == service
