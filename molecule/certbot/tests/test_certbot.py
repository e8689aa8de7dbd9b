"""Verify certbot + nginx TLS on the guest that requests the certificates from a real ACME server
(pebble, on this guest; its validations reach this guest through the second one, see
test_received_certificates.py).

converge.yml certifies every service but infrastructure, which stays on plain HTTP until the
last tests give it a certificate. All traffic stays inside the guest: to 127.0.0.1, or to the
guest's own address where a client must not look local to nginx.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time

import pytest
from acme import ISSUER, LIVE, PEBBLE_CA, SCENARIO, changed_count, file_serial, name, playbook, served_serial

testinfra_hosts = [f"ansible://{ISSUER}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}"]

SERVICES = ["zapier-mcp", "personas-api", "main-api", "infrastructure"]
CERTIFIED = ["zapier-mcp", "personas-api", "main-api"]
UNCERTIFIED = "infrastructure"
WEBROOT = "/var/www/acme"
ROOT_PEM = "/root/pebble-root.pem"  # the root pebble signs certificates with (new every start)
HOOK_LOG = "/var/log/fleet/certbot.log"
MOZILLA_INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}


@pytest.fixture(scope="module")
def root_pem(host) -> str:
    host.check_output(f"curl -fsS --cacert {PEBBLE_CA} -o {ROOT_PEM} https://127.0.0.1:15000/roots/0")
    return ROOT_PEM


@pytest.fixture(scope="module")
def own_address(host) -> str:
    """The guest's own address: a client there is not on loopback, so nginx treats it as remote."""
    return host.check_output("hostname -I").split()[0]


def https(host, service: str, root: str, path: str = "/health") -> dict:
    out = host.check_output(
        f"curl -fsS --max-time 5 --cacert {root} --resolve {name(service)}:443:127.0.0.1 "
        f"-D /dev/stderr https://{name(service)}{path} 2>/tmp/headers; echo; cat /tmp/headers"
    )
    body, _, headers = out.partition("\n")
    return {"body": json.loads(body), "headers": headers.lower()}


def http_status(host, address: str, host_header: str, path: str = "/health") -> tuple[str, str]:
    out = host.check_output(
        f"curl -s -o /dev/null --max-time 5 -w '%{{http_code}} %{{redirect_url}}' "
        f"-H 'Host: {host_header}' 'http://{address}{path}'"
    )
    code, _, location = out.partition(" ")
    return code, location


def tls_handshake(host, service: str, *options: str):
    return host.run(
        f"openssl s_client -connect 127.0.0.1:443 -servername {name(service)} {' '.join(options)} </dev/null"
    )


# --- certificates -----------------------------------------------------------------------------


@pytest.mark.parametrize("service", CERTIFIED)
def test_each_named_service_has_a_certificate_for_its_names_from_the_acme_server(host, service):
    cert = host.check_output(f"openssl x509 -noout -issuer -ext subjectAltName -in {LIVE}/{service}/cert.pem")
    assert re.findall(r"DNS:([^,\s]+)", cert) == [name(service)]
    assert "Pebble" in cert
    renewal = host.file(f"/etc/letsencrypt/renewal/{service}.conf").content_string
    assert "authenticator = webroot" in renewal and "server = https://127.0.0.1:14000/dir" in renewal


def test_a_service_whose_names_are_skipped_gets_no_certificate(host):
    assert not host.file(f"{LIVE}/{UNCERTIFIED}").exists


def test_private_keys_are_readable_by_root_only(host):
    keys = host.check_output("find /etc/letsencrypt/archive /etc/letsencrypt/keys -name '*.pem' -path '*priv*' "
                             "-o -name '*_key-certbot.pem'").split()
    assert len(keys) >= len(CERTIFIED)
    for key in keys:
        f = host.file(key)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), key
    for directory in ("/etc/letsencrypt/archive", "/etc/letsencrypt/live", "/etc/letsencrypt/keys"):
        assert host.file(directory).mode == 0o700, directory


# --- nginx over TLS ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", CERTIFIED)
def test_https_serves_each_certified_service_with_a_verified_certificate(host, root_pem, service):
    answer = https(host, service, root_pem)
    assert answer["body"]["service"] == service
    assert "strict-transport-security: max-age=63072000" in answer["headers"]
    # The http-level headers survive in the HTTPS server (it has no add_header of its own).
    for header in ("x-content-type-options: nosniff", "x-frame-options: deny", "referrer-policy:"):
        assert header in answer["headers"], header


