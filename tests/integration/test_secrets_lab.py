"""No secret in any output: a canary value in every kind of secret fleet handles, site.yml, a deploy
(through ansible-runner, as AWX runs it) and a backup at -vvv, then a grep of everything.

The secrets: a service's environment value from an ansible-vault file, the health webhook URL
(its token in the path), the backup password, a repository credential (backup_repository_environment)
and a repository URL with a password in it. None may appear in the playbooks' output, in the runner's
artifacts (AWX's job events), in the host's logs, or in any file on the host that is not root's
alone (0600-like): the files that must hold them (the slot's environment file, the backup and
health configurations) are root-only.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import ansible_runner
import pytest
import yaml

from .conftest import ROOT, Lab
from .helpers import HOST1, state

sys.path.insert(0, str(ROOT / "awx"))
import private_data_dir

SECRETS = {
    "environment": "canaryEnv-7f3a9c0d",
    "webhook": "canaryHook-51d2b8e4",
    "password": "canaryPass-88e1c2a7",
    "repository_environment": "canaryRepoEnv-4b7d90f1",
    "repository_url": "canaryRepoUrl-3c6a1e52",
}
SERVICE = "main-api"


def found_in(text: str) -> list[str]:
    return [kind for kind, secret in SECRETS.items() if secret in text]


@pytest.fixture(scope="module")
def canary(lab: Lab, tmp_path_factory: pytest.TempPathFactory):
    """Extra-vars files with the canaries: the vault file, the catalog and settings that use it."""
    work = tmp_path_factory.mktemp("secrets")
    password_file = work / "vault-password"
    password_file.write_text("canary-vault-password\n")
    vault = work / "vault.yml"
    vault.write_text(yaml.safe_dump({
        "vault_canary_token": SECRETS["environment"],
        "vault_health_check_webhook_url": f"http://127.0.0.1:9/hooks/{SECRETS['webhook']}",
        "vault_backup_password": SECRETS["password"],
    }))
    subprocess.run([sys.executable, "-m", "ansible.cli.vault", "encrypt", "--vault-password-file",
                    str(password_file), str(vault)], check=True, capture_output=True, cwd=ROOT)
    catalog = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/fleet_services.yml").read_text())
    catalog["fleet_services"][SERVICE]["environment"]["API_TOKEN"] = "{{ vault_canary_token }}"
    settings = work / "settings.yml"
    settings.write_text(yaml.safe_dump({
        **catalog,
        "backup_password": "{{ vault_backup_password }}",
        # A repository of its own: the lab's is encrypted with the lab's password.
        "backup_repository": "/var/backups/fleet/canary",
        "backup_repository_environment": {"AWS_SECRET_ACCESS_KEY": SECRETS["repository_environment"]},
    }))
    remote = work / "remote-repository.yml"
    remote.write_text(yaml.safe_dump({
        "backup_repository": f"rest:https://fleet:{SECRETS['repository_url']}@127.0.0.1:9/fleet/",
    }))
    return {"vault": vault, "password_file": password_file, "settings": settings, "remote": remote, "work": work}


def run(lab: Lab, *args: str, ok: bool = True) -> str:
    result = lab.playbook(*args, "-vvv", "--limit", HOST1, check=False)
    out = result.stdout + result.stderr
    assert (result.returncode == 0) == ok, out[-6000:]
    return out


def test_no_secret_in_any_output_log_or_file(lab: Lab, canary):
    secrets_vars = ("-e", f"@{canary['vault']}", "-e", f"@{canary['settings']}",
                    "--vault-password-file", str(canary["password_file"]))
    tags = ("--tags", "service,nginx,backup,health_check")
    outputs = {}
    try:
        # site.yml applies the new secret through a slot switch, writes the backup and health configs.
        outputs["site.yml"] = run(lab, "site.yml", *tags, *secrets_vars)
        env_file = f"/etc/fleet/{SERVICE}/{state(lab, HOST1, SERVICE)['live_port']}.env"
        assert SECRETS["environment"] in lab.ssh(HOST1, f"cat {env_file}").stdout  # it did reach the host

        # A deploy as AWX runs it, at verbosity 3, with the secrets in its extra vars.
        artifacts = runner_restart(lab, canary)
        outputs["runner"] = artifacts

        # A backup now (the job fails its first health webhook post: nothing listens on port 9).
        outputs["awx/backup.yml"] = run(lab, "awx/backup.yml", *secrets_vars)
        lab.ssh(HOST1, "/usr/local/sbin/fleet-health || true")

        # A repository URL with a password in it: the converge fails to reach it, and so does a backup.
        remote = (*secrets_vars, "-e", f"@{canary['remote']}")
        outputs["site.yml (remote repository)"] = run(lab, "site.yml", "--tags", "backup", *remote, ok=False)
        outputs["awx/backup.yml (remote repository)"] = run(lab, "awx/backup.yml", *remote, ok=False)

        for name, text in outputs.items():
            assert found_in(text) == [], f"{name} shows {found_in(text)}"
        leaks = files_with_secrets(lab)
        assert [f for f in leaks if not f["root_only"]] == [], leaks
        live_env_file = f"/etc/fleet/{SERVICE}/{state(lab, HOST1, SERVICE)['live_port']}.env"  # the restart moved it
        assert {f["path"] for f in leaks} <= {live_env_file, "/etc/fleet/health.json", "/etc/fleet/backup/password",
                                              "/etc/fleet/backup/repository.env", "/etc/fleet/backup/config.json"}
    finally:
        lab.playbook("site.yml", *tags, "--limit", HOST1)  # the lab's own settings again
        lab.ssh(HOST1, "rm -rf /var/backups/fleet/canary")


def runner_restart(lab: Lab, canary) -> str:
    """hot_deploy.yml -e restart=true through ansible-runner at verbosity 3; its artifacts' text."""
    inventory = yaml.safe_load(lab.inventory.read_text())
    extravars = {
        "service": SERVICE, "restart": True,
        **yaml.safe_load(canary["settings"].read_text()),
        **yaml.safe_load(subprocess.run(
            [sys.executable, "-m", "ansible.cli.vault", "view", "--vault-password-file",
             str(canary["password_file"]), str(canary["vault"])],
            check=True, capture_output=True, text=True, cwd=ROOT).stdout),
    }
    data_dir = private_data_dir.make_private_data_dir(
        canary["work"] / "runner", [lab.inventory], extravars,
        envvars={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"},
        ssh_key=Path(inventory["all"]["vars"]["ansible_ssh_private_key_file"]))
    result = ansible_runner.run(private_data_dir=str(data_dir), playbook="hot_deploy.yml", ident="canary",
                                limit=HOST1, verbosity=3, quiet=True)
    assert result.status == "successful", result.stdout.read()[-4000:]
    artifacts = data_dir / "artifacts" / "canary"
    return "\n".join(path.read_text(errors="replace") for path in artifacts.rglob("*") if path.is_file())


FIND = r"""
import json, os, stat, sys
secrets = json.loads(sys.argv[1])
hits = []
for top in ("/etc", "/var", "/opt", "/tmp", "/root", "/home", "/usr/local", "/run"):
    for base, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 50_000_000:
                    continue
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            kinds = [kind for kind, secret in secrets.items() if secret.encode() in data]
            if kinds:
                hits.append({"path": path, "kinds": kinds, "mode": oct(st.st_mode & 0o7777), "uid": st.st_uid,
                             "root_only": st.st_uid == 0 and not st.st_mode & 0o077})
print(json.dumps(hits))
"""


def files_with_secrets(lab: Lab) -> list[dict]:
    """Every file on the host that holds a canary, its mode and owner (/proc and /sys aside)."""
    out = lab.ssh(HOST1, f"python3 -c {shlex.quote(FIND)} {shlex.quote(json.dumps(SECRETS))}").stdout
    return list(json.loads(out))
