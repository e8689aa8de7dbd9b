"""The second guest serves the same names as the first, which is every service's certificate_issuer:
it serves copies of the first guest's certificates, never talks to the ACME server itself, and
passes the HTTP-01 challenges it has no token for to the first guest. pebble's DNS sends every name
here, so each validation pebble made, at issuance and at renewal, went through this guest's nginx.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from acme import ISSUER, LIVE, PEBBLE_CA, RECEIVED, RECEIVER, changed_count, file_serial, name, playbook, served_serial

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
testinfra_hosts = [f"ansible://{RECEIVER}?ansible_inventory={INVENTORY}"]

CERTIFIED = ["zapier-mcp", "personas-api", "main-api"]  # infrastructure's names are skipped
WEBROOT = "/var/www/acme"
ROOT_PEM = "/root/pebble-root.pem"


@pytest.fixture(scope="module")
def issuer(host):
    return host.get_host(f"ansible://{ISSUER}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def own_address(host) -> str:
    return host.check_output("hostname -I").split()[0]


@pytest.fixture(scope="module")
def root_pem(host, issuer) -> str:
    """The root pebble signs with (it runs on the issuer), copied here to verify this guest's HTTPS."""
    root = issuer.check_output(f"curl -fsS --cacert {PEBBLE_CA} https://127.0.0.1:15000/roots/0")
    host.check_output(f"printf '%s\\n' '{root}' > {ROOT_PEM}")
    return ROOT_PEM


def test_this_guest_never_asked_the_acme_server_for_a_certificate(host):
    assert not host.file("/etc/letsencrypt/accounts").exists  # certbot never even registered here
    assert host.run("ls -A /etc/letsencrypt/renewal").stdout.strip() == ""
    for service in CERTIFIED:
        assert not host.file(f"{LIVE}/{service}").exists, service


def test_the_issuer_holds_one_certificate_lineage_per_service(issuer):
    """A second request for the same names would have made a second lineage, <service>-0001."""
    lineages = issuer.check_output("ls /etc/letsencrypt/renewal").split()
    assert {f"{service}.conf" for service in CERTIFIED} <= set(lineages)
    assert not [lineage for lineage in lineages if re.search(r"-\d{4}\.conf$", lineage)], lineages


def test_every_name_was_validated_through_this_guest(host):
    log = host.file("/var/log/nginx/access.log").content_string
    validated = set(re.findall(r'"(\S+)" "GET /\.well-known/acme-challenge/\S+ HTTP/1\.1" 200 ', log))
    assert {name(service) for service in CERTIFIED} <= validated, validated


def test_the_copies_are_readable_by_root_only(host):
    assert (host.file(RECEIVED).user, host.file(RECEIVED).mode) == ("root", 0o700)
    for service in CERTIFIED:
        assert host.file(f"{RECEIVED}/{service}").mode == 0o700, service
        for pem in ("fullchain.pem", "privkey.pem"):
            f = host.file(f"{RECEIVED}/{service}/{pem}")
            assert (f.user, f.group, f.mode) == ("root", "root", 0o600), f.path


@pytest.mark.parametrize("service", CERTIFIED)
def test_this_guest_serves_https_with_its_copy(host, root_pem, service):
    out = host.check_output(f"curl -fsS --max-time 5 --cacert {root_pem} --resolve {name(service)}:443:127.0.0.1 "
                            f"https://{name(service)}/health")
    assert json.loads(out)["service"] == service
    assert served_serial(host, service) == file_serial(host, service, RECEIVED)


def test_a_challenge_is_answered_here_or_by_the_issuer_and_an_unknown_one_is_404(host, issuer, own_address):
    challenges = f"{WEBROOT}/.well-known/acme-challenge"

    def fetch(token: str) -> tuple[str, str]:
        out = host.check_output(f"curl -s --max-time 5 -w '\\n%{{http_code}}' -H 'Host: {name('main-api')}' "
                                f"http://{own_address}/.well-known/acme-challenge/{token}")
        body, _, code = out.rpartition("\n")
        return code, body.strip()

    try:
        issuer.check_output(f"install -D -m 0644 /dev/null {challenges}/at-issuer && "
                            f"echo at-issuer > {challenges}/at-issuer")
        host.check_output(f"install -D -m 0644 /dev/null {challenges}/here && echo here > {challenges}/here")
        assert fetch("at-issuer") == ("200", "at-issuer")
        assert fetch("here") == ("200", "here")
        assert fetch("nowhere")[0] == "404"  # the issuer does not ask back: no loop
    finally:
        issuer.run(f"rm -f {challenges}/at-issuer")
        host.run(f"rm -f {challenges}/here")


def test_a_renewed_certificate_reaches_this_guest_at_the_next_run_by_a_reload(host, issuer):
    """The issuer's timer renews (forced here, validated through this guest); the next run of the
    certbot role copies the new certificate, and nginx reloads, not restarts, to serve it."""
    renewal = issuer.run(f"REQUESTS_CA_BUNDLE={PEBBLE_CA} certbot renew --force-renewal "
                         "--no-random-sleep-on-renew --cert-name zapier-mcp")
    assert renewal.rc == 0, renewal.stdout + renewal.stderr
    assert served_serial(host, "zapier-mcp") != file_serial(issuer, "zapier-mcp")  # still the old copy
    master = host.file("/run/nginx.pid").content_string.strip()
    host.check_output(f"install -d -m 0700 {RECEIVED}/retired-service")  # a copy nothing here serves

    assert changed_count(playbook("--tags", "certbot"))[RECEIVER] > 0
    for service in CERTIFIED:
        assert served_serial(host, service) == file_serial(issuer, service), service
    assert not host.file(f"{RECEIVED}/retired-service").exists
    assert host.file("/run/nginx.pid").content_string.strip() == master, "nginx was restarted, not reloaded"
    assert set(changed_count(playbook("--tags", "certbot")).values()) == {0}
