"""awx/private_data_dir.py lays out an ansible-runner private data dir the way AWX does."""

from __future__ import annotations

import builtins
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "awx"))
import private_data_dir  # noqa: E402  (awx/ is a directory of tools, not a package)

PRODUCTION = ROOT / "inventories" / "production"


def test_the_layout_is_awxs(tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("not a real key\n")
    dest = private_data_dir.make_private_data_dir(
        tmp_path / "job", [PRODUCTION / "hosts.yml"], {"service": "main-api", "batch_size": 2},
        envvars={"EXTRA": "1"}, settings={"job_timeout": 60}, ssh_key=key,
    )
    assert json.loads((dest / "env/extravars").read_text()) == {"service": "main-api", "batch_size": 2}
    assert json.loads((dest / "env/envvars").read_text()) == {"ANSIBLE_FORCE_COLOR": "0", "EXTRA": "1"}
    assert json.loads((dest / "env/settings").read_text()) == {"job_timeout": 60}
    assert (dest / "env/ssh_key").read_text() == "not a real key\n"
    for secret in ("env/ssh_key", "env/extravars", "env/envvars"):
        assert (dest / secret).stat().st_mode & 0o777 == 0o600, secret
    assert (dest / "inventory/hosts.yml").read_text() == (PRODUCTION / "hosts.yml").read_text()
    assert (dest / "inventory/group_vars/all/fleet_services.yml").is_file()


def test_secrets_are_never_readable_by_others_not_even_for_a_moment(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """Each file of env/ is looked at the instant it is opened, before a byte of it is written."""
    env = tmp_path / "job" / "env"
    modes: dict[str, int] = {}

    def watching(real: Callable[..., Any]) -> Callable[..., Any]:
        def opened(path: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(path, *args, **kwargs)
            if isinstance(path, str | os.PathLike) and Path(path).parent == env:  # not os.fdopen's fd
                modes.setdefault(Path(path).name, os.stat(path).st_mode & 0o777)
            return result
        return opened

    for module, name in ((os, "open"), (io, "open"), (builtins, "open")):
        monkeypatch.setattr(module, name, watching(getattr(module, name)))
    key = tmp_path / "key"
    key.write_text("not a real key\n")
    old_umask = os.umask(0o022)
    try:
        private_data_dir.make_private_data_dir(tmp_path / "job", [PRODUCTION / "hosts.yml"], ssh_key=key)
    finally:
        os.umask(old_umask)
    assert modes == dict.fromkeys(("extravars", "envvars", "settings", "ssh_key"), 0o600)


def test_an_existing_file_is_made_private_before_it_is_written(tmp_path: Path):
    target = tmp_path / "ssh_key"
    target.write_text("old")
    target.chmod(0o644)
    private_data_dir.write_private(target, "secret\n")
    assert (target.stat().st_mode & 0o777, target.read_text()) == (0o600, "secret\n")


def test_the_project_is_the_repository_as_a_clone_has_it(tmp_path: Path):
    dest = private_data_dir.make_private_data_dir(tmp_path / "job", [PRODUCTION])
    project = dest / "project"
    for path in ("site.yml", "hot_deploy.yml", "rollback.yml", "ansible.cfg", "roles/catalog/tasks/main.yml",
                 "filter_plugins/fleet_catalog.py", "awx/configure.yml"):
        assert (project / path).is_file(), path
    for absent in (".git", ".venv", ".lab", "build"):
        assert not (project / absent).exists(), absent
    staging = project / "inventories/staging/group_vars/all/fleet_services.yml"
    assert staging.is_symlink() and staging.resolve().is_file(), "relative symlinks stay links"


def test_a_directory_inventory_is_copied_whole(tmp_path: Path):
    dest = private_data_dir.make_private_data_dir(tmp_path / "job", [PRODUCTION])
    assert (dest / "inventory/hosts.yml").is_file()
    assert (dest / "inventory/group_vars/all/vault.yml.example").is_file()


def test_an_existing_directory_is_refused(tmp_path: Path):
    (tmp_path / "job").mkdir()
    with pytest.raises(FileExistsError, match="fresh private data dir"):
        private_data_dir.make_private_data_dir(tmp_path / "job", [PRODUCTION])


def test_a_missing_inventory_is_refused(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        private_data_dir.make_private_data_dir(tmp_path / "job", [tmp_path / "nowhere.yml"])


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    dest = tmp_path / "job"
    assert private_data_dir.main([str(dest), "-i", str(PRODUCTION), "-e", '{"service": "main-api"}',
                                  "--job-timeout", "900"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert json.loads((dest / "env/extravars").read_text()) == {"service": "main-api"}
    assert json.loads((dest / "env/settings").read_text()) == {"job_timeout": 900}
    with pytest.raises(SystemExit):
        private_data_dir.main([str(tmp_path / "other"), "-i", str(PRODUCTION), "-e", "[1]"])
    assert "must be a JSON object" in capsys.readouterr().err
