"""The strategy plugin loads the Jinja plugins in the controller's process, before it forks a
worker per task: a worker then finds every filter without importing a plugin file again."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

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


def test_without_mitogen_each_play_loads_the_plugins_then_runs_plain_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ansible_mitogen", None)  # an import of it raises ImportError
    monkeypatch.setitem(sys.modules, "ansible_mitogen.strategy", None)
    fleet_linear = _fleet_linear()
    linear = plugin_loader.strategy_loader.get("linear", class_only=True)
    assert fleet_linear.StrategyModule.__mro__[1] is linear
    calls: list[Any] = []
    monkeypatch.setattr(fleet_linear, "load_jinja_plugins", lambda: calls.append("load"))

    def linear_run(_self: Any, iterator: Any, play_context: Any) -> None:  # ansible-core's signature
        calls.append(("run", iterator, play_context))

    monkeypatch.setattr(linear, "run", linear_run)

    strategy = object.__new__(fleet_linear.StrategyModule)
    strategy.run("iterator", "play context")  # the two arguments TaskQueueManager passes
    assert calls == ["load", ("run", "iterator", "play context")]
