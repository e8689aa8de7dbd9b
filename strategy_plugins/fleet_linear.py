"""The `linear` strategy run over Mitogen for Ansible when it is installed, else plain `linear`,
with the Jinja plugins loaded once before any worker is forked.

Mitogen keeps one Python interpreter per host and sends modules through it instead of copying and
starting each task's module over SSH: a no-op site.yml on the lab takes about half the time.
ansible.cfg selects this strategy; `ANSIBLE_STRATEGY=linear` turns Mitogen off for one run.

Plays with `connection: local` (molecule's create and destroy, awx/configure.yml) run on plain
`linear`: there is no connection to save on the controller, and modules of collections that import
their module_utils relatively (community.docker, awx.awx) fail under Mitogen's module runner.
An environment without the `mitogen` package (an AWX execution environment built without it)
runs plain `linear` everywhere, with a warning, instead of failing.

ansible-core forks a worker process per host and task, and a worker's first template imports
every filter and test plugin file: on the lab that was a third of all the workers' CPU time. They
are imported here instead, once per play, and every worker inherits them. A role that adds a
plugin directory later (include_role) clears that cache, and the workers load again, as before.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.loader import filter_loader, strategy_loader, test_loader
from ansible.utils.display import Display

LOCAL_CONNECTIONS = ("local", "ansible.builtin.local", "ansible.legacy.local")


def load_jinja_plugins() -> None:
    """Import every filter and test plugin in this process (Jinja2Loader.all fills its cache)."""
    for loader in (filter_loader, test_loader):
        for _plugin in loader.all():
            pass


def _strategy() -> Any:
    linear = strategy_loader.get("linear", class_only=True)
    try:
        import ansible_mitogen.strategy
    except ImportError:
        Display().warning("fleet_linear: the mitogen package is not installed; running the plain linear strategy")
        return linear

    class MitogenLinear(ansible_mitogen.strategy.StrategyMixin, linear):  # type: ignore[misc,valid-type]
        """Mitogen's mixin over ansible.builtin.linear, as its own mitogen_linear plugin does,
        except for plays on the controller itself."""

        def run(self, iterator: Any, play_context: Any, result: int = 0) -> Any:
            if iterator._play.connection in LOCAL_CONNECTIONS:
                return linear.run(self, iterator, play_context)
            return super().run(iterator, play_context, result)

    return MitogenLinear


class StrategyModule(_strategy()):  # type: ignore[misc]
    """One strategy object per play: the Jinja plugins are loaded before it forks any worker."""

    def run(self, iterator: Any, play_context: Any) -> Any:  # as TaskQueueManager calls it
        load_jinja_plugins()
        return super().run(iterator, play_context)
