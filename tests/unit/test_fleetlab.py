"""Unit tests of the pure parts of `python3 -m lab` (no docker, no root, no network)."""

from __future__ import annotations

import ipaddress
import itertools
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

from lab import build, dockerctl, files, fleetlab, model, objects

NET = ipaddress.IPv4Network("172.29.81.0/24")


# --- address allocation and groups ----------------------------------------------------------------


def test_default_plan_is_three_hosts_one_gpu_first() -> None:
    hosts = model.plan_hosts(3, 1, NET)
    assert [(h.name, h.address, h.group) for h in hosts] == [
        ("fleet-lab-1", "172.29.81.11", "gpu"),
        ("fleet-lab-2", "172.29.81.12", "web"),
        ("fleet-lab-3", "172.29.81.13", "web"),
    ]


def test_growing_the_fleet_keeps_existing_hosts_and_groups() -> None:
    small = model.plan_hosts(3, 1, NET)
    big = model.plan_hosts(5, 1, NET)
    assert big[:3] == small
    assert {h.group for h in big[3:]} == {"web"}


@pytest.mark.parametrize(("count", "gpu"), [(0, 0), (2, 3), (3, -1)])
def test_plan_rejects_bad_counts(count: int, gpu: int) -> None:
    with pytest.raises(ValueError, match=r"--hosts|--gpu"):
        model.plan_hosts(count, gpu, NET)


def test_all_gpu_and_no_gpu() -> None:
    assert {h.group for h in model.plan_hosts(2, 2, NET)} == {"gpu"}
    assert {h.group for h in model.plan_hosts(2, 0, NET)} == {"web"}


def test_addresses_stay_inside_the_subnet() -> None:
    assert model.gateway(NET) == "172.29.81.1"
    assert model.max_hosts(NET) == 244  # .11 .. .254
    assert model.host_address(NET, 244) == "172.29.81.254"
    with pytest.raises(ValueError, match="does not fit"):
        model.host_address(NET, 245)
    with pytest.raises(ValueError, match="does not fit"):
        model.plan_hosts(245, 1, NET)


def test_addresses_in_a_small_override_subnet() -> None:
    net = model.parse_subnet("10.99.0.32/27")
    assert model.host_address(net, 1) == "10.99.0.43"
    assert model.max_hosts(net) == 20
    assert model.host_address(net, 20) == "10.99.0.62"  # broadcast is .63


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8.8.8.0/24", "not a private range"),
        ("172.29.81.5/24", "bad subnet"),
        ("nonsense", "bad subnet"),
        ("10.0.0.0/29", "too small"),
    ],
)
def test_parse_subnet_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.parse_subnet(text)


def test_subnet_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(model.SUBNET_ENV, raising=False)
    assert str(fleetlab.subnet_from_env()) == model.DEFAULT_SUBNET
    monkeypatch.setenv(model.SUBNET_ENV, "172.30.5.0/24")
    assert str(fleetlab.subnet_from_env()) == "172.30.5.0/24"
    monkeypatch.setenv(model.SUBNET_ENV, "1.2.3.0/24")
    with pytest.raises(dockerctl.LabError, match="FLEET_LAB_SUBNET"):
        fleetlab.subnet_from_env()


@pytest.mark.parametrize(
    ("name", "index"),
    [("fleet-lab-1", 1), ("fleet-lab-12", 12), ("3", 3), ("fleet-lab-0", None), ("web-1", None), ("", None)],
)
def test_host_index(name: str, index: int | None) -> None:
    assert model.host_index(name) == index


def test_nofile_ulimit_stays_within_the_hard_limit() -> None:
    assert model.nofile_ulimit(20000) == "nofile=20000:20000"
    assert model.nofile_ulimit(4096) == "nofile=4096:4096"
    assert model.nofile_ulimit(1 << 20) == "nofile=20000:20000"
    assert model.nofile_ulimit(-1) == "nofile=20000:20000"  # RLIM_INFINITY


# --- inventory rendering ----------------------------------------------------------------------------


