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

Stdlib Python and the docker CLI only: it does not need the project's virtualenv. This module is
the command line; the commands are made of lab/objects.py (the lab's containers and network),
lab/files.py (its files and locks), lab/build.py (the image) and lab/dockerctl.py (the docker CLI
and daemon); lab/model.py holds the pure parts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from ipaddress import IPv4Network
from typing import Any

from . import build, model
from .dockerctl import Clock, LabError, daemon_answers, docker, ensure_dockerd, stop_dockerd_if_ours
from .files import REPO_ROOT, Paths, ensure_keypair, load_state, locked, write_lab_files
from .objects import (
    all_lab_containers,
    container_address,
    ensure_network,
    hosts_ready,
    known_labs,
    lab_containers,
    label_lab,
    remove_lab,
    remove_unnamed_leftovers,
    ssh_argv,
    start_hosts,
    system_state,
)

# --- locks, dockerd, the lab's name and subnet ----------------------------------------------------


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
    named lab without FLEET_LAB_SUBNET (its subnet is derived from its name: see objects.ensure_network)."""
    text = os.environ.get(model.SUBNET_ENV) or (model.DEFAULT_SUBNET if name == model.DEFAULT_LAB else "")
    if not text:
        return None
    try:
        return model.parse_subnet(text)
    except ValueError as e:
        raise LabError(str(e)) from None


# --- commands ----------------------------------------------------------------------------------------


def cmd_dockerd(paths: Paths, clock: Clock) -> None:
    dockerd_up(paths, clock)
    version = docker("info", "--format", "{{.ServerVersion}}").stdout.strip()
    clock.say(f"docker daemon {version} answers")


def cmd_build(paths: Paths, clock: Clock, force: bool) -> None:
    dockerd_up(paths, clock)
    with image_locked(paths):
        build.ensure_image(clock, force=force)


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
        pubkey = ensure_keypair(paths, clock)
        net = ensure_network(paths, want, clock)
        try:
            hosts = model.plan_hosts(count, gpu, net, lab)
        except ValueError as e:
            raise LabError(str(e)) from None
        fresh = start_hosts(lab, hosts, tag, clock)
        states = hosts_ready(hosts, fresh, pubkey, paths.ssh_key, clock)
        write_lab_files(paths, hosts, net, tag)
    rows = [(h.name, h.address, h.group, states[h.name]) for h in hosts]
    print(model.format_table(rows, ("NAME", "ADDRESS", "GROUP", "STATE")))
    print(f"inventory: {paths.inventory}")
    print(f"up: lab {lab}, {len(hosts)} hosts ready in {clock.elapsed():.1f} s")


def purge(paths: Paths, clock: Clock) -> None:
    with image_locked(paths):
        build.remove_images(clock)
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
        remove_unnamed_leftovers(clock)
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