def test_https_speaks_http2(host, root_pem):
    out = host.check_output(
        f"curl -sS -o /dev/null -w '%{{http_version}}' --cacert {root_pem} "
        f"--resolve {name('main-api')}:443:127.0.0.1 https://{name('main-api')}/health"
    )
    assert out == "2"


def test_tls_follows_mozilla_intermediate(host):
    for version in ("-tls1_2", "-tls1_3"):
        result = tls_handshake(host, "main-api", version)
        assert result.rc == 0, (version, result.stderr)
    negotiated = re.search(r"Cipher is (\S+)", tls_handshake(host, "main-api", "-tls1_2").stdout)
    assert negotiated and negotiated.group(1) in MOZILLA_INTERMEDIATE_TLS12, negotiated
    # Older protocols and non-AEAD ciphers are refused, even when the client offers them.
    assert tls_handshake(host, "main-api", "-tls1_1", "-cipher", "'DEFAULT:@SECLEVEL=0'").rc != 0
    for cipher in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"):
        assert tls_handshake(host, "main-api", "-tls1_2", "-cipher", cipher).rc != 0, cipher
    assert "TLS session ticket" not in tls_handshake(host, "main-api", "-tls1_2").stdout


def test_https_for_a_name_without_a_certificate_is_refused_at_the_handshake(host):
    assert tls_handshake(host, UNCERTIFIED).rc != 0
    assert host.run("curl -sk --max-time 5 --resolve nope.fleet.test:443:127.0.0.1 https://nope.fleet.test/").rc != 0


# --- plain HTTP -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", CERTIFIED)
def test_plain_http_redirects_to_https_keeping_the_path(host, own_address, service):
    code, location = http_status(host, own_address, name(service), "/health?probe=1")
    assert (code, location) == ("301", f"https://{name(service)}/health?probe=1")


def test_plain_http_from_the_host_itself_is_still_served(host):
    """Health checks and the deploy's verification through nginx talk plain HTTP on loopback."""
    for service in SERVICES:
        out = host.check_output(f"curl -fsS --max-time 5 -H 'Host: {name(service)}' http://127.0.0.1/health")
        assert json.loads(out)["service"] == service


def test_a_service_without_a_certificate_is_plain_http(host, own_address):
    code, _ = http_status(host, own_address, name(UNCERTIFIED))
    assert code == "200"
    headers = host.check_output(f"curl -sS -D - -o /dev/null -H 'Host: {name(UNCERTIFIED)}' http://{own_address}/health")
    assert "strict-transport-security" not in headers.lower()


@pytest.mark.parametrize("server_name", [*(name(s) for s in SERVICES), "unknown.fleet.test"])
def test_acme_challenges_are_answered_on_port_80_for_every_name(host, own_address, server_name):
    token = f"probe-{server_name}"
    host.check_output(f"install -D -m 0644 /dev/null {WEBROOT}/.well-known/acme-challenge/{token}")
    host.check_output(f"echo {token} > {WEBROOT}/.well-known/acme-challenge/{token}")
    try:
        out = host.check_output(
            f"curl -fsS --max-time 5 -H 'Host: {server_name}' "
            f"http://{own_address}/.well-known/acme-challenge/{token}"
        )
        assert out.strip() == token
    finally:
        host.check_output(f"rm -f {WEBROOT}/.well-known/acme-challenge/{token}")


# --- renewal ----------------------------------------------------------------------------------


def test_renewal_is_debians_timer_with_a_hook_that_tests_and_reloads_nginx(host):
    timer = host.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/fleet-reload-nginx")
    assert (hook.user, hook.mode) == ("root", 0o755)
    assert "nginx -t" in hook.content_string and "systemctl reload nginx" in hook.content_string
    environment = host.check_output("systemctl show -p Environment --value certbot.service")
    assert f"REQUESTS_CA_BUNDLE={PEBBLE_CA}" in environment


def test_the_timers_renewal_run_succeeds_and_renews_nothing_early(host):
    before = {s: file_serial(host, s) for s in CERTIFIED}
    host.check_output("systemctl start certbot.service")  # what certbot.timer starts; oneshot
    assert host.check_output("systemctl show -p Result --value certbot.service") == "success"
    assert {s: file_serial(host, s) for s in CERTIFIED} == before


