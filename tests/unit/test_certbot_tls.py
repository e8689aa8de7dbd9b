"""certbot's name filter and nginx's TLS templates, without a host (molecule/certbot runs them for real)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CERTBOT_DEFAULTS = yaml.safe_load((ROOT / "roles/certbot/defaults/main.yml").read_text())
NGINX_DEFAULTS = yaml.safe_load((ROOT / "roles/nginx/defaults/main.yml").read_text())
# nginx's paths derive from the layout (role fleet, a dependency), as Ansible resolves them.
LAYOUT_DEFAULTS = yaml.safe_load((ROOT / "roles/fleet/defaults/main.yml").read_text())
SKIP = CERTBOT_DEFAULTS["certbot_skip_domains_regex"]


def inventory_names(inventory: str) -> list[str]:
    catalog = yaml.safe_load((ROOT / f"inventories/{inventory}/group_vars/all/fleet_services.yml").read_text())
    return [n for spec in catalog["fleet_services"].values() for n in spec.get("nginx", {}).get("server_names", [])]


# --- which names certbot asks a public CA for ---------------------------------------------------


@pytest.mark.parametrize("inventory", ["lab", "production"])
def test_no_example_inventory_name_is_ever_sent_to_lets_encrypt(inventory):
    """The lab (.fleet.test) and the production example (example.com) must not reach the internet."""
    names = inventory_names(inventory)
    assert names
    assert [n for n in names if not re.search(SKIP, n)] == []


@pytest.mark.parametrize("server_name", [
    "app.fleet.test", "x.example", "a.invalid", "localhost", "printer.local", "db.internal",
    "nas.home.arpa", "example.com", "api.example.org", "www.example.net",
])
def test_reserved_names_are_skipped(server_name):
    assert re.search(SKIP, server_name)


@pytest.mark.parametrize("server_name", [
    "api.fleet.io", "mcp.zapier-tools.com", "example.company.com", "testing.dev", "notexample.com", "local.dev",
])
def test_real_names_are_requested(server_name):
    assert not re.search(SKIP, server_name)


def test_argument_spec_default_matches_the_regex_in_defaults():
    specs = yaml.safe_load((ROOT / "roles/certbot/meta/argument_specs.yml").read_text())
    assert specs["argument_specs"]["main"]["options"]["certbot_skip_domains_regex"]["default"] == SKIP


# --- nginx TLS templates ------------------------------------------------------------------------


def render(template: str, **extra: Any) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "roles/nginx/templates"),
        undefined=jinja2.StrictUndefined, trim_blocks=True,
    )
    env.filters["comment"] = lambda text: f"#\n# {text}\n#"
    variables = {**LAYOUT_DEFAULTS, **NGINX_DEFAULTS, "ansible_managed": "Ansible managed", **extra}
    if "__nginx_service" in extra and "__nginx_certificates" not in extra:
        # What tasks/tls.yml finds on the host that issues the certificate (certbot's live directory).
        name = extra["__nginx_service"]["name"]
        variables["__nginx_certificates"] = {
            name: {"dir": f"/etc/letsencrypt/live/{name}", "issuer": None, "issuer_address": None}}
    for _ in range(3):  # a default may name another that names a third
        variables = {name: env.from_string(value).render(**variables) if isinstance(value, str) else value
                     for name, value in variables.items()}
    return env.get_template(template).render(**variables)


def service(name: str, location: str = "/", names: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "upstream": f"fleet_{name.replace('-', '_')}",
            "nginx": {"server_names": [f"{name}.example.org"] if names is None else names, "location": location,
                      "rate_limit": None}}


def servers(config: str) -> list[str]:
    """The text of each top-level server { } block."""
    blocks: list[str] = []
    current: list[str] = []
    depth = 0
    for line in config.splitlines():
        if depth == 0 and line.startswith("server {"):
            current = []
        depth += line.count("{") - line.count("}")
        current.append(line)
        if depth == 0 and current and current[0].startswith("server {"):
            blocks.append("\n".join(current))
            current = []
    return blocks


def test_a_service_without_a_certificate_is_plain_http_with_the_acme_path():
    config = render("site.conf.j2", __nginx_service=service("main-api"), __nginx_tls_services=[])
    (only,) = servers(config)
    assert "listen 80;" in only and "443" not in only and "return 301" not in only
    assert "include /etc/nginx/fleet/snippets/acme-challenge.conf;" in only
    assert "proxy_pass http://fleet_main_api;" in only


def test_a_service_with_a_certificate_serves_https_and_redirects_http():
    config = render("site.conf.j2", __nginx_service=service("main-api"), __nginx_tls_services=["main-api"])
    http, https = servers(config)
    assert "include /etc/nginx/fleet/snippets/acme-challenge.conf;" in http
    assert "if ($fleet_https_redirect)" in http and "return 301 https://$host$request_uri;" in http
    assert "listen 443 ssl http2;" in https and "listen [::]:443 ssl http2;" in https
    assert "ssl_certificate /etc/letsencrypt/live/main-api/fullchain.pem;" in https
    assert "ssl_certificate_key /etc/letsencrypt/live/main-api/privkey.pem;" in https
    assert "proxy_pass http://fleet_main_api;" in https


def test_a_host_that_receives_the_certificate_serves_the_copy_and_passes_unknown_challenges_to_the_issuer():
    received = {"main-api": {"dir": "/etc/fleet/certificates/main-api", "issuer": "web-1",
                             "issuer_address": "10.0.0.5"}}
    for tls in ([], ["main-api"]):
        config = render("site.conf.j2", __nginx_service=service("main-api"), __nginx_tls_services=tls,
                        __nginx_certificates=received)
        http = servers(config)[0]
        # Its own tokens first (none, unless a test puts one there), then the issuer's answer.
        assert re.search(r"location \^~ /\.well-known/acme-challenge/ \{\s+root /var/www/acme;\s+"
                         r"default_type text/plain;\s+try_files \$uri @acme_issuer;", http)
        assert re.search(r"location @acme_issuer \{\s+proxy_pass http://10\.0\.0\.5:80;", http)
        assert "snippets/acme-challenge.conf" not in http
    https = servers(config)[1]
    assert "ssl_certificate /etc/fleet/certificates/main-api/fullchain.pem;" in https
    assert "ssl_certificate_key /etc/fleet/certificates/main-api/privkey.pem;" in https
    assert "acme" not in https


def test_no_server_block_has_an_add_header_that_would_drop_the_http_level_headers():
    for tls in ([], ["main-api"]):
        for location in ("/", "/api/"):
            config = render("site.conf.j2", __nginx_service=service("main-api", location), __nginx_tls_services=tls)
            assert "add_header" not in config
    assert "add_header" not in render(
        "default-server.conf.j2", __nginx_services=[service("main-api")], __nginx_tls_services=["main-api"]
    )


def test_a_service_on_a_sub_location_redirects_every_other_path_too():
    config = render("site.conf.j2", __nginx_service=service("main-api", "/api/"), __nginx_tls_services=["main-api"])
    http, _ = servers(config)
    assert "location /api/ {" in http and "location / {" in http


def test_a_non_standard_https_port_is_kept_in_the_redirect():
    config = render("site.conf.j2", __nginx_service=service("main-api"), __nginx_tls_services=["main-api"],
                    nginx_https_port=8443)
    assert "return 301 https://$host:8443$request_uri;" in config
    assert "listen 8443 ssl http2;" in config


def test_the_https_default_server_refuses_unknown_names_only_once_tls_is_served():
    plain = render("default-server.conf.j2", __nginx_services=[service("main-api")], __nginx_tls_services=[])
    assert "443" not in plain
    tls = render("default-server.conf.j2", __nginx_services=[service("main-api")], __nginx_tls_services=["main-api"])
    default_https = [s for s in servers(tls) if "443" in s]
    assert len(default_https) == 1
    assert "default_server" in default_https[0] and "ssl_reject_handshake on;" in default_https[0]
    assert "include /etc/nginx/fleet/snippets/acme-challenge.conf;" in servers(tls)[0]


def test_tls_settings_are_mozilla_intermediate_with_hsts_on_https_only():
    config = render("tls.conf.j2")
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in config
    ciphers = re.search(r"ssl_ciphers (\S+);", config).group(1).split(":")  # type: ignore[union-attr]
    assert ciphers and all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in ciphers)
    assert "ssl_prefer_server_ciphers off;" in config and "ssl_session_tickets off;" in config
    assert re.search(r'map \$scheme \$fleet_hsts \{\s+https "max-age=63072000";\s+default "";', config)
    assert "add_header Strict-Transport-Security $fleet_hsts always;" in config
    assert '"127.0.0.1" 0;' in config and '"::1" 0;' in config and "default 1;" in config


def test_the_acme_location_wins_over_service_locations():
    config = render("acme-challenge.conf.j2")
    assert "location ^~ /.well-known/acme-challenge/ {" in config
    assert "root /var/www/acme;" in config