def test_inventory_shape() -> None:
    yaml = pytest.importorskip("yaml")
    hosts = model.plan_hosts(3, 1, NET)
    text = model.render_inventory(hosts, Path("/work/main/.lab/ssh/id_ed25519"), Path("/work/main/build/releases"))
    data = yaml.safe_load(text)
    assert data["all"]["vars"] == {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": "/work/main/.lab/ssh/id_ed25519",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_host_key_checking": False,
        "ansible_python_interpreter": "/usr/bin/python3",
        "fleet_release_store": "/work/main/build/releases",
    }
    groups = data["all"]["children"]["fleet"]["children"]
    assert groups["gpu"]["hosts"] == {"fleet-lab-1": {"ansible_host": "172.29.81.11"}}
    assert groups["web"]["hosts"] == {
        "fleet-lab-2": {"ansible_host": "172.29.81.12"},
        "fleet-lab-3": {"ansible_host": "172.29.81.13"},
    }
    assert text.startswith("---\n# GENERATED")


def test_inventory_with_an_empty_group_and_odd_paths() -> None:
    yaml = pytest.importorskip("yaml")
    hosts = model.plan_hosts(2, 0, NET)
    text = model.render_inventory(hosts, Path("/srv/my lab/key: x"), Path("/srv/yes"))
    data = yaml.safe_load(text)
    assert data["all"]["vars"]["ansible_ssh_private_key_file"] == "/srv/my lab/key: x"
    assert data["all"]["children"]["fleet"]["children"]["gpu"] == {}
    assert set(data["all"]["children"]["fleet"]["children"]["web"]["hosts"]) == {"fleet-lab-1", "fleet-lab-2"}


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("yes", '"yes"'),
        ("1.5", '"1.5"'),
        ("a b", '"a b"'),
        ("-x", '"-x"'),
        ('q"uote', '"q\\"uote"'),
    ],
)
def test_yaml_str(value: str, rendered: str) -> None:
    assert model.yaml_str(value) == rendered


# --- recipe hashing ----------------------------------------------------------------------------------


def test_recipe_hash_is_stable_and_order_independent() -> None:
    consts = model.recipe_constants()
    files_a = {"Dockerfile": b"FROM x\n", "unit.service": b"[Unit]\n"}
    files_b = dict(reversed(list(files_a.items())))
    h = model.recipe_hash(consts, files_a, b"sources")
    assert h == model.recipe_hash(dict(reversed(list(consts.items()))), files_b, b"sources")
    assert len(h) == 12
    assert int(h, 16) >= 0


def test_recipe_hash_changes_with_any_input() -> None:
    consts = model.recipe_constants()
    files = {"Dockerfile": b"FROM x\n"}
    base = model.recipe_hash(consts, files, b"s")
    assert model.recipe_hash(consts, {"Dockerfile": b"FROM y\n"}, b"s") != base
    assert model.recipe_hash(consts, {"Dockerfile2": b"FROM x\n"}, b"s") != base
    assert model.recipe_hash(consts, files, b"t") != base
    assert model.recipe_hash({**consts, "include": [*model.INCLUDE, "vim"]}, files, b"s") != base
    # a file boundary moved is a different recipe, not the same bytes
    assert model.recipe_hash(consts, {"a": b"xy", "b": b""}, b"") != model.recipe_hash(
        consts, {"a": b"x", "b": b"y"}, b""
    )


