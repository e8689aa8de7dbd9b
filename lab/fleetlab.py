"""`python3 -m lab`: local fleets of Debian 12 hosts (docker containers with systemd and sshd).

    python3 -m lab dockerd                  make sure a Docker daemon answers
    python3 -m lab build [--force]          build the image once (cached by recipe hash)
    python3 -m lab up [--hosts N] [--gpu M] start fleet-lab-1..N, write inventories/lab/hosts.yml
    python3 -m lab status                   hosts, addresses, state
    python3 -m lab ssh HOST [cmd ...]       ssh into a host (HOST: fleet-lab-2 or just 2)
    python3 -m lab inventory                print the inventory path (for `ansible -i "$(...)"`)
    python3 -m lab down [--all] [--purge]   remove hosts, network, inventory (--all: every lab;
                                            --purge: image, .lab/ and a dockerd it started too)

Named labs run side by side: `python3 -m lab --name NAME ...` (or FLEET_LAB_NAME=NAME; the option
wins) works on hosts NAME-1..N on docker network NAME (172.29.X.0/24, X derived from the name),
with its inventory at .lab/NAME/hosts.yml. Without a name it is the default lab, `fleet-lab`.

Stdlib Python and the docker CLI only: it does not need the project's virtualenv.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from . import build, model
from .dockerctl import (
    Clock,
    LabError,
    daemon_answers,
    docker,
    docker_json,
    ensure_dockerd,
    run,
    stop_dockerd_if_ours,
)

BOOT_TIMEOUT_S = 120.0
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


# --- small helpers ---------------------------------------------------------------------------------


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


def lab_locked(paths: Paths) -> Any:
    """One lab-changing command (up/down) per lab at a time; different labs run in parallel."""
    return locked(paths.lock_file, f"another `python3 -m lab` command on lab {paths.name}")


def image_locked(paths: Paths) -> Any:
    """One image build (or purge) at a time, whichever lab asks for it."""
    return locked(paths.build_lock, "another build of the lab image")


def dockerd_up(paths: Paths, clock: Clock) -> None:
    """ensure_dockerd, with at most one of several parallel commands starting dockerd."""
    if daemon_answers():
        return
    with locked(paths.dockerd_lock, "another command starting dockerd"):
        ensure_dockerd(paths.shared_dir, clock)


def ssh_argv(key: Path, address: str, command: Sequence[str] = (), batch: bool = True) -> list[str]:
    argv = [
        "ssh",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
    ]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    return [*argv, f"root@{address}", *command]


def resolve_name(option: str | None) -> str:
    """--name, else FLEET_LAB_NAME, else the default lab; validated."""
    name = option or os.environ.get(model.NAME_ENV) or model.DEFAULT_LAB
    try:
        return model.validate_name(name)
    except ValueError as e:
        source = "--name" if option else model.NAME_ENV
        raise LabError(f"{source}: {e}") from None


def subnet_from_env(name: str = model.DEFAULT_LAB) -> IPv4Network | None:
    """The subnet the lab must have: FLEET_LAB_SUBNET, else the default lab's fixed one; None for a
    named lab without FLEET_LAB_SUBNET (its subnet is derived from its name: see ensure_network)."""
    text = os.environ.get(model.SUBNET_ENV) or (model.DEFAULT_SUBNET if name == model.DEFAULT_LAB else "")
    if not text:
        return None
    try:
        return model.parse_subnet(text)
    except ValueError as e:
        raise LabError(str(e)) from None


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


# --- docker objects -------------------------------------------------------------------------------


def all_lab_containers() -> dict[str, dict[str, Any]]:
    """name -> `docker inspect` of every container with a fleet-lab label, whatever its lab."""
    ids = docker("ps", "-aq", "--filter", f"label={model.LABEL}").stdout.split()
    if not ids:
        return {}
    return {str(c["Name"]).lstrip("/"): c for c in docker_json("inspect", *ids)}


def label_lab(info: dict[str, Any]) -> str:
    """The lab a container's or network's `docker inspect` says it belongs to ('' if none)."""
    labels = info.get("Labels")
    if labels is None:
        config = info.get("Config")
        labels = config.get("Labels") if isinstance(config, dict) else None
    value = labels.get(model.LABEL) if isinstance(labels, dict) else None
    return model.lab_of_label(str(value)) if value is not None else ""


def lab_containers(name: str = model.DEFAULT_LAB) -> dict[str, dict[str, Any]]:
    """name -> `docker inspect` of this lab's containers (label fleet-lab=<lab>; "1": the default lab)."""
    return {n: c for n, c in all_lab_containers().items() if label_lab(c) == name}


