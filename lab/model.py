"""Pure parts of the lab: the image recipe and its hash, addresses, groups, the inventory.

Nothing here runs a process or talks to Docker, so all of it is unit-tested
(tests/unit/test_fleetlab.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# --- names ------------------------------------------------------------------------------------

LABEL = "fleet-lab"  # every lab container and network carry the label fleet-lab=<lab name>
LEGACY_LABEL_VALUE = "1"  # what labs started before named labs carry: they belong to the default lab
DEFAULT_LAB = "fleet-lab"  # the default lab: hosts fleet-lab-1..N, network fleet-lab
NAME_ENV = "FLEET_LAB_NAME"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,20}")
# .lab/ssh holds the shared key; bridge/host/none are docker's own networks
RESERVED_NAMES = frozenset({"ssh", "bridge", "host", "none"})
IMAGE_REPO = "fleet-lab"
STABLE_TAG = f"{IMAGE_REPO}:debian12"  # the name molecule scenarios use
BASE_REPO = "fleet-lab-base"  # the `docker import`ed rootfs, before the Dockerfile layer
DEFAULT_SUBNET = "172.29.81.0/24"  # the default lab's; a named lab derives its own (derived_subnet)
SUBNET_ENV = "FLEET_LAB_SUBNET"
DERIVED_FIRST_OCTET = 100  # named labs: 172.29.X.0/24 with X in 100..249
DERIVED_OCTETS = 150
FIRST_HOST_OCTET = 11  # fleet-lab-1 is .11, fleet-lab-2 is .12, ...
MAX_NOFILE = 20000  # the hard open-files limit of the build machines (ulimit -Hn)


def validate_name(name: str) -> str:
    """A lab name: ^[a-z][a-z0-9-]{0,20}$, and not one that would clash with .lab/ or docker."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"bad lab name {name!r}: use 1-21 of a-z 0-9 -, starting with a letter")
    if name in RESERVED_NAMES:
        raise ValueError(f"lab name {name!r} is reserved (not one of {', '.join(sorted(RESERVED_NAMES))})")
    return name


def lab_of_label(value: str) -> str:
    """The lab a container or network belongs to, from its fleet-lab label value."""
    return DEFAULT_LAB if value == LEGACY_LABEL_VALUE else value


# --- the image recipe (lab/README.md, "The image"); everything here is part of the cache key ---

RECIPE_VERSION = 2  # bump when the build code changes the image in a way the constants do not
SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = "http://deb.debian.org/debian"
INCLUDE: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "sudo",
    "openssh-server",
    "iproute2",
    "procps",
    "ca-certificates",
    "cron",
    "curl",
)
HOST_APT_SOURCES = "/etc/apt/sources.list.d/debian.sources"
# Units that make no sense in a container (or block its boot, or fight ansible for the dpkg
# lock). Each is masked only when the rootfs ships it (or its template).
MASK_UNITS: tuple[str, ...] = (
    "getty.target",
    "getty@tty1.service",
    "getty-static.service",
    "console-getty.service",
    "serial-getty@.service",
    "systemd-firstboot.service",
    "systemd-remount-fs.service",
    "systemd-networkd-wait-online.service",
    "systemd-timesyncd.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-journald-audit.socket",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
)
# Files from lab/image/ installed into the rootfs: name -> (path in rootfs, units that want it).
HOSTKEY_UNIT = "fleet-ssh-hostkeys.service"
ENABLE_UNITS: dict[str, tuple[str, ...]] = {
    HOSTKEY_UNIT: ("multi-user.target", "ssh.service"),
}
RUN_FLAGS: tuple[str, ...] = (  # what boots systemd as PID 1 here (--privileged is refused)
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    # Root on a real host may read every process's sockets (ss -p): the slot engine checks that
    # the new slot's unit, not a stray process, owns the port it health-checks.
    "--cap-add",
    "SYS_PTRACE",
    "--cgroupns=private",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
)


