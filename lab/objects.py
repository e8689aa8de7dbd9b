"""A lab's docker objects: its containers and network, the SSH key put into its hosts, waiting for
them to be ready, their addresses. The commands of `python3 -m lab` (lab/fleetlab.py) are made of
these and of lab/files.py; stdlib and the docker CLI only.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from . import build, model
from .dockerctl import Clock, LabError, docker, docker_json, run
from .files import Paths, lab_dirs, locked

BOOT_TIMEOUT_S = 120.0


# --- ssh -----------------------------------------------------------------------------------------


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


# --- containers and networks ---------------------------------------------------------------------


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


def known_labs(paths: Paths, containers: dict[str, dict[str, Any]]) -> list[str]:
    """Every lab with a container, a network or a directory in .lab/ (the default lab first).

    Only valid names: the rest (a hand-made label) is swept up by `down --all` without touching .lab/.
    """
    names = {label_lab(c) for c in containers.values()}
    names |= {label_lab(n) for n in all_networks()}
    names |= set(lab_dirs(paths))
    names.discard(model.DEFAULT_LAB)
    return [model.DEFAULT_LAB, *sorted(n for n in names if model.NAME_PATTERN.fullmatch(n))]


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
        shutil.rmtree(paths.state_dir)  # its lock file too: waiters notice (see files.locked)
        clock.say(f"removed {paths.state_dir}")


def remove_unnamed_leftovers(clock: Clock) -> None:
    """For `down --all`, after every lab: anything labelled fleet-lab that no lab name covered (a
    label value that is no valid name)."""
    leftover = sorted(all_lab_containers())
    if leftover:
        remove_containers(leftover)
        clock.say(f"removed {' '.join(leftover)}")
    for net in all_networks():
        if label_lab(net) and docker("network", "rm", str(net.get("Name")), check=False).returncode == 0:
            clock.say(f"removed network {net.get('Name')}")


# --- hosts ---------------------------------------------------------------------------------------


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


def start_hosts(lab: str, hosts: list[model.Host], tag: str, clock: Clock) -> list[model.Host]:
    """Make the lab's containers the planned hosts: keep the running ones that match, remove the
    rest, start the missing ones from image tag. Returns the hosts started now."""
    image = build.image_id(tag)
    digest = tag.rsplit("-", 1)[-1]
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
    return fresh


def hosts_ready(
    hosts: list[model.Host], fresh: list[model.Host], pubkey: str, key: Path, clock: Clock
) -> dict[str, str]:
    """Put the key in every host and wait for all of them (in parallel) to boot and answer SSH, then
    for guest -> guest TCP. Returns each host's system state (running or degraded)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    states: dict[str, str] = {}

    def bring_up(h: model.Host) -> None:
        inject_key(h.name, pubkey)
        states[h.name] = wait_ready(h, key, deadline)
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
    return states