# --- a certificate appears for a service that had none -----------------------------------------


def test_a_new_certificate_switches_its_service_to_https_and_both_states_are_idempotent(host, root_pem, own_address):
    """Plain HTTP was idempotent (molecule's idempotence step); get a certificate for infrastructure
    the way the role does, and the nginx role alone finds it (stat) and serves it, once."""
    host.check_output(
        f"REQUESTS_CA_BUNDLE={PEBBLE_CA} certbot certonly --non-interactive --agree-tos "
        f"--register-unsafely-without-email --webroot --webroot-path {WEBROOT} --cert-name {UNCERTIFIED} "
        f"--domains {name(UNCERTIFIED)} --server https://127.0.0.1:14000/dir"
    )
    assert changed_count(playbook("--tags", "nginx"))[ISSUER] > 0
    assert set(changed_count(playbook("--tags", "nginx")).values()) == {0}
    assert https(host, UNCERTIFIED, root_pem)["body"]["service"] == UNCERTIFIED
    assert http_status(host, own_address, name(UNCERTIFIED))[0] == "301"


# --- forced renewal under traffic ---------------------------------------------------------------


def test_forced_renewal_reloads_nginx_under_traffic_without_a_failed_request(host, root_pem):
    script = base64.b64encode((SCENARIO / "tests" / "tls_load.py").read_bytes()).decode()
    host.check_output(f"echo {script} | base64 -d > /root/tls_load.py && rm -f /root/load.stop /root/load.json")
    certified = [s for s in SERVICES if host.file(f"{LIVE}/{s}/cert.pem").exists]
    before = {s: served_serial(host, s) for s in certified}
    master = host.file("/run/nginx.pid").content_string.strip()
    hook_lines = len(host.file(HOOK_LOG).content_string.splitlines()) if host.file(HOOK_LOG).exists else 0
    targets = " ".join(f"--target {s}={name(s)}" for s in certified)
    host.check_output(
        f"systemd-run --unit fleet-tls-load --collect python3 /root/tls_load.py --ca {root_pem} {targets} "
        "--stop /root/load.stop --out /root/load.json --threads 4 --keepalive-threads 2"
    )

    def summary() -> dict:
        f = host.file("/root/load.json")
        return json.loads(f.content_string) if f.exists else {"ok": 0, "done": False}

    try:
        deadline = time.monotonic() + 60
        while summary()["ok"] < 20:
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.5)
        started = time.monotonic()
        renewal = host.run(
            f"REQUESTS_CA_BUNDLE={PEBBLE_CA} certbot renew --force-renewal --no-random-sleep-on-renew"
        )
        renew_seconds = time.monotonic() - started
        assert renewal.rc == 0, renewal.stdout + renewal.stderr
        time.sleep(2)  # keep the traffic going after the last reload
    finally:
        host.run("touch /root/load.stop")
        deadline = time.monotonic() + 30
        while not summary()["done"] and time.monotonic() < deadline:
            time.sleep(0.5)
    result = summary()
    print(f"\nFIGURE forced renewal of {len(certified)} certificates (certbot renew --force-renewal "
          f"--no-random-sleep-on-renew) took {renew_seconds:.1f} s under traffic: {result['ok']} requests ok, "
          f"{result['failed']} failed, {result['retried']} keep-alive requests retried after a reload closed "
          f"their idle connection")

    assert result["failed"] == 0, result["errors"]
    assert result["ok"] >= 100, result
    assert host.file("/run/nginx.pid").content_string.strip() == master, "nginx was restarted, not reloaded"
    for service in certified:
        after = served_serial(host, service)
        assert after != before[service], f"{service}: nginx still serves the old certificate"
        assert after == file_serial(host, service)
        # Requests saw the old certificate, then the new one: the reload happened under traffic.
        assert before[service] in result["serials"][service] and after in result["serials"][service]
    reloads = host.file(HOOK_LOG).content_string.splitlines()[hook_lines:]
    assert len(reloads) == len(certified) and all("reloaded nginx" in line for line in reloads), reloads
    for key in host.check_output("find /etc/letsencrypt/archive -name 'privkey*.pem'").split():
        assert host.file(key).mode == 0o600, key
