#!/usr/bin/env python3
"""Lay out an ansible-runner private data dir the way AWX does for a job, from this repository.

    python3 awx/private_data_dir.py DEST --inventory inventories/production \\
        --extravars '{"service": "main-api", "version": "", "batch_size": 1}' [--ssh-key KEY]
    ansible-runner run DEST -p hot_deploy.yml

AWX (and ansible-runner from CI) runs a playbook from a directory holding:

    env/extravars   the job's extra vars: the survey answers (JSON)
    env/envvars     environment variables for ansible-playbook (JSON)
    env/settings    runner settings, e.g. job_timeout (JSON)
    env/ssh_key     the machine credential's private key, loaded into an ssh-agent (optional)
    inventory/      the inventory: hosts file(s) plus their group_vars/ and host_vars/
    project/        the project: a checkout of this repository (AWX's project sync)

The playbooks run from project/ unchanged: ansible.cfg there supplies roles and filter plugins,
and runner's `-i inventory/` replaces ansible.cfg's lab inventory. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Never copied into project/: what a fresh clone would not have.
PROJECT_EXCLUDES = (".git", ".venv", ".lab", "build", "__pycache__", ".pytest_cache", ".ruff_cache",
                    ".mypy_cache")
INVENTORY_VARS_DIRS = ("group_vars", "host_vars")


def project_files(repo: Path) -> list[Path]:
    """The repository's files as a clone (plus uncommitted work) has them, relative to `repo`.

    Tracked and untracked-but-not-ignored files from git; without git, every file outside
    PROJECT_EXCLUDES.
    """
    try:
        listed = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True, timeout=60,
        ).stdout.decode()
        names = [Path(name) for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = [p.relative_to(repo) for p in repo.rglob("*") if p.is_file() or p.is_symlink()]
    return sorted(
        name for name in names
        if not set(name.parts) & set(PROJECT_EXCLUDES) and (repo / name).exists()
    )


def copy_project(repo: Path, dest: Path) -> None:
    """Copy the repository's files into `dest` (symlinks stay symlinks, as git checks them out)."""
    for name in project_files(repo):
        source, target = repo / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)


def copy_inventory(sources: Iterable[Path], dest: Path) -> None:
    """Copy each inventory source into `dest`: a directory's contents, or a file with the
    group_vars/ and host_vars/ beside it (as ansible reads them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
            continue
        if not source.is_file():
            raise FileNotFoundError(f"inventory source {source} does not exist")
        shutil.copy2(source, dest / source.name)
        for vars_dir in INVENTORY_VARS_DIRS:
            beside = source.parent / vars_dir
            if beside.is_dir():
                shutil.copytree(beside, dest / vars_dir, dirs_exist_ok=True)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to a file that has `mode` from the moment it exists: written then chmod'ed, a
    secret would sit readable (per the umask) in between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(fd, mode)  # a file that existed keeps its mode through O_CREAT; the umask may drop bits
        handle.write(text)


def write_json(path: Path, data: Mapping[str, Any], mode: int = 0o600) -> None:
    write_private(path, json.dumps(dict(data), indent=2, sort_keys=True) + "\n", mode)


def make_private_data_dir(
    dest: Path,
    inventory: Iterable[Path],
    extravars: Mapping[str, Any] | None = None,
    envvars: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
    ssh_key: Path | None = None,
    repo: Path = ROOT,
) -> Path:
    """Create `dest` (which must not exist) laid out as AWX lays out a job; returns `dest`."""
    if dest.exists():
        raise FileExistsError(f"{dest} exists; ansible-runner needs a fresh private data dir per job")
    env = dest / "env"
    env.mkdir(parents=True)
    write_json(env / "extravars", extravars or {})
    write_json(env / "envvars", {"ANSIBLE_FORCE_COLOR": "0", **(envvars or {})})
    write_json(env / "settings", settings or {})
    if ssh_key is not None:
        write_private(env / "ssh_key", ssh_key.read_text())
    copy_inventory(inventory, dest / "inventory")
    copy_project(repo, dest / "project")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path, help="the private data dir to create (must not exist)")
    parser.add_argument("--inventory", "-i", type=Path, action="append", required=True,
                        help="inventory file or directory (repeatable)")
    parser.add_argument("--extravars", "-e", default="{}", help="extra vars as a JSON object")
    parser.add_argument("--ssh-key", type=Path, help="private key to hand runner as env/ssh_key")
    parser.add_argument("--job-timeout", type=int, default=0, help="seconds before runner stops the job")
    args = parser.parse_args(argv)
    try:
        extravars = json.loads(args.extravars)
    except json.JSONDecodeError as error:
        parser.error(f"--extravars must be a JSON object: {error}")
    if not isinstance(extravars, dict):
        parser.error("--extravars must be a JSON object, e.g. '{\"service\": \"main-api\"}'")
    settings = {"job_timeout": args.job_timeout} if args.job_timeout else {}
    try:
        make_private_data_dir(args.dest, args.inventory, extravars, settings=settings, ssh_key=args.ssh_key)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
