"""maintenance.yml on the lab fleet: one service answers 503 with Retry-After and its page on the
hosts asked for, while another service under keep-alive load loses no request and nginx keeps its
workers (no reload); status.yml, the health checker and the audit log know; off serves again.
(audit.yml's rendering of the lines is unit-tested, tests/unit/test_fleet_audit.py.)

personas-api has a page of its own in the lab catalog (nginx.maintenance_page); the others get
the nginx role's default page. Nothing here assumes which slot is live: it is read from the state.
The test leaves the service out of maintenance, whatever happens.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .conftest import Lab
from .helpers import HOST1, HOST2, HOST3, SERVER_NAME, audit, flat, state
from .test_traffic_moves_lab import assert_no_failed_request, under_load

SERVICE, OTHER = "personas-api", "main-api"
TARGETS = [HOST1, HOST2]  # --limit: HOST3 keeps serving the service
REASON = "lab-maintenance-test"
PAGE = "personas-api is being upgraded"  # from the lab catalog's nginx.maintenance_page


def answer(lab: Lab, host: str, service: str, path: str = "/health") -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a GET through `host`'s nginx from outside the host."""
    request = urllib.request.Request(f"http://{lab.hosts[host]}{path}", headers={"Host": SERVER_NAME.format(service)})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def workers(lab: Lab, host: str) -> list[str]:
    """nginx's worker processes on `host`: a reload replaces every one of them."""
    return sorted(lab.ssh(host, "pgrep -P $(cat /run/nginx.pid)").stdout.split())


def maintenance(lab: Lab, *args: str, check: bool = True) -> str:
    return flat(lab.playbook("maintenance.yml", "-e", f"service={SERVICE}", *args, check=check).stdout)


def test_maintenance_on_and_off_without_a_reload(lab: Lab) -> None:
    limit = ("--limit", ",".join(TARGETS))
    live = {host: state(lab, host, SERVICE)["live_port"] for host in TARGETS}
    before = {host: workers(lab, host) for host in lab.hosts}
    lines_before = {host: len(audit(lab, host)) for host in TARGETS}
    left_on = True
    try:
        # Check mode: what would change, and nothing does.
        dry = maintenance(lab, "-e", "state=on", "--check", *limit)
        assert f"{HOST1}: would turn maintenance of {SERVICE} on" in dry, dry[-3000:]
        assert answer(lab, HOST1, SERVICE)[0] == 200

        with under_load(lab, OTHER) as samples:
            on = maintenance(lab, "-e", "state=on", "-e", "retry_after=120", "-e", f"reason={REASON}", *limit)
            assert f"{HOST2}: maintenance of {SERVICE} on" in on, on[-3000:]
            for host in TARGETS:
                status, headers, body = answer(lab, host, SERVICE)
                assert (status, headers.get("Retry-After")) == (503, "120"), (host, status, headers)
                assert PAGE in body and headers["Content-Type"].startswith("text/html")
                # Only the service: the other one, and the ACME challenges of this one, are served.
                assert answer(lab, host, OTHER)[0] == 200
                assert answer(lab, host, SERVICE, "/.well-known/acme-challenge/none")[0] == 404
            assert answer(lab, HOST3, SERVICE)[0] == 200  # not in --limit

            # The host itself still reaches the service (the deploy's verification, the health
            # checker); the health checker says maintenance and raises nothing about it.
            probe = (f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: {SERVER_NAME.format(SERVICE)}' "
                     "http://127.0.0.1/health; echo; "
                     "fleet-health --config /etc/fleet/health.json --once --no-webhook --log-file -"
                     " || true; cat /etc/nginx/fleet/maintenance/zapier-mcp.html")
            out = lab.ssh(HOST1, probe).stdout
            local, report = out.split("\n", 1)
            assert local == "200"
            record = json.JSONDecoder().raw_decode(report)[0]
            assert record["maintenance"] == [SERVICE], record
            assert not [p for p in record["problems"] if SERVICE in p["key"]], record["problems"]
            assert not [key for key in record["new"] if SERVICE in key], record["new"]
            [check] = [c for c in record["checks"] if c["key"] == f"maintenance:{SERVICE}"]
            assert check["severity"] == "ok" and REASON in check["message"]
            assert "zapier-mcp is down for planned maintenance" in out  # the default page

            table = flat(lab.playbook("status.yml", "-e", f"service={SERVICE}").stdout)
            for host in TARGETS:
                assert f"{SERVICE} {host} {live[host]} " in table and f"{host} {SERVICE}: in maintenance since" in table
            assert "MAINT" in table and f"{REASON}" in table
        assert_no_failed_request(samples, f"{OTHER} while {SERVICE} went into maintenance")
        assert {host: workers(lab, host) for host in lab.hosts} == before, "nginx was reloaded"

        # Recorded in the state: an nginx reload (or a restart, or a reboot) keeps it.
        lab.ssh(HOST1, "systemctl reload nginx")
        assert answer(lab, HOST1, SERVICE)[0] == 503
        assert state(lab, HOST1, SERVICE)["maintenance"]["by"]

        off = maintenance(lab, "-e", "state=off")
        left_on = False
        assert f"{HOST1}: maintenance of {SERVICE} off" in off
        assert f"{HOST3}: maintenance of {SERVICE} is already off" in off
        for host in lab.hosts:
            status, headers, _ = answer(lab, host, SERVICE)
            assert status == 200 and "Retry-After" not in headers
            assert state(lab, host, SERVICE)["live_port"] == live.get(host, state(lab, host, SERVICE)["live_port"])
    finally:
        if left_on:  # whatever failed, the later tests get the service back
            maintenance(lab, "-e", "state=off", check=False)

    for host in TARGETS:
        mine = [line for line in audit(lab, host)[lines_before[host]:] if line["service"] == SERVICE]
        assert [(line["mode"], line["result"], line["reason"]) for line in mine] == [
            ("maintenance-on", "ok", REASON), ("maintenance-off", "ok", "")], mine
        assert mine[0]["retry_after"] == 120 and mine[0]["to_slot"] == live[host]
    assert not [line for line in audit(lab, HOST3) if line["mode"].startswith("maintenance")]