def test_recipe_files_are_read_from_lab_image(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.service").write_text("[Unit]\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    assert model.read_recipe_files(tmp_path) == {"Dockerfile": b"FROM x\n", "sub/a.service": b"[Unit]\n"}


def test_real_recipe_ships_what_the_build_needs() -> None:
    recipe = model.read_recipe_files(build.IMAGE_DIR)
    assert "Dockerfile" in recipe
    assert b"STOPSIGNAL SIGRTMIN+3" in recipe["Dockerfile"]
    assert model.HOSTKEY_UNIT in recipe
    assert b"ssh-keygen -A" in recipe[model.HOSTKEY_UNIT]
    for pkg in ("systemd", "openssh-server", "python3", "cron", "curl"):
        assert pkg in model.INCLUDE
    assert "gnupg" not in model.INCLUDE
    assert "--privileged" not in model.RUN_FLAGS


def test_image_tags() -> None:
    assert model.image_tag("0123456789ab") == "fleet-lab:debian12-0123456789ab"
    assert model.base_tag("0123456789ab") == "fleet-lab-base:debian12-0123456789ab"
    assert model.STABLE_TAG == "fleet-lab:debian12"


# --- small parsers ------------------------------------------------------------------------------------


def test_mounts_under_deepest_first_and_unescaped() -> None:
    info = "\n".join(
        [
            "22 1 8:1 / / rw - ext4 /dev/vda rw",
            "90 22 0:5 / /var/tmp/fleet-lab-build-x/rootfs/proc rw - proc proc rw",
            "91 90 0:6 / /var/tmp/fleet-lab-build-x/rootfs/proc/sys/fs/binfmt_misc rw - binfmt binfmt rw",
            r"92 22 0:7 / /var/tmp/fleet-lab-build-x/rootfs/my\040dir rw - tmpfs t rw",
            "93 22 0:8 / /var/tmp/fleet-lab-build-xy/rootfs/sys rw - sysfs s rw",
        ]
    )
    assert model.mounts_under(info, "/var/tmp/fleet-lab-build-x/") == [
        "/var/tmp/fleet-lab-build-x/rootfs/proc/sys/fs/binfmt_misc",
        "/var/tmp/fleet-lab-build-x/rootfs/proc",
        "/var/tmp/fleet-lab-build-x/rootfs/my dir",
    ]


@pytest.mark.parametrize(
    ("output", "state", "booted"),
    [
        ("running\n", "running", True),
        ("degraded\n", "degraded", True),
        ("starting\n", "starting", False),
        ("", "", False),
        ("System has not been booted with systemd\noffline\n", "offline", False),
    ],
)
def test_system_state(output: str, state: str, booted: bool) -> None:
    assert model.parse_system_state(output) == state
    assert model.is_booted(state) is booted


def test_format_table() -> None:
    table = model.format_table([("fleet-lab-1", "172.29.81.11")], ("NAME", "ADDRESS"))
    assert table.splitlines() == ["NAME         ADDRESS", "fleet-lab-1  172.29.81.11"]


def test_docker_iptables_cleanup_only_touches_docker() -> None:
    rules = "\n".join(
        [
            "-P FORWARD DROP",
            "-N DOCKER",
            "-N DOCKER-USER",
            "-N MINE",
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -o docker0 -j DOCKER",
            "-A FORWARD -i br0 -j ACCEPT",
            '-A FORWARD -m comment --comment "keep me" -j MINE',
            "-A DOCKER-USER -j RETURN",
        ]
    )
    assert dockerctl.docker_iptables_cleanup(rules) == [
        ["-D", "FORWARD", "-j", "DOCKER-USER"],
        ["-D", "FORWARD", "-o", "docker0", "-j", "DOCKER"],
        ["-F", "DOCKER"],
        ["-F", "DOCKER-USER"],
        ["-X", "DOCKER"],
        ["-X", "DOCKER-USER"],
    ]


def test_ssh_argv() -> None:
    argv = objects.ssh_argv(Path("/k"), "172.29.81.11", ["systemctl", "is-active", "nginx"])
    assert argv[:3] == ["ssh", "-i", "/k"]
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert "BatchMode=yes" in argv
    assert argv[-4:] == ["root@172.29.81.11", "systemctl", "is-active", "nginx"]
    assert "BatchMode=yes" not in objects.ssh_argv(Path("/k"), "a", batch=False)


def test_paths_follow_the_repository_root(tmp_path: Path) -> None:
    paths = files.Paths(tmp_path)
    assert paths.ssh_key == tmp_path / ".lab" / "ssh" / "id_ed25519"
    assert paths.inventory == tmp_path / "inventories" / "lab" / "hosts.yml"
    assert paths.release_store == tmp_path / "build" / "releases"
    assert (files.REPO_ROOT / "lab" / "fleetlab.py").is_file()


def test_container_matches() -> None:
    host = model.Host("fleet-lab-1", "172.29.81.11", "gpu")
    info = {
        "State": {"Running": True},
        "Image": "sha256:abc",
        "NetworkSettings": {"Networks": {"fleet-lab": {"IPAddress": "172.29.81.11"}}},
    }
    assert objects.container_matches(info, "sha256:abc", host)
    assert not objects.container_matches(info, "sha256:new", host)
    assert not objects.container_matches({**info, "State": {"Running": False}}, "sha256:abc", host)
    assert not objects.container_matches(info, "sha256:abc", model.Host("fleet-lab-1", "172.29.81.99", "gpu"))


# --- argument parsing -----------------------------------------------------------------------------------


def test_parse_defaults() -> None:
    parser = fleetlab.build_parser()
    args = parser.parse_args(["up"])
    assert (args.command, args.hosts, args.gpu) == ("up", 3, 1)
    assert parser.parse_args(["build"]).force is False
    assert parser.parse_args(["build", "--force"]).force is True
    assert parser.parse_args(["down"]).purge is False
    assert parser.parse_args(["down", "--purge"]).purge is True


def test_parse_up_counts_and_ssh_command() -> None:
    parser = fleetlab.build_parser()
    args = parser.parse_args(["up", "--hosts", "5", "--gpu", "2"])
    assert (args.hosts, args.gpu) == (5, 2)
    args = parser.parse_args(["ssh", "fleet-lab-2", "systemctl", "is-active", "nginx"])
    assert (args.host, args.cmd) == ("fleet-lab-2", ["systemctl", "is-active", "nginx"])
    assert parser.parse_args(["ssh", "2"]).cmd == []


@pytest.mark.parametrize("argv", [[], ["up", "--hosts", "x"], ["up", "--gpu", "-1"], ["frobnicate"], ["ssh"]])
def test_parse_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        fleetlab.build_parser().parse_args(argv)


def test_main_reports_bad_counts_without_touching_docker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fleetlab.os, "geteuid", lambda: 0)

    def no_docker(*args: object, **kwargs: object) -> None:
        raise AssertionError("docker must not be called")

    monkeypatch.setattr(fleetlab, "ensure_dockerd", no_docker)
    assert fleetlab.main(["up", "--hosts", "2", "--gpu", "3"]) == 1
    assert "--gpu must be between 0 and --hosts (2)" in capsys.readouterr().err


