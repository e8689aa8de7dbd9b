"""Tests for tools/build_release.py: archive contents, determinism, version checks, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tools import build_release as builder  # tests/unit/conftest.py puts the root on sys.path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILDER_PATH = REPO_ROOT / "tools" / "build_release.py"
APP_PATH = REPO_ROOT / "services" / "demo" / "app.py"


def _release_json(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("release.json")
        assert member is not None
        data = json.load(member)
    assert isinstance(data, dict)
    return data


def test_archive_holds_app_and_release_json_at_top_level(tmp_path: Path) -> None:
    archive = builder.build_release("1.2.0", tmp_path)

    assert archive == tmp_path / "demo-service-1.2.0.tar.gz"
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["app.py", "release.json"]
        for m in members:
            assert m.isfile()
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root")
            assert m.mtime == builder.ARCHIVE_MTIME
        app = tar.extractfile("app.py")
        assert app is not None
        assert app.read() == APP_PATH.read_bytes()
    assert _release_json(archive) == {"version": "1.2.0", "unhealthy": False, "startup_delay": 0}


def test_flags_are_baked_into_release_json(tmp_path: Path) -> None:
    archive = builder.build_release("9.9.9-unhealthy", tmp_path, unhealthy=True, startup_delay=2.5)

    assert _release_json(archive) == {
        "version": "9.9.9-unhealthy", "unhealthy": True, "startup_delay": 2.5}


def test_faults_are_baked_only_when_set(tmp_path: Path) -> None:
    archive = builder.build_release("4.0.0-flaky", tmp_path, error_share=0.2, latency=1)

    assert _release_json(archive) == {
        "version": "4.0.0-flaky", "unhealthy": False, "startup_delay": 0, "error_share": 0.2, "latency": 1}
    with pytest.raises(ValueError, match="error share must be from 0 to 1"):
        builder.build_release("4.0.0-flaky", tmp_path, error_share=2)
    result = _cli("--version", "5.0.0", "--latency", "-1", "--out", str(tmp_path))
    assert result.returncode == 2 and "--latency must be >= 0 seconds" in result.stderr


def test_rebuilding_a_version_gives_identical_bytes(tmp_path: Path) -> None:
    first = builder.build_release("1.0.0", tmp_path / "a").read_bytes()
    second_path = builder.build_release("1.0.0", tmp_path / "b")
    again = builder.build_release("1.0.0", tmp_path / "b")

    assert second_path.read_bytes() == first
    assert again.read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["demo-service-1.0.0.tar.gz"]


@pytest.mark.parametrize("version", ["", "-1.0", ".hidden", "../1.0", "1.0/2", "1 0", "1.0\n",
                                     "v1;rm", "1.0$"])
def test_bad_versions_are_rejected(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        builder.build_release(version, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", ["1.2.0", "2.0.0-rc.1", "1.0.0+build.5", "main_2024", "7"])
def test_good_versions_are_accepted(version: str) -> None:
    assert builder.check_version(version) == version


def test_negative_startup_delay_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="startup delay"):
        builder.build_release("1.0.0", tmp_path, startup_delay=-1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILDER_PATH), *args], capture_output=True,
                          text=True, timeout=30, check=False)


def test_cli_prints_the_path_it_wrote(tmp_path: Path) -> None:
    result = _cli("--version", "3.0.0-slow", "--startup-delay", "5", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.strip())
    assert written == tmp_path / "demo-service-3.0.0-slow.tar.gz"
    assert _release_json(written)["startup_delay"] == 5


def test_cli_rejects_a_bad_version(tmp_path: Path) -> None:
    result = _cli("--version", "../evil", "--out", str(tmp_path))

    assert result.returncode == 2
    assert "invalid version" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_all_lab_builds_the_lab_releases(tmp_path: Path) -> None:
    result = _cli("--all-lab", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr
    names = sorted(Path(line).name for line in result.stdout.split())
    assert names == sorted(f"demo-service-{v}.tar.gz" for v in
                           ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "9.9.9-unhealthy", "3.0.0-slow", "4.0.0-flaky",
                            "4.1.0-laggy"])
    assert _release_json(tmp_path / "demo-service-9.9.9-unhealthy.tar.gz")["unhealthy"] is True
    assert _release_json(tmp_path / "demo-service-3.0.0-slow.tar.gz")["startup_delay"] == 5
    assert _release_json(tmp_path / "demo-service-4.0.0-flaky.tar.gz")["error_share"] == 0.2
    assert _release_json(tmp_path / "demo-service-4.1.0-laggy.tar.gz")["latency"] == 0.25
    assert _release_json(tmp_path / "demo-service-2.0.0.tar.gz") == {
        "version": "2.0.0", "unhealthy": False, "startup_delay": 0}