def container_address(info: dict[str, Any], network: str = model.DEFAULT_LAB) -> str:
    nets = info.get("NetworkSettings", {}).get("Networks", {})
    net = nets.get(network) if isinstance(nets, dict) else None
    return str(net.get("IPAddress", "")) if isinstance(net, dict) else ""


def container_matches(info: dict[str, Any], image: str, host: model.Host, network: str = model.DEFAULT_LAB) -> bool:
    """Keep a container only when it runs, from the current image, at the planned address."""
    state = info.get("State", {})
    running = isinstance(state, dict) and bool(state.get("Running"))
    return running and info.get("Image") == image and container_address(info, network) == host.address


def remove_containers(names: Sequence[str]) -> None:
    if names:
        docker("rm", "-f", "-v", *names, timeout=120)


def all_networks() -> list[dict[str, Any]]:
    ids = docker("network", "ls", "-q").stdout.split()
    return docker_json("network", "inspect", *ids) if ids else []


def create_network(name: str, net: IPv4Network) -> str:
    """`docker network create`; '' when done, else docker's complaint."""
    proc = docker(
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        str(net),
        "--gateway",
        model.gateway(net),
        "--label",
        f"{model.LABEL}={name}",
        name,
        check=False,
    )
    return "" if proc.returncode == 0 else proc.stderr.strip() or proc.stdout.strip() or "failed"


def ensure_network(paths: Paths, want: IPv4Network | None, clock: Clock) -> IPv4Network:
    """The lab's network (named like the lab), created when missing; returns its subnet.

    want: the subnet it must have (FLEET_LAB_SUBNET, or the default lab's): a network with another
    one is recreated. None (a named lab): keep the network's subnet if it exists, else take the
    first of the name's candidates (model.subnet_candidates) that overlaps no docker network.
    """
    name = paths.name
    found = docker_json("network", "inspect", name)
    if found:
        info = found[0]
        if label_lab(info) != name:
            raise LabError(
                f"a docker network named {name} exists that this tool did not create for lab {name}: "
                f"remove it (docker network rm {name}) or pick another --name"
            )
        subnets = model.network_subnets(found).get(name, [])
        if want is None and len(subnets) == 1:
            return subnets[0]
        if want is not None and subnets == [want]:
            return want
        clock.say(f"network {name} has subnet {', '.join(map(str, subnets))}, want {want or 'another'}: recreating")
        remove_containers(list(lab_containers(name)))
        docker("network", "rm", name)
    with locked(paths.network_lock, "another lab creating its network"):
        tried: list[IPv4Network] = []
        while True:
            if want is not None:
                net = want
            else:
                taken = [n for nets in model.network_subnets(all_networks()).values() for n in nets]
                try:
                    net = model.choose_subnet(name, taken + tried)
                except ValueError as e:
                    raise LabError(str(e)) from None
            error = create_network(name, net)
            if not error:
                break
            if want is None and "overlap" in error:  # taken by a network made meanwhile: next one
                tried.append(net)
                continue
            hint = ""
            if "overlap" in error:
                hint = f"\nchoose another private /24 with {model.SUBNET_ENV}=172.30.81.0/24 (say)"
            raise LabError(f"docker network create {name} ({net}) failed: {error}{hint}")
    how = ""
    if want is None:
        derived = model.subnet_candidates(name)[0]
        how = ", derived from the name" if net == derived else f"; {derived}, derived from the name, is taken"
    clock.say(f"created network {name} {net} (gateway {model.gateway(net)}{how})")
    return net