# --- named labs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fleet-lab", "x1", "a", "ci-run-7", "a" * 21, "z-"])
def test_valid_lab_names(name: str) -> None:
    assert model.validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "bad lab name"),
        ("1x", "bad lab name"),
        ("-x", "bad lab name"),
        ("X1", "bad lab name"),
        ("a_b", "bad lab name"),
        ("a.b", "bad lab name"),
        ("a" * 22, "bad lab name"),
        ("x1\n", "bad lab name"),
        ("ssh", "reserved"),  # .lab/ssh holds the shared key
        ("bridge", "reserved"),  # docker's own networks
        ("host", "reserved"),
        ("none", "reserved"),
    ],
)
def test_invalid_lab_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.validate_name(name)


def test_legacy_label_value_is_the_default_lab() -> None:
    assert model.lab_of_label("1") == model.DEFAULT_LAB == "fleet-lab"
    assert model.lab_of_label("fleet-lab") == "fleet-lab"
    assert model.lab_of_label("x1") == "x1"


def test_host_names_per_lab() -> None:
    assert model.host_name(2) == "fleet-lab-2"
    assert model.host_name(2, "x1") == "x1-2"
    assert model.host_index("x1-2", "x1") == 2
    assert model.host_index("2", "x1") == 2
    assert model.host_index("fleet-lab-2", "x1") is None
    assert model.host_index("x1-2") is None
    assert model.host_index("x1-1-3", "x1-1") == 3
    assert model.host_index("x1-1-3", "x1") is None
    net = model.parse_subnet("172.29.140.0/24")
    assert [(h.name, h.address, h.group) for h in model.plan_hosts(2, 1, net, "x1")] == [
        ("x1-1", "172.29.140.11", "gpu"),
        ("x1-2", "172.29.140.12", "web"),
    ]


