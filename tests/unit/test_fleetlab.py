"""Unit tests of the pure parts of `python3 -m lab` (no docker, no root, no network)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab import dockerctl, fleetlab, model

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
    files = model.read_recipe_files(Path(fleetlab.__file__).parent / "image")
    assert "Dockerfile" in files
    assert b"STOPSIGNAL SIGRTMIN+3" in files["Dockerfile"]
    assert model.HOSTKEY_UNIT in files
    assert b"ssh-keygen -A" in files[model.HOSTKEY_UNIT]
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
    argv = fleetlab.ssh_argv(Path("/k"), "172.29.81.11", ["systemctl", "is-active", "nginx"])
    assert argv[:3] == ["ssh", "-i", "/k"]
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert "BatchMode=yes" in argv
    assert argv[-4:] == ["root@172.29.81.11", "systemctl", "is-active", "nginx"]
    assert "BatchMode=yes" not in fleetlab.ssh_argv(Path("/k"), "a", batch=False)


def test_paths_follow_the_repository_root(tmp_path: Path) -> None:
    paths = fleetlab.Paths(tmp_path)
    assert paths.ssh_key == tmp_path / ".lab" / "ssh" / "id_ed25519"
    assert paths.inventory == tmp_path / "inventories" / "lab" / "hosts.yml"
    assert paths.release_store == tmp_path / "build" / "releases"
    assert (fleetlab.REPO_ROOT / "lab" / "fleetlab.py").is_file()


def test_container_matches() -> None:
    host = model.Host("fleet-lab-1", "172.29.81.11", "gpu")
    info = {
        "State": {"Running": True},
        "Image": "sha256:abc",
        "NetworkSettings": {"Networks": {"fleet-lab": {"IPAddress": "172.29.81.11"}}},
    }
    assert fleetlab.container_matches(info, "sha256:abc", host)
    assert not fleetlab.container_matches(info, "sha256:new", host)
    assert not fleetlab.container_matches({**info, "State": {"Running": False}}, "sha256:abc", host)
    assert not fleetlab.container_matches(info, "sha256:abc", model.Host("fleet-lab-1", "172.29.81.99", "gpu"))


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
    assert (args.name, args.cmd) == ("fleet-lab-2", ["systemctl", "is-active", "nginx"])
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
