"""awx/execution-environment.yml pins what the project runs, and `ansible-builder create` turns it
into the build context we expect (no registry is needed to create it, only to build it)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ansible_collections
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
EE_FILE = ROOT / "awx" / "execution-environment.yml"
EE = yaml.safe_load(EE_FILE.read_text())


def pip_pins() -> dict[str, str]:
    """requirements.txt as name -> version (every line there is pinned with ==)."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def ee_collections() -> dict[str, str]:
    return {c["name"]: str(c["version"]) for c in EE["dependencies"]["galaxy"]["collections"]}


def installed_collection_version(name: str) -> str:
    """The version of a collection the pinned `ansible` package installed into this Python."""
    namespace, collection = name.split(".")
    for base in ansible_collections.__path__:
        manifest = Path(base) / namespace / collection / "MANIFEST.json"
        if manifest.is_file():
            return str(json.loads(manifest.read_text())["collection_info"]["version"])
    raise AssertionError(f"collection {name} is not installed; run `make venv`")


def test_the_definition_is_ansible_builder_v3():
    assert EE["version"] == 3
    assert EE["images"]["base_image"]["name"]


@pytest.mark.parametrize("package", ["ansible-core", "ansible-runner"])
def test_ansible_core_and_runner_are_pinned_as_in_requirements_txt(package: str):
    key = package.replace("-", "_")
    assert EE["dependencies"][key]["package_pip"] == f"{package}=={pip_pins()[package]}"


def test_mitogen_is_pinned_as_in_requirements_txt():
    assert EE["dependencies"]["python"] == [f"mitogen=={pip_pins()['mitogen']}"]


def test_the_venv_runs_the_pinned_ansible():
    """The collections below are compared with this installation: it must be the pinned one."""
    assert importlib.metadata.version("ansible") == pip_pins()["ansible"], "run `make venv`"
    assert importlib.metadata.version("ansible-core") == pip_pins()["ansible-core"], "run `make venv`"


def test_the_collections_are_those_of_requirements_yml():
    wanted = {c["name"] for c in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]}
    assert set(ee_collections()) == wanted


@pytest.mark.parametrize("name", sorted(ee_collections()))
def test_each_collection_is_pinned_to_the_version_the_project_runs(name: str):
    pinned = ee_collections()[name]
    ranges = {c["name"]: c.get("version", "*") for c in yaml.safe_load((ROOT / "requirements.yml").read_text())[
        "collections"]}
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"{name}: pin an exact version, not {pinned!r}"
    assert pinned == installed_collection_version(name), (
        f"{name}: the EE pins {pinned} but `ansible=={pip_pins()['ansible']}` bundles "
        f"{installed_collection_version(name)}; update awx/execution-environment.yml")
    if ranges[name] != "*":
        assert Version(pinned) in SpecifierSet(ranges[name]), f"{name} {pinned} is outside {ranges[name]}"


def test_the_python_interpreter_runs_ansible_core_2_19():
    interpreter = EE["dependencies"]["python_interpreter"]
    version = re.search(r"python(3\.\d+)$", interpreter["python_path"])
    assert version and Version(version.group(1)) >= Version("3.11"), interpreter
    assert version.group(0) in interpreter["package_system"]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context `ansible-builder create` writes (no container runtime involved)."""
    out = tmp_path_factory.mktemp("ee") / "context"
    result = subprocess.run(
        [sys.executable, "-m", "ansible_builder", "create", "--file", str(EE_FILE), "--context", str(out),
         "--output-filename", "Containerfile", "-v", "2"],
        cwd=EE_FILE.parent, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_create_writes_a_containerfile_and_build_files(context: Path):
    files = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    assert files == [
        "Containerfile",
        "_build/bindep.txt",
        "_build/requirements.txt",
        "_build/requirements.yml",
        "_build/scripts/assemble",
        "_build/scripts/check_ansible",
        "_build/scripts/check_galaxy",
        "_build/scripts/entrypoint",
        "_build/scripts/install-from-bindep",
        "_build/scripts/introspect.py",
        "_build/scripts/pip_install",
    ]
    for script in ("assemble", "check_ansible", "install-from-bindep", "entrypoint", "pip_install"):
        assert os.access(context / "_build/scripts" / script, os.X_OK), script


def test_the_containerfile_installs_the_pinned_content(context: Path):
    containerfile = (context / "Containerfile").read_text()
    pins = pip_pins()
    base = EE["images"]["base_image"]["name"]
    assert f'ARG EE_BASE_IMAGE="{base}"' in containerfile
    assert f'ARG ANSIBLE_INSTALL_REFS="ansible-core=={pins["ansible-core"]} ' \
           f'ansible-runner=={pins["ansible-runner"]}"' in containerfile
    assert f'ARG PYCMD="{EE["dependencies"]["python_interpreter"]["python_path"]}"' in containerfile
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" \
        in containerfile
    assert "introspect.py introspect --user-pip=requirements.txt --user-bindep=bindep.txt" in containerfile
    assert "LABEL ansible-execution-environment=true" in containerfile
    assert re.search(r"^RUN /output/scripts/check_ansible \$PYCMD$", containerfile, re.MULTILINE)


def test_the_context_carries_the_pinned_collections_python_and_system_packages(context: Path):
    collections = yaml.safe_load((context / "_build/requirements.yml").read_text())["collections"]
    assert {c["name"]: str(c["version"]) for c in collections} == ee_collections()
    bindep = (context / "_build/bindep.txt").read_text().splitlines()
    assert "openssh-clients [platform:rpm]" in bindep
    assert (context / "_build/requirements.txt").read_text().split() == [f"mitogen=={pip_pins()['mitogen']}"]
