"""What both guests' tests share: the scenario's names and paths, reading certificates, converging."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ISSUER = "fleet-mol-certbot-1"  # each service's certificate_issuer: the first of its hosts
RECEIVER = "fleet-mol-certbot-2"
LIVE = "/etc/letsencrypt/live"
RECEIVED = "/etc/fleet/certificates"
PEBBLE_CA = "/etc/pebble/tls/cert.pem"  # pebble's own HTTPS certificate: what certbot trusts
SCENARIO = Path(__file__).resolve().parent.parent


def name(service: str) -> str:
    return f"{service}.fleet.test"


def served_serial(host, service: str) -> str:
    """The serial of the certificate the guest's nginx presents for the service's name."""
    out = host.check_output(
        f"openssl s_client -connect 127.0.0.1:443 -servername {name(service)} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )
    return out.strip().removeprefix("serial=")


def file_serial(host, service: str, directory: str = LIVE) -> str:
    out = host.check_output(f"openssl x509 -noout -serial -in {directory}/{service}/fullchain.pem")
    return out.strip().removeprefix("serial=")


def playbook(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this scenario's converge.yml against both guests, as molecule does."""
    result = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "converge.yml"), *args],
        capture_output=True, text=True, timeout=900, env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    return result


def changed_count(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """{guest: changed tasks} from the run's recap."""
    recap = result.stdout.split("PLAY RECAP", 1)[1]
    return {host: int(count) for host, count in re.findall(r"^(\S+)\s*:.*?changed=(\d+)", recap, re.MULTILINE)}
