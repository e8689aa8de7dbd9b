"""nginx's rate limit templates, rendered for catalogs the validator accepted (no host; the lab test
in tests/integration/test_site_lab.py sends real bursts, test_catalog_render_guest.py runs nginx -t)."""

from __future__ import annotations

import re
from typing import Any

from filter_plugins.fleet_catalog import fleet_validated_catalog
from tests.unit.test_certbot_tls import render, servers

GROUPS = {"fleet": ["h1"]}
LIMIT = "limit_req zone=fleet_rate_main_api burst=4 nodelay;"


def services(**nginx: dict[str, Any]) -> list[dict[str, Any]]:
    """The normalised services of a catalog of one host, with the given `nginx` section per service."""
    raw = {name.replace("_", "-"): {
        "port": 8000 + 10 * index, "group": "fleet", "command": "python3 app.py --port {port}",
        "release": {"version": "1.0.0", "archive": "/srv/releases/app-{version}.tar.gz"}, "nginx": spec,
    } for index, (name, spec) in enumerate(nginx.items())}
    return list(fleet_validated_catalog(raw, GROUPS).values())


def locations(server: str) -> dict[str, str]:
    """The text of each `location` block of one server block, by its header."""
    found: dict[str, str] = {}
    lines = server.splitlines()
    for start, line in enumerate(lines):
        header = re.match(r"\s+location (.+?) \{$", line)
        if not header:
            continue
        depth, body = 0, []
        for inner in lines[start:]:
            depth += inner.count("{") - inner.count("}")
            body.append(inner)
            if depth == 0:
                break
        found[header.group(1)] = "\n".join(body)
    return found


def site(service: dict[str, Any], tls: bool, issuer: str | None = None) -> list[str]:
    extra: dict[str, Any] = {}
    if issuer:
        extra["__nginx_certificates"] = {service["name"]: {"dir": "/etc/fleet/certificates/main-api",
                                                          "issuer": issuer, "issuer_address": "10.0.0.5"}}
    config = render("site.conf.j2", __nginx_service=service, __nginx_tls_services=[service["name"]] if tls else [],
                    **extra)
    return servers(config)


def test_a_limited_service_is_limited_in_every_proxied_location_and_never_on_acme():
    limited = services(main_api={"server_names": ["api.test"], "location": "/api/",
                                 "rate_limit": {"rate": 2, "burst": 4}})[0]
    for tls in (False, True):
        for issuer in (None, "web-1"):
            blocks = site(limited, tls, issuer)
            assert len(blocks) == (2 if tls else 1)
            for block in blocks:
                found = locations(block)
                assert LIMIT in found["/api/"], block
                others = {header: text for header, text in found.items() if header != "/api/"}
                assert all("limit_req" not in text for text in others.values()), others
            # The ACME challenges (served here or passed to the issuer) are never limited.
            assert "limit_req" not in "".join(
                text for header, text in locations(blocks[0]).items() if "acme" in header)
            if issuer:
                assert "location ^~ /.well-known/acme-challenge/" in blocks[0]
                assert "@acme_issuer" in locations(blocks[0])


def test_the_shared_acme_snippet_has_no_limit():
    assert "limit_req" not in render("acme-challenge.conf.j2")


def test_a_service_without_a_limit_has_no_limit_req():
    free = services(main_api={"server_names": ["api.test"]})[0]
    for tls in (False, True):
        assert "limit_req" not in "\n".join(site(free, tls))


def test_the_default_server_limits_only_the_limited_location_routed_services():
    on_host = services(main_api={"location": "/main/", "rate_limit": {"rate": 2, "burst": 4}},
                       other={"location": "/other/"},
                       named={"server_names": ["named.test"], "rate_limit": {"rate": 9}})
    for tls in ([], ["named"]):
        config = render("default-server.conf.j2", __nginx_services=on_host, __nginx_tls_services=tls)
        found = locations(servers(config)[0])
        assert LIMIT in found["/main/"]
        assert "proxy_pass http://fleet_main_api/;" in found["/main/"]
        assert [header for header, text in found.items() if "limit_req" in text] == ["/main/"]
        assert "include /etc/nginx/fleet/snippets/acme-challenge.conf;" in servers(config)[0]


def test_http_level_file_has_one_zone_per_limited_service_keyed_by_client_address_but_not_loopback():
    on_host = services(main_api={"server_names": ["api.test"], "rate_limit": {"rate": 2, "burst": 4}},
                       personas_api={"server_names": ["personas.test"]},
                       infra={"location": "/infra/", "rate_limit": {"rate": 50}})
    config = render("rate-limits.conf.j2", __nginx_services=on_host)
    zones = re.findall(r"^limit_req_zone (\S+) zone=(\w+):(\w+) rate=(\d+)r/s;$", config, re.MULTILINE)
    assert zones == [("$fleet_rate_limit_key", "fleet_rate_infra", "10m", "50"),
                     ("$fleet_rate_limit_key", "fleet_rate_main_api", "10m", "2")]
    assert "limit_req_status 429;" in config and "limit_req_log_level warn;" in config
    # Loopback gets an empty key (nginx does not count it), every other client its own address.
    assert re.search(r'geo \$fleet_rate_limited \{\s+default 1;\s+"127\.0\.0\.1" 0;\s+"::1" 0;\s+\}', config)
    assert re.search(r'map \$fleet_rate_limited \$fleet_rate_limit_key \{\s+0 "";\s+default \$binary_remote_addr;',
                     config)


def test_http_level_file_without_limited_services_declares_no_zone():
    config = render("rate-limits.conf.j2", __nginx_services=services(main_api={"server_names": ["api.test"]}))
    assert "limit_req_zone" not in config
    assert "limit_req_status 429;" in config


def test_every_zone_a_location_uses_is_declared():
    on_host = services(a={"server_names": ["a.test"], "rate_limit": {"rate": 1}},
                       b={"location": "/b/", "rate_limit": {"rate": 3, "burst": 0}},
                       c={"server_names": ["c.test"]})
    declared = set(re.findall(r"zone=(\w+):", render("rate-limits.conf.j2", __nginx_services=on_host)))
    used = set(re.findall(r"limit_req zone=(\w+) ",
                          render("default-server.conf.j2", __nginx_services=on_host, __nginx_tls_services=[])))
    for service in on_host:
        if service["nginx"]["server_names"]:
            used |= set(re.findall(r"limit_req zone=(\w+) ", "\n".join(site(service, tls=True))))
    assert declared == used == {"fleet_rate_a", "fleet_rate_b"}
    assert "limit_req zone=fleet_rate_b burst=0 nodelay;" in render(
        "default-server.conf.j2", __nginx_services=on_host, __nginx_tls_services=[])