def start_container(host: model.Host, image: str, digest: str, lab: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    docker(
        "run",
        "-d",
        "--name",
        host.name,
        "--hostname",
        host.name,
        "--network",
        lab,
        "--ip",
        host.address,
        *model.RUN_FLAGS,
        "--ulimit",
        model.nofile_ulimit(hard),
        "--label",
        f"{model.LABEL}={lab}",
        "--label",
        f"fleet-lab.recipe={digest}",
        image,
    )


def inject_key(name: str, pubkey: str) -> None:
    script = (
        "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys.tmp && "
        "mv /root/.ssh/authorized_keys.tmp /root/.ssh/authorized_keys"
    )
    docker("exec", "-i", name, "sh", "-c", script, input=pubkey + "\n", timeout=30)


def system_state(name: str) -> str:
    proc = docker("exec", name, "systemctl", "is-system-running", check=False, timeout=10)
    return model.parse_system_state(proc.stdout)


def wait_ready(host: model.Host, key: Path, deadline: float) -> str:
    """Wait for systemd to finish booting and sshd to take our key; returns the system state."""
    state = ""
    while True:
        state = system_state(host.name)
        if model.is_booted(state):
            break
        if time.monotonic() > deadline:
            raise LabError(
                f"{host.name}: systemd did not finish booting in {BOOT_TIMEOUT_S:.0f} s "
                f"(is-system-running: {state or 'no answer'}); see `docker logs {host.name}` and "
                f"`docker exec {host.name} systemctl list-jobs`"
            )
        time.sleep(0.3)
    while True:
        proc = run(ssh_argv(key, host.address, ["true"]), check=False, timeout=15)
        if proc.returncode == 0:
            return state
        if time.monotonic() > deadline:
            raise LabError(
                f"{host.name}: ssh root@{host.address} did not answer in {BOOT_TIMEOUT_S:.0f} s: "
                f"{proc.stderr.strip()}; see `docker exec {host.name} systemctl status ssh`"
            )
        time.sleep(0.5)


def failed_units(name: str) -> str:
    proc = docker("exec", name, "systemctl", "--failed", "--plain", "--no-legend", check=False, timeout=10)
    return " ".join(line.split()[0] for line in proc.stdout.splitlines() if line.strip())


def check_guest_to_guest(src: model.Host, dst: model.Host) -> None:
    """TCP from one guest to another's sshd (dockerd's FORWARD policy is DROP: prove it passes)."""
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1],22),5)\n"
        "print(s.recv(64).decode(errors='replace').strip())\n"
    )
    proc = docker("exec", src.name, "python3", "-c", code, dst.address, check=False, timeout=20)
    if not proc.stdout.startswith("SSH-"):
        raise LabError(
            f"{src.name} cannot reach {dst.name} ({dst.address}:22): "
            f"{(proc.stderr or proc.stdout).strip()}; check `iptables -S FORWARD` / DOCKER-USER"
        )


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


# --- commands ----------------------------------------------------------------------------------------


def cmd_dockerd(paths: Paths, clock: Clock) -> None:
    dockerd_up(paths, clock)
    version = docker("info", "--format", "{{.ServerVersion}}").stdout.strip()
    clock.say(f"docker daemon {version} answers")


def cmd_build(paths: Paths, clock: Clock, force: bool) -> None:
    dockerd_up(paths, clock)
    with image_locked(paths):
        build.ensure_image(clock, force=force)


def link_inventory_vars(paths: Paths) -> None:
    """A named lab's inventory sits in .lab/NAME/: link inventories/lab/group_vars (and host_vars)
    next to it, so that `-i .lab/NAME/hosts.yml` sees the same variables as the default lab."""
    for sub in INVENTORY_VARS_DIRS:
        source = paths.repo / "inventories" / "lab" / sub
        link = paths.inventory.parent / sub
        if link.is_symlink() or not source.is_dir():
            continue
        link.symlink_to(os.path.relpath(source, link.parent))


