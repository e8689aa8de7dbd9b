"""`python3 -m lab`: a local fleet of Debian 12 hosts (docker containers with systemd and sshd).

    python3 -m lab dockerd                  make sure a Docker daemon answers
    python3 -m lab build [--force]          build the image once (cached by recipe hash)
    python3 -m lab up [--hosts N] [--gpu M] start fleet-lab-1..N, write inventories/lab/hosts.yml
    python3 -m lab status                   hosts, addresses, state
    python3 -m lab ssh NAME [cmd ...]       ssh into a host (NAME: fleet-lab-2 or just 2)
    python3 -m lab down [--purge]           remove hosts, network, inventory (--purge: image too)

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
    docker,
    docker_json,
    ensure_dockerd,
    run,
    stop_dockerd_if_ours,
)

BOOT_TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    repo: Path

    @property
    def state_dir(self) -> Path:
        return self.repo / ".lab"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def inventory(self) -> Path:
        return self.repo / "inventories" / "lab" / "hosts.yml"

    @property
    def release_store(self) -> Path:
        return self.repo / "build" / "releases"


# --- small helpers ---------------------------------------------------------------------------------


@contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """One lab-changing command at a time (build/up/down)."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another `python3 -m lab` command to finish ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


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


def subnet_from_env() -> IPv4Network:
    try:
        return model.parse_subnet(os.environ.get(model.SUBNET_ENV, model.DEFAULT_SUBNET))
    except ValueError as e:
        raise LabError(str(e)) from None


def ensure_keypair(paths: Paths, clock: Clock) -> str:
    """The lab's SSH key (created once); returns the public key line."""
    key = paths.ssh_key
    pub = key.with_name(key.name + ".pub")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(key.parent, 0o700)
        pub.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-lab", "-f", str(key)])
        clock.say(f"created SSH key {key}")
    if not pub.exists():
        pub.write_text(run(["ssh-keygen", "-y", "-f", str(key)]).stdout)
    os.chmod(key, 0o600)
    return pub.read_text().strip()


# --- docker objects -------------------------------------------------------------------------------


def lab_containers() -> dict[str, dict[str, Any]]:
    """name -> `docker inspect` of every container labelled fleet-lab=1."""
    ids = docker("ps", "-aq", "--filter", f"label={model.LABEL}=1").stdout.split()
    if not ids:
        return {}
    return {str(c["Name"]).lstrip("/"): c for c in docker_json("inspect", *ids)}


def container_address(info: dict[str, Any]) -> str:
    nets = info.get("NetworkSettings", {}).get("Networks", {})
    net = nets.get(model.NETWORK) if isinstance(nets, dict) else None
    return str(net.get("IPAddress", "")) if isinstance(net, dict) else ""


def container_matches(info: dict[str, Any], image: str, host: model.Host) -> bool:
    """Keep a container only when it runs, from the current image, at the planned address."""
    state = info.get("State", {})
    running = isinstance(state, dict) and bool(state.get("Running"))
    return running and info.get("Image") == image and container_address(info) == host.address


def remove_containers(names: Sequence[str]) -> None:
    if names:
        docker("rm", "-f", "-v", *names, timeout=120)


def ensure_network(net: IPv4Network, clock: Clock) -> None:
    found = docker_json("network", "inspect", model.NETWORK)
    if found:
        info = found[0]
        labels = info.get("Labels") or {}
        configs = (info.get("IPAM") or {}).get("Config") or []
        subnets = {c.get("Subnet") for c in configs if isinstance(c, dict)}
        if isinstance(labels, dict) and labels.get(model.LABEL) != "1":
            raise LabError(
                f"a docker network named {model.NETWORK} exists that this tool did not create: "
                f"remove it (docker network rm {model.NETWORK}) or rename it"
            )
        if subnets == {str(net)}:
            return
        clock.say(f"network {model.NETWORK} has subnet {subnets}, want {net}: recreating")
        remove_containers(list(lab_containers()))
        docker("network", "rm", model.NETWORK)
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
        f"{model.LABEL}=1",
        model.NETWORK,
        check=False,
    )
    if proc.returncode != 0:
        hint = ""
        if "overlap" in proc.stderr:
            hint = f"\nchoose another private /24 with {model.SUBNET_ENV}=172.30.81.0/24 (say)"
        raise LabError(f"docker network create {model.NETWORK} ({net}) failed: {proc.stderr.strip()}{hint}")
    clock.say(f"created network {model.NETWORK} {net} (gateway {model.gateway(net)})")