def recipe_constants() -> dict[str, object]:
    """Everything in this module that shapes the image."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "mirror": MIRROR,
        "include": list(INCLUDE),
        "mask": list(MASK_UNITS),
        "enable": {k: list(v) for k, v in ENABLE_UNITS.items()},
    }


def recipe_hash(constants: dict[str, object], files: dict[str, bytes], apt_sources: bytes = b"") -> str:
    """A 12-hex-digit key over the recipe: constants, lab/image/ files, the apt sources copied in.

    Independent of dict/file ordering; any byte change in any input changes it.
    """
    h = hashlib.sha256()
    h.update(json.dumps(constants, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(files):
        data = files[name]
        h.update(b"\0file\0" + name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    h.update(b"\0sources\0" + apt_sources)
    return h.hexdigest()[:12]


def read_recipe_files(image_dir: Path) -> dict[str, bytes]:
    """The files under lab/image/, keyed by their path relative to it (caches skipped)."""
    out: dict[str, bytes] = {}
    for p in sorted(image_dir.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"):
            out[p.relative_to(image_dir).as_posix()] = p.read_bytes()
    return out


def image_tag(digest: str) -> str:
    return f"{IMAGE_REPO}:debian12-{digest}"


def base_tag(digest: str) -> str:
    return f"{BASE_REPO}:debian12-{digest}"


# --- hosts, addresses, groups ------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    group: str  # "web" or "gpu"


def host_name(index: int, lab: str = DEFAULT_LAB) -> str:
    return f"{lab}-{index}"


def host_index(name: str, lab: str = DEFAULT_LAB) -> int | None:
    """fleet-lab-3 -> 3 (for lab x1: x1-3 -> 3); a bare "3" -> 3; anything else -> None."""
    m = re.fullmatch(rf"(?:{re.escape(lab)}-)?([1-9][0-9]*)", name)
    return int(m.group(1)) if m else None


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A private IPv4 network with room for the gateway and hosts from .11 on."""
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"bad subnet {text!r} ({SUBNET_ENV}): {e}") from None
    if not net.is_private:
        raise ValueError(f"subnet {net} ({SUBNET_ENV}) is not a private range")
    if net.num_addresses < FIRST_HOST_OCTET + 2:
        raise ValueError(f"subnet {net} ({SUBNET_ENV}) is too small: use a /27 or larger")
    return net


def gateway(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address + 1)


def max_hosts(net: ipaddress.IPv4Network) -> int:
    # usable: network+11 .. broadcast-1
    return net.num_addresses - FIRST_HOST_OCTET - 1


def host_address(net: ipaddress.IPv4Network, index: int) -> str:
    if index < 1 or index > max_hosts(net):
        raise ValueError(f"host index {index} does not fit in {net} (1..{max_hosts(net)})")
    return str(net.network_address + FIRST_HOST_OCTET + index - 1)


def plan_hosts(count: int, gpu: int, net: ipaddress.IPv4Network, lab: str = DEFAULT_LAB) -> list[Host]:
    """LAB-1..N; the first `gpu` of them form the gpu group, the rest web.

    GPU hosts come first so that growing N only adds web hosts: existing hosts keep their group.
    """
    if count < 1:
        raise ValueError("--hosts must be at least 1")
    if gpu < 0 or gpu > count:
        raise ValueError(f"--gpu must be between 0 and --hosts ({count}), not {gpu}")
    if count > max_hosts(net):
        raise ValueError(f"--hosts {count} does not fit in {net} (at most {max_hosts(net)})")
    return [Host(host_name(i, lab), host_address(net, i), "gpu" if i <= gpu else "web") for i in range(1, count + 1)]


# --- subnets of named labs -----------------------------------------------------------------------


def derived_octet(name: str) -> int:
    """X in 172.29.X.0/24 for a named lab: stable across runs and machines (crc32 of the name)."""
    return DERIVED_FIRST_OCTET + zlib.crc32(name.encode()) % DERIVED_OCTETS


def subnet_candidates(name: str) -> list[ipaddress.IPv4Network]:
    """A named lab's /24s in order of preference: the derived one, then the next X, wrapping."""
    first = derived_octet(name) - DERIVED_FIRST_OCTET
    return [
        ipaddress.IPv4Network(f"172.29.{DERIVED_FIRST_OCTET + (first + i) % DERIVED_OCTETS}.0/24")
        for i in range(DERIVED_OCTETS)
    ]