def cmd_up(paths: Paths, clock: Clock, count: int, gpu: int) -> None:
    lab = paths.name
    want = subnet_from_env(lab)
    try:  # every derived subnet is a /24: check the counts before touching docker
        model.plan_hosts(count, gpu, want or model.subnet_candidates(lab)[0], lab)
    except ValueError as e:
        raise LabError(str(e)) from None
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: apt-get install openssh-client")
    with lab_locked(paths):
        dockerd_up(paths, clock)
        with image_locked(paths):
            tag = build.ensure_image(clock)
        image = build.image_id(tag)
        digest = tag.rsplit("-", 1)[-1]
        pubkey = ensure_keypair(paths, clock)
        net = ensure_network(paths, want, clock)
        try:
            hosts = model.plan_hosts(count, gpu, net, lab)
        except ValueError as e:
            raise LabError(str(e)) from None

        existing = lab_containers(lab)
        wanted = {h.name for h in hosts}
        extra = sorted(n for n in existing if n not in wanted)
        stale = [h.name for h in hosts if h.name in existing and not container_matches(existing[h.name], image, h, lab)]
        if extra or stale:
            clock.say(f"removing {' '.join(extra + stale)}")
            remove_containers(extra + stale)
            build.prune_dangling()
        fresh = [h for h in hosts if h.name not in existing or h.name in stale]
        kept = [h.name for h in hosts if h not in fresh]
        if kept:
            clock.say(f"keeping running {' '.join(kept)}")
        for h in fresh:
            start_container(h, tag, digest, lab)
        if fresh:
            clock.say(f"started {' '.join(h.name for h in fresh)}; waiting for systemd and sshd")

        deadline = time.monotonic() + BOOT_TIMEOUT_S
        states: dict[str, str] = {}

        def bring_up(h: model.Host) -> None:
            inject_key(h.name, pubkey)
            states[h.name] = wait_ready(h, paths.ssh_key, deadline)
            if h in fresh:
                clock.say(f"{h.name} ready ({states[h.name]}, ssh ok)")

        with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
            for future in [pool.submit(bring_up, h) for h in hosts]:
                future.result()
        if len(hosts) > 1:
            check_guest_to_guest(hosts[0], hosts[-1])
            clock.say(f"guest -> guest TCP ok ({hosts[0].name} -> {hosts[-1].name}:22)")
        for h in hosts:
            if states[h.name] == "degraded":
                print(f"note: {h.name} is degraded; failed units: {failed_units(h.name)}")

        write_atomic(paths.inventory, model.render_inventory(hosts, paths.ssh_key, paths.release_store, lab))
        if not paths.is_default:
            link_inventory_vars(paths)
        state = {
            "name": lab,
            "subnet": str(net),
            "image": tag,
            "hosts": {h.name: {"address": h.address, "group": h.group} for h in hosts},
        }
        write_atomic(paths.state_file, json.dumps(state, indent=2) + "\n")
    rows = [(h.name, h.address, h.group, states[h.name]) for h in hosts]
    print(model.format_table(rows, ("NAME", "ADDRESS", "GROUP", "STATE")))
    print(f"inventory: {paths.inventory}")
    print(f"up: lab {lab}, {len(hosts)} hosts ready in {clock.elapsed():.1f} s")


def remove_lab(paths: Paths, clock: Clock, containers: dict[str, dict[str, Any]]) -> None:
    """Remove one lab's containers, network, inventory and state; the caller holds its lock."""
    lab = paths.name
    names = sorted(n for n, c in containers.items() if label_lab(c) == lab)
    if names:
        remove_containers(names)
        clock.say(f"removed {' '.join(names)}")
    found = docker_json("network", "inspect", lab)
    if found and label_lab(found[0]) == lab:
        docker("network", "rm", lab)
        clock.say(f"removed network {lab}")
    elif found:
        print(f"note: leaving docker network {lab}: this tool did not create it", file=sys.stderr)
    if paths.is_default:
        for f in (paths.inventory, paths.state_file):
            if f.exists():
                f.unlink()
                clock.say(f"removed {f}")
    elif paths.state_dir.exists():
        shutil.rmtree(paths.state_dir)  # its lock file too: waiters notice (see locked)
        clock.say(f"removed {paths.state_dir}")


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