def test_derived_subnet_is_stable_and_in_range() -> None:
    for name in ("x1", "x2", "ci", "a" * 21):
        octet = model.derived_octet(name)
        assert octet == 100 + zlib.crc32(name.encode()) % 150
        assert 100 <= octet <= 249
        assert model.choose_subnet(name, []) == ipaddress.IPv4Network(f"172.29.{octet}.0/24")
    assert model.derived_octet("x1") != model.derived_octet("x2")
    # never the default lab's subnet
    assert all(str(n) != model.DEFAULT_SUBNET for n in model.subnet_candidates("x1"))


def test_subnet_candidates_wrap_around_the_pool() -> None:
    cands = model.subnet_candidates("x1")
    assert len(cands) == len(set(cands)) == 150
    assert {int(str(n).split(".")[2]) for n in cands} == set(range(100, 250))
    octets = [int(str(n).split(".")[2]) for n in cands]
    assert octets[0] == model.derived_octet("x1")
    for a, b in itertools.pairwise(octets):
        assert b == (100 if a == 249 else a + 1)


def test_choose_subnet_skips_taken_and_overlapping_networks() -> None:
    first, second, third = model.subnet_candidates("x1")[:3]
    assert model.choose_subnet("x1", [first]) == second
    assert model.choose_subnet("x1", [first, second]) == third
    # a /23 or a smaller network inside the /24 collides as well
    wide = ipaddress.IPv4Network(f"{first.network_address}/23", strict=False)
    inner = ipaddress.IPv4Network(f"{second.network_address + 64}/26")
    chosen = model.choose_subnet("x1", [wide, inner])
    assert not chosen.overlaps(wide) and not chosen.overlaps(inner)
    # unrelated networks (docker's bridge, the default lab) change nothing
    assert model.choose_subnet("x1", [NET, ipaddress.IPv4Network("172.17.0.0/16")]) == first
    with pytest.raises(ValueError, match="FLEET_LAB_SUBNET"):
        model.choose_subnet("x1", [ipaddress.IPv4Network("172.29.0.0/16")])


def test_choose_subnet_wraps_from_249_to_100() -> None:
    name = next(f"n{i}" for i in range(10000) if model.derived_octet(f"n{i}") == 249)
    taken = [ipaddress.IPv4Network("172.29.249.0/24")]
    assert str(model.choose_subnet(name, taken)) == "172.29.100.0/24"


def test_network_subnets_from_docker_inspect() -> None:
    inspected: list[dict[str, object]] = [
        {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}},
        {"Name": "host", "IPAM": {"Config": []}},
        {"Name": "none", "IPAM": {"Config": None}},
        {"Name": "v6", "IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.9.0.0/24"}]}},
        {"Name": "odd", "IPAM": None},
    ]
    assert model.network_subnets(inspected) == {
        "bridge": [ipaddress.IPv4Network("172.17.0.0/16")],
        "host": [],
        "none": [],
        "v6": [ipaddress.IPv4Network("10.9.0.0/24")],
        "odd": [],
    }


def test_label_lab_of_containers_and_networks() -> None:
    assert objects.label_lab({"Config": {"Labels": {"fleet-lab": "1", "fleet-lab.recipe": "abc"}}}) == "fleet-lab"
    assert objects.label_lab({"Config": {"Labels": {"fleet-lab": "x1"}}}) == "x1"
    assert objects.label_lab({"Config": {"Labels": {"fleet-lab.recipe": "abc"}}}) == ""  # e.g. molecule's
    assert objects.label_lab({"Name": "x1", "Labels": {"fleet-lab": "x1"}}) == "x1"
    assert objects.label_lab({"Name": "bridge", "Labels": {}}) == ""
    assert objects.label_lab({"Name": "n", "Labels": None}) == ""


