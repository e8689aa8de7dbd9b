"""site.yml on the lab fleet: every service answers through every host's nginx, a bad catalog
changes nothing, the slots stay on loopback, the health checker and certbot's failure path, rate
limits. (The second run changing nothing is checked under ansible-runner: test_awx_runner.py.)"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import time
import urllib.request

import yaml

from .conftest import ROOT, Lab
from .helpers import HOST1, HOST2, HOST3, flat

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


def test_a_web_host_health_checks_its_services_and_reports_a_stopped_one(lab: Lab):
    """site.yml installs the health checker on every host, not only on the GPU ones: a web host's
    run (read-only, as an operator would try it) finds its stopped live slot, and checks no GPU."""
    assert lab.ssh(HOST2, "grep -c fleet-health /etc/cron.d/fleet-health").stdout.strip() == "1"
    live = json.loads(lab.ssh(HOST2, "cat /var/lib/fleet/state/main-api.json").stdout)["live_port"]
    lab.ssh(HOST2, f"systemctl stop main-api@{live}.service")
    try:
        run = lab.ssh(HOST2, "/usr/local/sbin/fleet-health --config /etc/fleet/health.json --once --no-webhook "
                             "--log-file -", check=False)
        record = json.loads(run.stdout.strip().splitlines()[-1])
        problems = {p["key"]: p["severity"] for p in record["problems"]}
        assert (run.returncode, problems["service:main-api"]) == (2, "critical"), problems
        assert f"main-api@{live}.service is inactive" in flat(run.stdout)
        assert not [c["key"] for c in record["checks"] if c["key"].startswith(("gpu", "nvidia"))]
    finally:
        lab.ssh(HOST2, f"systemctl start main-api@{live}.service && timeout 30 sh -c "
                       f"'until curl -fs http://127.0.0.1:{live}/health >/dev/null; do sleep 0.2; done'")


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


# Sends `count` GET requests to nginx at `address` for `host_name`, each on a new connection, one
# after the other (`pause` seconds apart), and prints their statuses and how long they took.
BURST = """
import http.client, json, sys, time
address, host_name, path, count, pause = sys.argv[1:4] + [int(sys.argv[4]), float(sys.argv[5])]
codes, start = [], time.monotonic()
for index in range(count):
    if index:
        time.sleep(pause)
    conn = http.client.HTTPConnection(address, 80, timeout=5)
    conn.request("GET", path, headers={"Host": host_name})
    response = conn.getresponse()
    response.read()
    conn.close()
    codes.append(response.status)
print(json.dumps({"codes": codes, "took": time.monotonic() - start}))
"""


def burst(lab: Lab, source: str, address: str, service: str, count: int, pause: float = 0.0,
          path: str = "/health") -> tuple[list[int], float]:
    """The statuses of `count` requests sent from `source` (one ssh call, so they leave back to back)."""
    argv = ["python3", "-c", BURST, address, f"{service}.fleet.test", path, str(count), str(pause)]
    result = json.loads(lab.ssh(source, shlex.join(argv)).stdout)
    return result["codes"], result["took"]


def test_a_rate_limit_answers_a_burst_over_it_with_429_but_not_traffic_under_it_or_the_host_itself(lab: Lab, tmp_path):
    """main-api limited on HOST2 only (site.yml --tags nginx --limit, the catalog with the limit as
    an extra-vars file), bursts sent from HOST3 and from HOST2 itself, then the lab catalog back."""
    service, rate, limit = "main-api", 2, 4
    catalog = copy.deepcopy(CATALOG)
    catalog["fleet_services"][service]["nginx"]["rate_limit"] = {"rate": rate, "burst": limit}
    limited = tmp_path / "rate-limited.yml"
    limited.write_text(yaml.safe_dump(catalog))
    address = lab.hosts[HOST2]
    converge = ("site.yml", "--tags", "nginx", "--limit", HOST2)
    try:
        lab.playbook(*converge, "-e", f"@{limited}")
        assert (f"limit_req zone=fleet_rate_main_api burst={limit} nodelay;"
                in lab.ssh(HOST2, f"cat /etc/nginx/fleet/sites/{service}.conf").stdout)

        # Over the limit, from another host: the first burst+1 pass at once, the rest get 429 (the
        # bucket drains `rate` requests a second while the burst is sent, which may let a few more by).
        codes, took = burst(lab, HOST3, address, service, 20)
        passed = codes.count(200)
        print(f"{HOST3} -> {HOST2} {service}: {codes.count(429)} of {len(codes)} got 429 in {took:.2f}s: {codes}")
        assert set(codes) <= {200, 429}, codes
        assert codes[:limit + 1] == [200] * (limit + 1), codes
        assert limit + 1 <= passed <= limit + 1 + math.ceil(took * rate), codes
        assert codes.count(429) >= 20 - (limit + 1 + math.ceil(took * rate)) > 0, codes

        # The same burst at a service without a limit, and at the ACME challenges: no 429.
        other, _ = burst(lab, HOST3, address, "personas-api", 20)
        assert other == [200] * 20, other
        acme, _ = burst(lab, HOST3, address, service, 20, path="/.well-known/acme-challenge/none")
        assert 429 not in acme and set(acme) == {404}, acme

        # From the host itself (the deploy's verification, the health checker): never limited. (The
        # lab's containers have no IPv6, so ::1 is left to the unit tests of the template.)
        local, _ = burst(lab, HOST2, "127.0.0.1", service, 30)
        assert local == [200] * 30, local

        # Under the limit once the bucket has drained (burst/rate seconds): more requests than the
        # burst, each within the rate, and none refused.
        time.sleep(limit / rate + 0.5)
        steady, took = burst(lab, HOST3, address, service, 3 * (limit + 1), pause=1.1 / rate)
        print(f"{HOST3} -> {HOST2} {service} under the limit: {steady.count(429)} of {len(steady)} got 429 "
              f"in {took:.2f}s")
        assert steady == [200] * len(steady), steady
    finally:
        lab.playbook(*converge)  # the lab catalog again: no limit

    assert "limit_req" not in lab.ssh(HOST2, f"cat /etc/nginx/fleet/sites/{service}.conf").stdout
    assert "limit_req_zone" not in lab.ssh(HOST2, "cat /etc/nginx/conf.d/fleet-rate-limits.conf").stdout
    after, _ = burst(lab, HOST3, address, service, 20)
    assert after == [200] * 20, after
