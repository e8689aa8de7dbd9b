"""Verify a converged fleet host: services on their live slots, nginx routing to them."""

from __future__ import annotations

import json
import os

import pytest
from testinfra.utils.ansible_runner import AnsibleRunner

SERVICES = {
    "zapier-mcp": 8090,
    "personas-api": 8000,
    "main-api": 8010,
    "infrastructure": 8080,
}


def state(host, service: str) -> dict:
    return json.loads(host.file(f"/var/lib/fleet/state/{service}.json").content_string)


def get_json(host, url: str, headers: str = "") -> dict:
    out = host.check_output(f"curl -fsS --max-time 5 {headers} {url}")
    return json.loads(out)


@pytest.mark.parametrize("service,port", SERVICES.items())
def test_live_slot_unit_is_active_and_enabled(host, service, port):
    assert state(host, service)["live_port"] == port
    unit = host.service(f"{service}@{port}")
    assert unit.is_running
    assert unit.is_enabled
    assert not host.service(f"{service}@{port + 1000}").is_running


@pytest.mark.parametrize("service,port", SERVICES.items())
def test_live_slot_answers_its_health_check(host, service, port):
    health = get_json(host, f"http://127.0.0.1:{port}/health")
    assert health["status"] == "ok"
    assert health["service"] == service
    assert health["port"] == port
    assert health["version"] == state(host, service)["slots"][str(port)]["release"]


@pytest.mark.parametrize("service,port", SERVICES.items())
def test_nginx_routes_each_service_to_its_live_slot(host, service, port):
    health = get_json(host, "http://127.0.0.1/health", f"-H 'Host: {service}.fleet.test'")
    assert (health["service"], health["port"]) == (service, port)


def test_nginx_counts_each_services_requests_and_exports_them(host):
    """The request figures' dict, log-phase counter and /metrics are rendered, nginx -t accepts them,
    a request through nginx is counted, and the timer's unit writes node_exporter's file."""
    assert "lua_shared_dict fleet_metrics" in host.file("/etc/nginx/conf.d/fleet-metrics.conf").content_string
    assert "location /metrics" in host.file("/etc/nginx/conf.d/fleet-slots.conf").content_string
    assert host.run("nginx -t").rc == 0

    def counted() -> int:
        answer = json.loads(host.check_output("fleet-slot metrics main-api --raw"))
        return int(answer["services"]["main-api"]["total"]["requests"])

    before = counted()
    get_json(host, "http://127.0.0.1/health", "-H 'Host: main-api.fleet.test'")
    assert counted() > before  # (the health checker may ask /health through nginx meanwhile)
    assert host.service("fleet-request-metrics.timer").is_enabled
    host.check_output("systemctl start fleet-request-metrics.service")
    exported = host.file("/var/lib/prometheus/node-exporter/fleet_requests.prom")
    assert exported.mode == 0o644
    assert "fleet_requests_up 1" in exported.content_string
    assert 'fleet_http_requests_total{service="main-api"} ' in exported.content_string


def test_unknown_host_name_gets_404(host):
    code = host.check_output(
        "curl -s -o /dev/null -w '%{http_code}' -H 'Host: nope.fleet.test' http://127.0.0.1/"
    )
    assert code == "404"


@pytest.mark.parametrize("port", [p for base in SERVICES.values() for p in (base, base + 1000)])
def test_no_slot_port_listens_outside_the_host(host, port):
    outside = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
    assert all(s.startswith(("tcp://127.0.0.1:", "tcp://::1:")) for s in outside), outside


def test_slot_ports_are_refused_from_another_host(host):
    """From this host, only nginx answers on every other host's own address."""
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    me = host.backend.get_hostname()
    for peer in sorted(set(AnsibleRunner(inventory).get_hosts("fleet")) - {me}):
        peer_host = host.get_host(f"ansible://{peer}?ansible_inventory={inventory}")
        peer_ip = peer_host.check_output("hostname -I").split()[0]
        for port in (p for base in SERVICES.values() for p in (base, base + 1000)):
            assert host.run(f"curl -s --max-time 3 http://{peer_ip}:{port}/").rc != 0, (peer, port)
        assert host.run(f"curl -fsS --max-time 3 -H 'Host: main-api.fleet.test' http://{peer_ip}/health").rc == 0


def test_fleet_local_fact_mirrors_the_state_files(host):
    fact = json.loads(host.check_output("/etc/ansible/facts.d/fleet.fact"))
    assert set(fact) == set(SERVICES)
    for service in SERVICES:
        assert fact[service] == state(host, service)


def test_environment_files_are_private_and_per_slot(host):
    for service in SERVICES:
        live = state(host, service)["live_port"]
        directory, env = host.file(f"/etc/fleet/{service}"), host.file(f"/etc/fleet/{service}/{live}.env")
        assert (directory.user, directory.mode, env.user, env.group, env.mode) == ("root", 0o700, "root", "root", 0o600)
        assert f"DEMO_SERVICE_NAME=\"{service}\"" in env.content_string


def test_crashed_slot_is_restarted_by_systemd(host):
    unit = "main-api@8010.service"
    before = host.check_output(f"systemctl show -p MainPID --value {unit}")
    host.check_output(f"kill -9 {before}")
    host.check_output(
        f"timeout 20 sh -c 'until [ \"$(systemctl show -p MainPID --value {unit})\" != 0 ] "
        f"&& [ \"$(systemctl show -p MainPID --value {unit})\" != {before} ] "
        "&& curl -fs http://127.0.0.1:8010/health; do sleep 0.5; done'"
    )
    props = host.check_output(f"systemctl show -p StartLimitBurst -p Restart {unit}")
    assert "Restart=on-failure" in props and "StartLimitBurst=5" in props
