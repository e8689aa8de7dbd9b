"""The strategy plugin loads the Jinja plugins in the controller's process, before it forks a
worker per task: a worker then finds every filter without importing a plugin file again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.plugins import loader as plugin_loader

ROOT = Path(__file__).resolve().parents[2]


def _fleet_linear():
    spec = importlib.util.spec_from_file_location("fleet_linear", ROOT / "strategy_plugins" / "fleet_linear.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_after_loading_a_filter_is_found_without_importing_any_plugin_file(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_loader.filter_loader.add_directory(str(ROOT / "filter_plugins"))
    _fleet_linear().load_jinja_plugins()

    def no_import(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a plugin file was imported after load_jinja_plugins")

    monkeypatch.setattr(plugin_loader.PluginLoader, "_load_module_source", no_import)
    assert plugin_loader.filter_loader.get("fleet_service_states") is not None
    assert plugin_loader.filter_loader.get("to_json") is not None
    assert plugin_loader.test_loader.get("version") is not None


def test_the_strategy_is_ansibles_linear() -> None:
    linear = plugin_loader.strategy_loader.get("linear", class_only=True)
    assert issubclass(_fleet_linear().StrategyModule, linear)