def start_container(host: model.Host, image: str, digest: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    docker(
        "run",
        "-d",
        "--name",
        host.name,
        "--hostname",
        host.name,
        "--network",
        model.NETWORK,
        "--ip",
        host.address,
        *model.RUN_FLAGS,
        "--ulimit",
        model.nofile_ulimit(hard),
        "--label",
        f"{model.LABEL}=1",
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
    ensure_dockerd(paths.state_dir, clock)
    version = docker("info", "--format", "{{.ServerVersion}}").stdout.strip()
    clock.say(f"docker daemon {version} answers")


def cmd_build(paths: Paths, clock: Clock, force: bool) -> None:
    with locked(paths):
        ensure_dockerd(paths.state_dir, clock)
        build.ensure_image(clock, force=force)


def cmd_up(paths: Paths, clock: Clock, count: int, gpu: int) -> None:
    net = subnet_from_env()
    try:
        hosts = model.plan_hosts(count, gpu, net)
    except ValueError as e:
        raise LabError(str(e)) from None
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: apt-get install openssh-client")
    with locked(paths):
        ensure_dockerd(paths.state_dir, clock)
        tag = build.ensure_image(clock)
        image = build.image_id(tag)
        digest = tag.rsplit("-", 1)[-1]
        pubkey = ensure_keypair(paths, clock)
        ensure_network(net, clock)

        existing = lab_containers()
        wanted = {h.name for h in hosts}
        extra = sorted(n for n in existing if n not in wanted)
        stale = [h.name for h in hosts if h.name in existing and not container_matches(existing[h.name], image, h)]
        if extra or stale:
            clock.say(f"removing {' '.join(extra + stale)}")
            remove_containers(extra + stale)
            build.prune_dangling()
        fresh = [h for h in hosts if h.name not in existing or h.name in stale]
        kept = [h.name for h in hosts if h not in fresh]
        if kept:
            clock.say(f"keeping running {' '.join(kept)}")
        for h in fresh:
            start_container(h, tag, digest)
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

        write_atomic(paths.inventory, model.render_inventory(hosts, paths.ssh_key, paths.release_store))
        state = {
            "subnet": str(net),
            "image": tag,
            "hosts": {h.name: {"address": h.address, "group": h.group} for h in hosts},
        }
        write_atomic(paths.state_file, json.dumps(state, indent=2) + "\n")
    rows = [(h.name, h.address, h.group, states[h.name]) for h in hosts]
    print(model.format_table(rows, ("NAME", "ADDRESS", "GROUP", "STATE")))
    print(f"inventory: {paths.inventory}")
    print(f"up: {len(hosts)} hosts ready in {clock.elapsed():.1f} s")


def cmd_down(paths: Paths, clock: Clock, purge: bool) -> None:
    with locked(paths):
        ensure_dockerd(paths.state_dir, clock)
        names = sorted(lab_containers())
        if names:
            remove_containers(names)
            clock.say(f"removed {' '.join(names)}")
        if docker_json("network", "inspect", model.NETWORK):
            docker("network", "rm", model.NETWORK)
            clock.say(f"removed network {model.NETWORK}")
        for f in (paths.inventory, paths.state_file):
            if f.exists():
                f.unlink()
                clock.say(f"removed {f}")
        if purge:
            refs = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
            ours = [r for r in refs if r.split(":")[0] in (model.IMAGE_REPO, model.BASE_REPO)]
            if ours:
                docker("rmi", *ours, check=False)
                clock.say(f"removed images {' '.join(ours)}")
            build.purge_build_leftovers()
            stop_dockerd_if_ours(paths.state_dir, clock)
    if purge and paths.state_dir.exists():
        shutil.rmtree(paths.state_dir)
        clock.say(f"removed {paths.state_dir}")
    clock.say("lab is down" + (" and purged" if purge else "; image cache kept"))


def cmd_status(paths: Paths, clock: Clock) -> None:
    ensure_dockerd(paths.state_dir, clock)
    tag = model.image_tag(build.current_digest())
    print(f"image: {tag} {'(built)' if build.image_id(tag) else '(not built yet)'}")
    groups = {
        name: str(v.get("group", "?"))
        for name, v in (load_state(paths).get("hosts") or {}).items()
        if isinstance(v, dict)
    }
    containers = lab_containers()
    if not containers:
        print("no lab hosts (python3 -m lab up)")
        return
    rows = []
    for name in sorted(containers, key=lambda n: model.host_index(n) or 0):
        info = containers[name]
        st = info.get("State", {})
        running = isinstance(st, dict) and bool(st.get("Running"))
        state = system_state(name) if running else str(st.get("Status", "?"))
        rows.append((name, container_address(info), groups.get(name, "-"), state))
    print(model.format_table(rows, ("NAME", "ADDRESS", "GROUP", "STATE")))
    print(f"inventory: {paths.inventory}" + ("" if paths.inventory.exists() else " (absent)"))


def cmd_ssh(paths: Paths, clock: Clock, name: str, command: Sequence[str]) -> None:
    index = model.host_index(name)
    if index is None:
        raise LabError(f"not a lab host name: {name!r} (fleet-lab-1, fleet-lab-2, ... or 1, 2, ...)")
    ensure_dockerd(paths.state_dir, clock)
    full = model.host_name(index)
    info = lab_containers().get(full)
    if info is None or not container_address(info):
        raise LabError(f"{full} is not up: python3 -m lab up")
    if not paths.ssh_key.exists():
        raise LabError(f"no lab key at {paths.ssh_key}: python3 -m lab up")
    argv = ssh_argv(paths.ssh_key, container_address(info), command, batch=False)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m lab",
        description="A local fleet of Debian 12 hosts (systemd + sshd in docker) for fleet.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("dockerd", help="make sure a Docker daemon answers (start dockerd if not)")
    p = sub.add_parser("build", help="build the lab image once (cached by recipe hash)")
    p.add_argument("--force", action="store_true", help="rebuild even when the image is cached")
    p = sub.add_parser("up", help="start the lab hosts and write inventories/lab/hosts.yml")
    p.add_argument("--hosts", type=positive_int, default=3, metavar="N", help="hosts (default 3)")
    p.add_argument("--gpu", type=positive_int, default=1, metavar="M", help="of which in group gpu (default 1)")
    p = sub.add_parser("down", help="remove hosts, network and inventory (keeps the image)")
    p.add_argument("--purge", action="store_true", help="also the images, .lab/ and a dockerd this tool started")
    sub.add_parser("status", help="list hosts, addresses, state")
    p = sub.add_parser("ssh", help="ssh into a host: ssh NAME [command ...]")
    p.add_argument("name", help="fleet-lab-N or N")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(REPO_ROOT)
    clock = Clock()
    if os.geteuid() != 0:
        print("fleet-lab: error: run as root (dockerd, debootstrap)", file=sys.stderr)
        return 1
    try:
        if args.command == "dockerd":
            cmd_dockerd(paths, clock)
        elif args.command == "build":
            cmd_build(paths, clock, args.force)
        elif args.command == "up":
            cmd_up(paths, clock, args.hosts, args.gpu)
        elif args.command == "down":
            cmd_down(paths, clock, args.purge)
        elif args.command == "status":
            cmd_status(paths, clock)
        elif args.command == "ssh":
            cmd_ssh(paths, clock, args.name, args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    except LabError as e:
        print(f"fleet-lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet-lab: interrupted", file=sys.stderr)
        return 130
    return 0