def choose_subnet(name: str, taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first of subnet_candidates(name) that overlaps none of `taken` (other networks' subnets)."""
    busy = list(taken)
    for net in subnet_candidates(name):
        if not any(net.overlaps(other) for other in busy):
            return net
    last = DERIVED_FIRST_OCTET + DERIVED_OCTETS - 1
    raise ValueError(f"no free /24 among 172.29.{DERIVED_FIRST_OCTET}-{last}.0/24 for lab {name}: set {SUBNET_ENV}")


def network_subnets(inspected: Iterable[dict[str, object]]) -> dict[str, list[ipaddress.IPv4Network]]:
    """Network name -> its IPv4 subnets, from `docker network inspect` output (IPv6 and junk skipped)."""
    out: dict[str, list[ipaddress.IPv4Network]] = {}
    for info in inspected:
        ipam = info.get("IPAM")
        configs = ipam.get("Config") if isinstance(ipam, dict) else None
        nets = []
        for c in configs if isinstance(configs, list) else []:
            try:
                nets.append(ipaddress.IPv4Network(str(c.get("Subnet", "")), strict=False))
            except (ValueError, AttributeError):
                continue
        out[str(info.get("Name", ""))] = nets
    return out


def nofile_ulimit(hard_limit: int) -> str:
    """`--ulimit nofile=S:H` inside the host's hard limit (a container cannot exceed it)."""
    n = MAX_NOFILE if hard_limit < 0 else min(MAX_NOFILE, hard_limit)  # RLIM_INFINITY is -1
    return f"nofile={n}:{n}"


# --- the generated inventory ---------------------------------------------------------------------

SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def yaml_str(value: str) -> str:
    """A YAML scalar for value: plain when unambiguous, else a JSON (= YAML) double-quoted string."""
    if re.fullmatch(r"[A-Za-z0-9_./@][A-Za-z0-9_./@-]*", value) and value.lower() not in {
        "yes",
        "no",
        "true",
        "false",
        "on",
        "off",
        "null",
        "y",
        "n",
        "~",
    }:
        # plain scalars that YAML 1.1 would not read as a number either
        try:
            float(value)
        except ValueError:
            return value
    return json.dumps(value)


def lab_command(lab: str, command: str) -> str:
    """How a user types `command` for this lab."""
    return f"python3 -m lab {command}" if lab == DEFAULT_LAB else f"python3 -m lab --name {lab} {command}"


def render_inventory(hosts: list[Host], key_file: Path, release_store: Path, lab: str = DEFAULT_LAB) -> str:
    """The lab's hosts.yml: all.vars for the connection, fleet -> web/gpu -> hosts."""
    lines = [
        "---",
        f"# GENERATED by `{lab_command(lab, 'up')}`; `{lab_command(lab, 'down')}` removes it. Do not edit.",
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {yaml_str(str(key_file))}",
        f"    ansible_ssh_common_args: {json.dumps(SSH_COMMON_ARGS)}",
        # Mitogen (ansible.cfg's strategy) does not read ssh_common_args' host key options.
        "    ansible_host_key_checking: false",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    fleet_release_store: {yaml_str(str(release_store))}",
        "  children:",
        "    fleet:",
        "      children:",
    ]
    for group in ("web", "gpu"):
        members = [h for h in hosts if h.group == group]
        if not members:
            lines.append(f"        {group}: {{}}")
            continue
        lines += [f"        {group}:", "          hosts:"]
        for h in members:
            lines += [f"            {h.name}:", f"              ansible_host: {h.address}"]
    return "\n".join(lines) + "\n"


# --- small parsers -------------------------------------------------------------------------------


def mounts_under(mountinfo: str, root: str) -> list[str]:
    """Mount points at or below `root` from /proc/self/mountinfo text, deepest first.

    Used to unmount what an interrupted debootstrap left mounted before deleting its tree.
    """
    root = root.rstrip("/")
    found: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)


def parse_system_state(output: str) -> str:
    """The state word `systemctl is-system-running` printed (last non-empty line), or ''."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def is_booted(state: str) -> bool:
    return state in {"running", "degraded"}


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart (every row as long as the header)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(out)