def test_paths_of_a_named_lab(tmp_path: Path) -> None:
    default = files.Paths(tmp_path)
    named = files.Paths(tmp_path, "x1")
    assert default.name == "fleet-lab" and default.is_default
    assert default.state_dir == tmp_path / ".lab"
    assert default.state_file == tmp_path / ".lab" / "state.json"
    assert default.lock_file == tmp_path / ".lab" / "lock"
    assert named.inventory == tmp_path / ".lab" / "x1" / "hosts.yml"
    assert named.state_dir == tmp_path / ".lab" / "x1"
    assert named.state_file == tmp_path / ".lab" / "x1" / "state.json"
    assert named.lock_file == tmp_path / ".lab" / "x1" / "lock"
    assert named.ssh_key == default.ssh_key == tmp_path / ".lab" / "ssh" / "id_ed25519"
    assert named.build_lock == default.build_lock == tmp_path / ".lab" / "build.lock"
    assert files.Paths(tmp_path, "x2").inventory != named.inventory
    assert default.for_lab("x1") == named


def test_resolve_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(model.NAME_ENV, raising=False)
    assert fleetlab.resolve_name(None) == "fleet-lab"
    assert fleetlab.resolve_name("x1") == "x1"
    monkeypatch.setenv(model.NAME_ENV, "x2")
    assert fleetlab.resolve_name(None) == "x2"
    assert fleetlab.resolve_name("x1") == "x1"  # the option wins
    monkeypatch.setenv(model.NAME_ENV, "Bad_Name")
    with pytest.raises(dockerctl.LabError, match="FLEET_LAB_NAME"):
        fleetlab.resolve_name(None)
    monkeypatch.setenv(model.NAME_ENV, "")
    assert fleetlab.resolve_name(None) == "fleet-lab"


def test_subnet_from_env_for_a_named_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(model.SUBNET_ENV, raising=False)
    assert fleetlab.subnet_from_env("x1") is None  # derived from the name when the network is made
    monkeypatch.setenv(model.SUBNET_ENV, "10.77.0.0/24")
    assert str(fleetlab.subnet_from_env("x1")) == "10.77.0.0/24"


def test_parse_name_before_or_after_the_command() -> None:
    parser = fleetlab.build_parser()
    assert parser.parse_args(["up"]).name is None
    assert parser.parse_args(["--name", "x1", "up", "--hosts", "2"]).name == "x1"
    assert parser.parse_args(["up", "--name", "x1"]).name == "x1"
    assert parser.parse_args(["--name", "x1", "down", "--name", "x2"]).name == "x2"
    assert parser.parse_args(["--name", "x1", "inventory"]).command == "inventory"
    args = parser.parse_args(["down", "--all"])
    assert (args.all_labs, args.purge) == (True, False)
    assert parser.parse_args(["down"]).all_labs is False


@pytest.mark.parametrize("argv", [["--name", "X", "up"], ["--name", "ssh", "up"], ["up", "--name", "1"]])
def test_parse_rejects_bad_names(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        fleetlab.build_parser().parse_args(argv)


def test_inventory_command_prints_the_path_without_root_or_docker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fleetlab.os, "geteuid", lambda: 1000)
    monkeypatch.delenv(model.NAME_ENV, raising=False)

    def no_docker(*args: object, **kwargs: object) -> None:
        raise AssertionError("docker must not be called")

    for module in (fleetlab, objects):
        monkeypatch.setattr(module, "docker", no_docker)
    assert fleetlab.main(["--name", "x1", "inventory"]) == 0
    assert capsys.readouterr().out == f"{files.REPO_ROOT / '.lab' / 'x1' / 'hosts.yml'}\n"
    monkeypatch.setenv(model.NAME_ENV, "x2")
    assert fleetlab.main(["inventory"]) == 0
    assert capsys.readouterr().out == f"{files.REPO_ROOT / '.lab' / 'x2' / 'hosts.yml'}\n"
    assert fleetlab.main(["--name", "fleet-lab", "inventory"]) == 0
    assert capsys.readouterr().out == f"{files.REPO_ROOT / 'inventories' / 'lab' / 'hosts.yml'}\n"
    # everything else still needs root
    assert fleetlab.main(["--name", "x1", "status"]) == 1
    assert "run as root" in capsys.readouterr().err


