"""site.yml on the lab fleet: every service answers through every host's nginx, and a second
run changes nothing."""

from __future__ import annotations

import json
import re
import urllib.request

import yaml

from .conftest import ROOT, Lab
from .helpers import HOST1, HOST3, flat

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
    out = lab.playbook("site.yml").stdout
    recap = out.split("PLAY RECAP", 1)[1]
    changed = dict(re.findall(r"^(\S+)\s*:.*?changed=(\d+)", recap, re.MULTILINE))
    assert set(changed) == set(lab.hosts)
    # Which task changed what, when one did.
    tasks = [(task.split("]", 1)[0], sorted(set(re.findall(r"^changed: \[(\S+)\]", task, re.MULTILINE))))
             for task in out.split("TASK [")[1:]]
    assert all(count == "0" for count in changed.values()), [t for t in tasks if t[1]]


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
    """The ACME server refuses (here: nothing listens on its port). HOST1 requests every lab
    certificate (each service's certificate_issuer) and fails; HOST3 finds none to copy from it.
    On both, backup, logrotate and ufw still converge, nginx keeps serving over plain HTTP, and the
    run fails each host naming why."""
    result = lab.playbook("site.yml", "--limit", f"{HOST1},{HOST3}", "--tags", "certbot,backup,logrotate,ufw",
                          "-e", "certbot_skip_domains_regex=^$",
                          "-e", "certbot_acme_server=https://127.0.0.1:1/directory", check=False)
    assert result.returncode != 0
    out = flat(result.stdout)
    for host in (HOST1, HOST3):
        assert (f"certbot could not get the certificate of {', '.join(sorted(SERVICES))} on {host}; nginx serves "
                "them over plain HTTP until it does." in out), host
    verdicts = flat(result.stdout.split("TASK [Fail the host, naming the certificates", 1)[1])
    assert "Connection refused" in verdicts and "Saving debug log" not in verdicts  # certbot's reason, not its chatter
    assert re.search(rf"main-api: could not copy it from {HOST1}, the host that requests it \(File not found: "
                     r"/etc/letsencrypt/live/main-api/(fullchain|privkey)\.pem\): run site.yml for that host first",
                     verdicts)
    after_certbot = result.stdout.split("TASK [certbot : Record the certificates that could not be copied", 1)[1]
    for role in ("backup", "logrotate", "ufw"):
        assert f"TASK [{role} :" in after_certbot, role
    recap = result.stdout.split("PLAY RECAP", 1)[1]
    for host in (HOST1, HOST3):
        assert re.search(rf"^{host}\s*:.*failed=1 ", recap, re.MULTILINE), host
        for service in SERVICES:
            assert through_nginx(lab.hosts[host], service)["service"] == service
