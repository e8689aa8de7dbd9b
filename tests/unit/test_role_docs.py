"""Every role documents itself: README, commented defaults, argument specs, in step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tools import role_docs

ROLES = sorted(p for p in (role_docs.ROOT / "roles").iterdir() if p.is_dir())


def test_role_readme_tables_match_argument_specs():
    assert role_docs.stale_readmes(write=False) == [], "run: python3 tools/role_docs.py"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_readme_specs_and_meta(role: Path):
    for required in ("README.md", "meta/argument_specs.yml", "meta/main.yml"):
        assert (role / required).is_file(), f"{role.name} lacks {required}"
    meta = yaml.safe_load((role / "meta/main.yml").read_text())
    assert meta["galaxy_info"]["role_name"] == role.name


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_commented_and_specified(role: Path):
    defaults_file = role / "defaults/main.yml"
    if not defaults_file.exists():
        return
    lines = defaults_file.read_text().splitlines()
    defaults = yaml.safe_load("\n".join(lines)) or {}
    options = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    for name in defaults:
        assert name in options, f"{role.name}: default {name} is missing from argument_specs"
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        # The paragraph a default sits in (lines down to the previous blank line) carries a comment.
        start = max((i for i, line in enumerate(lines[:index]) if not line.strip()), default=-1) + 1
        paragraph = lines[start:index]
        assert any(line.lstrip().startswith("#") for line in paragraph), f"{role.name}: {name} is not commented"