def test_inventory_header_names_the_lab() -> None:
    hosts = model.plan_hosts(1, 0, NET, "x1")
    assert "`python3 -m lab --name x1 up`" in model.render_inventory(hosts, Path("/k"), Path("/r"), "x1")
    assert "`python3 -m lab up`" in model.render_inventory(hosts, Path("/k"), Path("/r"))


def test_named_inventory_sees_the_lab_group_vars(tmp_path: Path) -> None:
    (tmp_path / "inventories" / "lab" / "group_vars" / "all").mkdir(parents=True)
    paths = files.Paths(tmp_path, "x1")
    paths.state_dir.mkdir(parents=True)
    files.link_inventory_vars(paths)
    files.link_inventory_vars(paths)  # again: no error
    link = paths.state_dir / "group_vars"
    assert link.is_symlink() and link.resolve() == (tmp_path / "inventories" / "lab" / "group_vars").resolve()
    assert not (paths.state_dir / "host_vars").exists()  # no inventories/lab/host_vars: no link


def test_container_matches_on_a_named_network() -> None:
    host = model.Host("x1-1", "172.29.140.11", "gpu")
    info = {
        "State": {"Running": True},
        "Image": "sha256:abc",
        "NetworkSettings": {"Networks": {"x1": {"IPAddress": "172.29.140.11"}}},
    }
    assert objects.container_matches(info, "sha256:abc", host, "x1")
    assert not objects.container_matches(info, "sha256:abc", host)  # not on network fleet-lab


def test_lock_serialises_and_survives_removal_of_the_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / "x1" / "lock"
    order: list[str] = []
    holding = threading.Event()

    def second() -> None:
        holding.wait()
        with files.locked(lock):
            order.append("second")
            assert lock.exists()  # it locked the file anew, not the removed one

    t = threading.Thread(target=second)
    with files.locked(lock):
        t.start()
        holding.set()
        time.sleep(0.3)  # the other thread is waiting now
        order.append("first")
        lock.unlink()  # like `down` removing .lab/NAME/
        lock.parent.rmdir()
    t.join(5)
    assert order == ["first", "second"]


def test_lab_dirs(tmp_path: Path) -> None:
    shared = tmp_path / ".lab"
    for d in ("ssh", "x1", "x2", "Bad"):
        (shared / d).mkdir(parents=True)
    (shared / "lock").write_text("")
    assert files.lab_dirs(files.Paths(tmp_path)) == ["x1", "x2"]
    assert files.lab_dirs(files.Paths(tmp_path / "nowhere")) == []


# --- down of one lab and of every lab, against a fake docker ------------------------------------------