def known_labs(paths: Paths, containers: dict[str, dict[str, Any]]) -> list[str]:
    """Every lab with a container, a network or a directory in .lab/ (the default lab first).

    Only valid names: the rest (a hand-made label) is swept up by `down --all` without touching .lab/.
    """
    names = {label_lab(c) for c in containers.values()}
    names |= {label_lab(n) for n in all_networks()}
    names |= set(lab_dirs(paths))
    names.discard(model.DEFAULT_LAB)
    return [model.DEFAULT_LAB, *sorted(n for n in names if model.NAME_PATTERN.fullmatch(n))]


def purge(paths: Paths, clock: Clock) -> None:
    with image_locked(paths):
        refs = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
        ours = [r for r in refs if r.split(":")[0] in (model.IMAGE_REPO, model.BASE_REPO)]
        if ours:
            docker("rmi", *ours, check=False)
            clock.say(f"removed images {' '.join(ours)}")
        build.purge_build_leftovers()
    stop_dockerd_if_ours(paths.shared_dir, clock)
    if paths.shared_dir.exists():
        shutil.rmtree(paths.shared_dir)
        clock.say(f"removed {paths.shared_dir}")


def cmd_down(paths: Paths, clock: Clock, purge_too: bool, every: bool) -> None:
    dockerd_up(paths, clock)
    if purge_too and not every:  # the image, the key and dockerd are every lab's
        others = sorted({label_lab(c) for c in all_lab_containers().values()} - {paths.name})
        if others:
            raise LabError(
                f"not purging: other labs are up ({', '.join(others)}); "
                "`python3 -m lab down --all --purge` takes every lab down and purges"
            )
    if every:
        labs = known_labs(paths, all_lab_containers())
        for lab in labs:
            lab_paths = paths.for_lab(lab)
            with lab_locked(lab_paths):
                remove_lab(lab_paths, clock, all_lab_containers())
        # anything labelled fleet-lab that no lab name covered (a label value that is no valid name)
        leftover = sorted(all_lab_containers())
        if leftover:
            remove_containers(leftover)
            clock.say(f"removed {' '.join(leftover)}")
        for net in all_networks():
            if label_lab(net) and docker("network", "rm", str(net.get("Name")), check=False).returncode == 0:
                clock.say(f"removed network {net.get('Name')}")
        done = f"all labs are down ({', '.join(labs)})"
    else:
        with lab_locked(paths):
            remove_lab(paths, clock, all_lab_containers())
        done = f"lab {paths.name} is down"
    if purge_too:
        purge(paths, clock)
    clock.say(done + (" and purged" if purge_too else "; image cache kept"))


def cmd_inventory(paths: Paths) -> None:
    print(paths.inventory)
    if not paths.inventory.exists():
        print(f"note: {paths.inventory} does not exist yet: {model.lab_command(paths.name, 'up')}", file=sys.stderr)


def cmd_status(paths: Paths, clock: Clock) -> None:
    dockerd_up(paths, clock)
    tag = model.image_tag(build.current_digest())
    print(f"image: {tag} {'(built)' if build.image_id(tag) else '(not built yet)'}")
    groups = {
        name: str(v.get("group", "?"))
        for name, v in (load_state(paths).get("hosts") or {}).items()
        if isinstance(v, dict)
    }
    every = all_lab_containers()
    others = sorted({label_lab(c) for c in every.values()} - {paths.name})
    if others:
        print(f"other labs up: {', '.join(others)} (python3 -m lab --name NAME status)")
    containers = {n: c for n, c in every.items() if label_lab(c) == paths.name}
    if not containers:
        print(f"lab {paths.name}: no hosts ({model.lab_command(paths.name, 'up')})")
        return
    print(f"lab {paths.name}:")
    rows = []
    for name in sorted(containers, key=lambda n: model.host_index(n, paths.name) or 0):
        info = containers[name]
        st = info.get("State", {})
        running = isinstance(st, dict) and bool(st.get("Running"))
        state = system_state(name) if running else str(st.get("Status", "?"))
        rows.append((name, container_address(info, paths.name), groups.get(name, "-"), state))
    print(model.format_table(rows, ("NAME", "ADDRESS", "GROUP", "STATE")))
    print(f"inventory: {paths.inventory}" + ("" if paths.inventory.exists() else " (absent)"))


