"""A lab's files: where it keeps them (Paths), the locks between commands, the state file, the
generated inventory and the SSH key, shared by all labs. Stdlib only (and ssh-keygen).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from . import model
from .dockerctl import Clock, run

REPO_ROOT = Path(__file__).resolve().parent.parent
INVENTORY_VARS_DIRS = ("group_vars", "host_vars")  # of inventories/lab, linked next to a named lab's


@dataclass(frozen=True)
class Paths:
    """Where one lab keeps its files. The default lab: .lab/ and inventories/lab/hosts.yml (as
    before named labs); a named lab: everything in .lab/NAME/. The SSH key, the dockerd record and
    the build/network locks are shared, in .lab/."""

    repo: Path
    name: str = model.DEFAULT_LAB

    @property
    def is_default(self) -> bool:
        return self.name == model.DEFAULT_LAB

    @property
    def shared_dir(self) -> Path:
        return self.repo / ".lab"

    @property
    def state_dir(self) -> Path:
        return self.shared_dir if self.is_default else self.shared_dir / self.name

    @property
    def ssh_key(self) -> Path:
        return self.shared_dir / "ssh" / "id_ed25519"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def build_lock(self) -> Path:
        return self.shared_dir / "build.lock"

    @property
    def network_lock(self) -> Path:
        return self.shared_dir / "network.lock"

    @property
    def dockerd_lock(self) -> Path:
        return self.shared_dir / "dockerd.lock"

    @property
    def inventory(self) -> Path:
        if self.is_default:
            return self.repo / "inventories" / "lab" / "hosts.yml"
        return self.state_dir / "hosts.yml"

    @property
    def release_store(self) -> Path:
        return self.repo / "build" / "releases"

    def for_lab(self, name: str) -> Paths:
        return Paths(self.repo, name)


# --- locks ---------------------------------------------------------------------------------------


@contextmanager
def locked(lock_file: Path, what: str = "another `python3 -m lab` command") -> Iterator[None]:
    """Hold an exclusive flock on lock_file (created when missing).

    The lock file may be deleted by its holder (`down` of a named lab removes .lab/NAME/): a waiter
    that then gets the lock on the deleted file notices and locks the path anew.
    """
    while True:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = lock_file.open("a")
        except FileNotFoundError:  # the directory went away between mkdir and open
            continue
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for {what} to finish ({lock_file}) ...", flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.stat(lock_file).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            f.close()
            raise
        if same:
            break
        f.close()
    try:
        yield
    finally:
        f.close()


# --- the state file and the inventory -------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_state(paths: Paths) -> dict[str, Any]:
    try:
        data = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_lab_files(paths: Paths, hosts: list[model.Host], net: IPv4Network, tag: str) -> None:
    """What `up` leaves for Ansible and for the next command: the inventory (with a named lab's
    group_vars link) and the state file."""
    write_atomic(paths.inventory, model.render_inventory(hosts, paths.ssh_key, paths.release_store, paths.name))
    if not paths.is_default:
        link_inventory_vars(paths)
    state = {
        "name": paths.name,
        "subnet": str(net),
        "image": tag,
        "hosts": {h.name: {"address": h.address, "group": h.group} for h in hosts},
    }
    write_atomic(paths.state_file, json.dumps(state, indent=2) + "\n")


def link_inventory_vars(paths: Paths) -> None:
    """A named lab's inventory sits in .lab/NAME/: link inventories/lab/group_vars (and host_vars)
    next to it, so that `-i .lab/NAME/hosts.yml` sees the same variables as the default lab."""
    for sub in INVENTORY_VARS_DIRS:
        source = paths.repo / "inventories" / "lab" / sub
        link = paths.inventory.parent / sub
        if link.is_symlink() or not source.is_dir():
            continue
        link.symlink_to(os.path.relpath(source, link.parent))


def lab_dirs(paths: Paths) -> list[str]:
    """Names of the named labs that have a directory in .lab/."""
    if not paths.shared_dir.is_dir():
        return []
    found = []
    for d in sorted(paths.shared_dir.iterdir()):
        try:
            model.validate_name(d.name)
        except ValueError:
            continue
        if d.is_dir() and not d.is_symlink():
            found.append(d.name)
    return found


# --- the SSH key (put into the hosts by objects.inject_key) ---------------------------------------


def ensure_keypair(paths: Paths, clock: Clock) -> str:
    """The lab's SSH key (created once, shared by all labs); returns the public key line."""
    key = paths.ssh_key
    pub = key.with_name(key.name + ".pub")
    with locked(key.with_name("lock"), "another command creating the SSH key"):
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(key.parent, 0o700)
            pub.unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-lab", "-f", str(key)])
            clock.say(f"created SSH key {key}")
        if not pub.exists():
            write_atomic(pub, run(["ssh-keygen", "-y", "-f", str(key)]).stdout)
        os.chmod(key, 0o600)
    return pub.read_text().strip()