class FakeDocker:
    """Just enough of the docker CLI for cmd_down: containers and networks with labels."""

    def __init__(self, containers: dict[str, dict[str, str]], networks: dict[str, dict[str, str]]) -> None:
        self.containers = containers
        self.networks = networks

    def docker(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        out = ""
        if args[:3] == ("ps", "-aq", "--filter"):
            key = args[3].removeprefix("label=")
            out = "\n".join(n for n, labels in self.containers.items() if key in labels)
        elif args[:3] == ("rm", "-f", "-v"):
            for name in args[3:]:
                del self.containers[name]
        elif args[:3] == ("network", "ls", "-q"):
            out = "\n".join(self.networks)
        elif args[:2] == ("network", "rm"):
            del self.networks[args[2]]
        else:
            raise AssertionError(f"unexpected docker {args}")
        return subprocess.CompletedProcess(["docker", *args], 0, out, "")

    def docker_json(self, *args: str) -> list[dict[str, object]]:
        if args[0] == "inspect":
            return [{"Name": f"/{n}", "Config": {"Labels": self.containers[n]}} for n in args[1:]]
        if args[:2] == ("network", "inspect"):
            return [
                {"Name": n, "Labels": self.networks[n], "IPAM": {"Config": []}} for n in args[2:] if n in self.networks
            ]
        raise AssertionError(f"unexpected docker_json {args}")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDocker:
    fd = FakeDocker(
        containers={
            "fleet-lab-1": {"fleet-lab": "1", "fleet-lab.recipe": "old"},  # started before named labs
            "fleet-lab-2": {"fleet-lab": "fleet-lab"},
            "x1-1": {"fleet-lab": "x1"},
            "x1-2": {"fleet-lab": "x1"},
            "x2-1": {"fleet-lab": "x2"},
            "odd": {"fleet-lab": "Not A Name"},
            "molecule-guest": {"fleet-lab.recipe": "abc"},  # not a lab's: never touched
        },
        networks={
            "bridge": {},
            "fleet-lab": {"fleet-lab": "1"},
            "x1": {"fleet-lab": "x1"},
            "x2": {"fleet-lab": "x2"},
            "mine": {},
        },
    )
    monkeypatch.setattr(objects, "docker", fd.docker)
    monkeypatch.setattr(objects, "docker_json", fd.docker_json)
    monkeypatch.setattr(fleetlab, "dockerd_up", lambda paths, clock: None)
    for f in (
        ".lab/state.json",
        "inventories/lab/hosts.yml",
        ".lab/x1/hosts.yml",
        ".lab/x3/hosts.yml",
        ".lab/ssh/id_ed25519",
    ):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    return fd


def test_down_of_a_named_lab_leaves_the_others(fake: FakeDocker, tmp_path: Path) -> None:
    fleetlab.cmd_down(files.Paths(tmp_path, "x1"), dockerctl.Clock(), purge_too=False, every=False)
    assert set(fake.containers) == {"fleet-lab-1", "fleet-lab-2", "x2-1", "odd", "molecule-guest"}
    assert set(fake.networks) == {"bridge", "fleet-lab", "x2", "mine"}
    assert not (tmp_path / ".lab" / "x1").exists()
    assert (tmp_path / "inventories/lab/hosts.yml").exists() and (tmp_path / ".lab/x3/hosts.yml").exists()


def test_down_of_the_default_lab_takes_its_legacy_containers(fake: FakeDocker, tmp_path: Path) -> None:
    fleetlab.cmd_down(files.Paths(tmp_path), dockerctl.Clock(), purge_too=False, every=False)
    assert set(fake.containers) == {"x1-1", "x1-2", "x2-1", "odd", "molecule-guest"}
    assert set(fake.networks) == {"bridge", "x1", "x2", "mine"}
    assert not (tmp_path / "inventories/lab/hosts.yml").exists() and not (tmp_path / ".lab/state.json").exists()
    assert (tmp_path / ".lab/x1/hosts.yml").exists() and (tmp_path / ".lab/ssh/id_ed25519").exists()


def test_down_all_removes_every_lab_and_nothing_else(fake: FakeDocker, tmp_path: Path) -> None:
    fleetlab.cmd_down(files.Paths(tmp_path, "x2"), dockerctl.Clock(), purge_too=False, every=True)
    assert set(fake.containers) == {"molecule-guest"}
    assert set(fake.networks) == {"bridge", "mine"}
    assert sorted(p.name for p in (tmp_path / ".lab").iterdir()) == ["lock", "ssh"]
    assert objects.known_labs(files.Paths(tmp_path), {"c": {"Config": {"Labels": {"fleet-lab": "../x"}}}}) == [
        "fleet-lab"
    ]
    assert not (tmp_path / "inventories/lab/hosts.yml").exists()


def test_purge_is_refused_while_other_labs_are_up(fake: FakeDocker, tmp_path: Path) -> None:
    before = dict(fake.containers)
    with pytest.raises(dockerctl.LabError, match=r"other labs are up \(Not A Name, fleet-lab, x2\)"):
        fleetlab.cmd_down(files.Paths(tmp_path, "x1"), dockerctl.Clock(), purge_too=True, every=False)
    assert fake.containers == before