def cmd_ssh(paths: Paths, clock: Clock, name: str, command: Sequence[str]) -> None:
    lab = paths.name
    index = model.host_index(name, lab)
    if index is None:
        raise LabError(f"not a host of lab {lab}: {name!r} ({lab}-1, {lab}-2, ... or 1, 2, ...)")
    dockerd_up(paths, clock)
    full = model.host_name(index, lab)
    info = lab_containers(lab).get(full)
    if info is None or not container_address(info, lab):
        raise LabError(f"{full} is not up: {model.lab_command(lab, 'up')}")
    if not paths.ssh_key.exists():
        raise LabError(f"no lab key at {paths.ssh_key}: {model.lab_command(lab, 'up')}")
    argv = ssh_argv(paths.ssh_key, container_address(info, lab), command, batch=False)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


# --- CLI -------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def lab_name(text: str) -> str:
    try:
        return model.validate_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


NAME_HELP = f"the lab to act on (default: ${model.NAME_ENV}, else {model.DEFAULT_LAB})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m lab",
        description="Local fleets of Debian 12 hosts (systemd + sshd in docker) for fleet.",
    )
    parser.add_argument("--name", type=lab_name, default=None, metavar="NAME", help=NAME_HELP)
    # --name is also taken after the command (`up --name x1`); there it wins over the one before
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--name", type=lab_name, default=argparse.SUPPRESS, metavar="NAME", help=NAME_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("dockerd", help="make sure a Docker daemon answers (start dockerd if not)")
    p = sub.add_parser("build", help="build the lab image once (cached by recipe hash)")
    p.add_argument("--force", action="store_true", help="rebuild even when the image is cached")
    p = sub.add_parser("up", parents=[named], help="start the lab's hosts and write its inventory")
    p.add_argument("--hosts", type=positive_int, default=3, metavar="N", help="hosts (default 3)")
    p.add_argument("--gpu", type=positive_int, default=1, metavar="M", help="of which in group gpu (default 1)")
    p = sub.add_parser("down", parents=[named], help="remove the lab's hosts, network and inventory (keeps the image)")
    p.add_argument("--all", action="store_true", dest="all_labs", help="every lab, whatever its name")
    p.add_argument("--purge", action="store_true", help="also the images, .lab/ and a dockerd this tool started")
    sub.add_parser("status", parents=[named], help="list the lab's hosts, addresses, state")
    sub.add_parser("inventory", parents=[named], help="print the path of the lab's inventory")
    p = sub.add_parser("ssh", parents=[named], help="ssh into a host: ssh NAME [command ...]")
    p.add_argument("host", metavar="HOST", help="LAB-N or N (fleet-lab-2 or 2 in the default lab)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    clock = Clock()
    try:
        paths = Paths(REPO_ROOT, resolve_name(args.name))
        if args.command == "inventory":  # a path only: no root, no docker
            cmd_inventory(paths)
            return 0
        if os.geteuid() != 0:
            raise LabError("run as root (dockerd, debootstrap)")
        if args.command == "dockerd":
            cmd_dockerd(paths, clock)
        elif args.command == "build":
            cmd_build(paths, clock, args.force)
        elif args.command == "up":
            cmd_up(paths, clock, args.hosts, args.gpu)
        elif args.command == "down":
            cmd_down(paths, clock, args.purge, args.all_labs)
        elif args.command == "status":
            cmd_status(paths, clock)
        elif args.command == "ssh":
            cmd_ssh(paths, clock, args.host, args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    except LabError as e:
        print(f"fleet-lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet-lab: interrupted", file=sys.stderr)
        return 130
    return 0
