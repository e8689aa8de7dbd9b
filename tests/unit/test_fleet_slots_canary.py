"""A canary on a fake host (fleet_slots.engine.canary, then run() of the same deploy for its 100):
each step's weight journaled and set in nginx, the lock kept between steps, an audit line per
step; a breach, a take-back and a killed canary all put every request back on the old slot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fleet_slots import engine, lock, nginx, state
from fleet_slots.watch import Limits
from test_fleet_watch import FakeHost, on_fake_host, reading


class CanaryHost(FakeHost):
    """FakeHost with nginx's canary: request n goes to the canary port when floor(n*w/100) passes
    a whole number (the Lua balancer's rule)."""

    def __init__(self, bad: str) -> None:
        super().__init__(bad)
        self.canary: tuple[int, int] | None = None
        self.count = 0
        self.weights: list[int] = []
        self.served: dict[int, int] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().install(monkeypatch)
        monkeypatch.setattr(nginx, "set_canary", self.set_canary)
        monkeypatch.setattr(nginx, "clear_canary", self.clear_canary)

    def set_canary(self, service: str, port: int, weight: int, control_socket: str = "") -> None:
        assert port != self.route
        self.canary, self.count = (port, weight), 0
        self.weights.append(weight)

    def clear_canary(self, service: str, control_socket: str = "") -> None:
        self.canary = None
        self.weights.append(0)

    def switch(self, service: str, port: int, control_socket: str = "") -> int:
        self.canary = None  # a switch ends a canary, as in the Lua
        return super().switch(service, port, control_socket)

    def slot_of_next_request(self) -> int:
        if self.canary is None:
            return self.route
        port, weight = self.canary
        self.count += 1
        return port if self.count * weight // 100 > (self.count - 1) * weight // 100 else self.route

    def metrics(self, service: str, window: int = 300, control_socket: str = "") -> dict:
        for _ in range(20):
            slot = self.slot_of_next_request()
            self.served[slot] = self.served.get(slot, 0) + 1
            self.requests += 1
            if self.releases.get(slot) == self.bad and self.served[slot] % 2 == 0:
                self.errors += 1
        return reading(self.requests, self.errors)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CanaryHost, engine.Spec]:
    fake_host = CanaryHost(bad="4.0.0-flaky")
    return fake_host, on_fake_host(fake_host, tmp_path, monkeypatch, Limits(seconds=0.3, interval=0.01,
                                                                            min_requests=20))


def step(spec: engine.Spec, release: str, weight: int, audit: Path, deploy_id: str = "c1",
         **kwargs: Any) -> engine.Outcome:
    return engine.canary(spec, release=release, weight=weight, deploy_id=deploy_id, owner="t@test", hostname="h1",
                         lock_ttl=60, break_lock=False, audit_log=str(audit), **kwargs)


def finish(spec: engine.Spec, release: str, audit: Path, deploy_id: str = "c1") -> engine.Outcome:
    return engine.run(spec, mode="deploy", release=release, deploy_id=deploy_id, owner="t@test", hostname="h1",
                      lock_ttl=60, break_lock=False, audit_log=str(audit))


def lines(audit: Path) -> list[dict]:
    return [json.loads(line) for line in audit.read_text().splitlines()]


def test_a_canary_steps_up_then_its_100_finishes_the_move(fake, tmp_path: Path):
    fake_host, spec = fake
    audit = tmp_path / "deploy.log"
    first = step(spec, "1.1.0", 5, audit)
    assert first.result == "ok", first.message
    assert list(first.durations) == ["start", "health_gate", "canary", "watch"]
    now = state.load("svc", spec.state_dir)
    assert now is not None and now.live_port == 8090 and now.weight == 5 and now.to_dict()["weight"] == 5
    assert now.pending is not None and (now.pending.phase, now.pending.to_port) == ("canary", 9090)
    # Between steps the lock stays this deploy's, without a process: another run is refused.
    held = lock.read("svc", spec.lock_dir)
    assert held is not None and held["handover"] and "pid" not in held
    assert lock.held_by_other(held, "other") and "between canary steps" in lock.describe(held)
    refused = finish(spec, "1.0.0", audit, deploy_id="other")
    assert refused.result == "failed" and "between canary steps" in refused.message

    second = step(spec, "1.1.0", 25, audit)
    assert second.result == "ok" and second.canary["from_weight"] == 5 and "takes 25%" in second.message
    assert state.load("svc", spec.state_dir).weight == 25  # type: ignore[union-attr]
    # Exact split: of the requests the watch made through nginx in that step, 25% reached 9090.
    assert fake_host.weights == [5, 25]

    done = finish(spec, "1.1.0", audit)
    assert done.result == "ok", done.message
    assert "start" not in done.durations and done.canary["weight"] == 100 and done.canary["from_weight"] == 25
    after = state.load("svc", spec.state_dir)
    assert after is not None and (after.live_port, after.live_release, after.pending, after.weight) == (
        9090, "1.1.0", None, None)
    assert after.history == ["1.0.0", "1.1.0"] and fake_host.units["svc@8090.service"] == "inactive"
    assert fake_host.canary is None and fake_host.route == 9090
    assert lock.read("svc", spec.lock_dir) is None
    records = [(r["mode"], r["result"], (r.get("canary") or {}).get("weight")) for r in lines(audit)]
    assert records == [("canary", "ok", 5), ("canary", "ok", 25), ("deploy", "ok", 100)]  # the refusal: none


def test_a_breach_in_a_step_takes_the_canary_back_and_marks_the_release_bad(fake, tmp_path: Path):
    fake_host, spec = fake
    audit = tmp_path / "deploy.log"
    fake_host.bad = ""  # good at 10%; its 5xx start with more load
    assert step(spec, "4.0.0-flaky", 10, audit).result == "ok"
    fake_host.bad = "4.0.0-flaky"
    broken = step(spec, "4.0.0-flaky", 50, audit)
    assert (broken.result, broken.phase) == ("failed", "watch"), broken.message
    assert "with 50% of the requests breached its limits" in broken.message
    assert "release marked bad on this host" in broken.message
    assert fake_host.canary is None and fake_host.route == 8090 and fake_host.units["svc@9090.service"] == "inactive"
    after = state.load("svc", spec.state_dir)
    assert after is not None and after.pending is None and after.weight is None
    assert after.bad_releases == ["4.0.0-flaky"] and "9090" not in after.slots
    assert lock.read("svc", spec.lock_dir) is None
    assert [(r["mode"], r["result"], r["canary"]["weight"]) for r in lines(audit)] == [
        ("canary", "ok", 10), ("canary", "failed", 50)]


def test_weight_0_takes_the_canary_back_without_marking_the_release(fake, tmp_path: Path):
    fake_host, spec = fake
    audit = tmp_path / "deploy.log"
    assert step(spec, "1.1.0", 5, audit).result == "ok"
    back = step(spec, "1.1.0", 0, audit)
    assert back.result == "ok" and back.message.startswith("canary taken back from 5%")
    after = state.load("svc", spec.state_dir)
    assert after is not None and after.pending is None and after.bad_releases == [] and after.live_port == 8090
    assert fake_host.canary is None and fake_host.units["svc@9090.service"] == "inactive"
    assert lock.read("svc", spec.lock_dir) is None
    assert step(spec, "1.1.0", 0, audit).result == "unchanged"  # nothing left to take back
    assert lines(audit)[-1]["canary"] == {"weight": 0, "from_weight": 5, "set_epoch": lines(audit)[-1]["canary"][
        "set_epoch"]}


def test_steps_only_go_up(fake, tmp_path: Path):
    _, spec = fake
    audit = tmp_path / "deploy.log"
    assert step(spec, "1.1.0", 25, audit).result == "ok"
    lower = step(spec, "1.1.0", 5, audit)
    assert lower.result == "failed" and "canary steps only go up: 5% after 25%" in lower.message
    assert state.load("svc", spec.state_dir).weight == 25  # type: ignore[union-attr]


def test_an_unfinished_canary_is_taken_back_by_the_next_run(fake, tmp_path: Path):
    """The canary's controller died between steps and its lock expired: the next run (here a
    deploy of another release) takes the lock over and puts every request back on the old slot,
    whatever the new slot's health, before doing its own move."""
    fake_host, spec = fake
    audit = tmp_path / "deploy.log"
    assert step(spec, "1.1.0", 25, audit).result == "ok"
    held = lock.read("svc", spec.lock_dir)
    assert held is not None
    held["expires_epoch"] = time.time() - 1
    lock.path_of("svc", spec.lock_dir).write_text(json.dumps(held))
    assert lock.orphaned(held) and "its next step never came" in lock.describe(held)
    current = state.load("svc", spec.state_dir)
    assert current is not None
    found = engine.reconcile(spec, current)
    assert "interrupted after its canary 25% phase" in found
    assert "had 25% of the requests in an unfinished canary, so traffic is on 1.0.0 (slot 8090)" in found
    assert fake_host.canary is None and fake_host.units["svc@9090.service"] == "inactive"
    after = state.load("svc", spec.state_dir)
    assert after is not None and after.pending is None and after.live_port == 8090 and after.bad_releases == []
    outcome = finish(spec, "1.1.0", audit, deploy_id="next")
    assert outcome.result == "ok" and outcome.canary == {}


def test_a_canary_killed_mid_switch_at_100_is_finished(fake, tmp_path: Path):
    """Killed after nginx switched at 100 but before the journal said so: routed to the new,
    healthy slot, the move is finished, as for a plain move killed there."""
    fake_host, spec = fake
    assert step(spec, "1.1.0", 25, tmp_path / "deploy.log").result == "ok"
    fake_host.switch("svc", 9090)
    current = state.load("svc", spec.state_dir)
    assert current is not None
    assert "so the move was finished" in engine.reconcile(spec, current)
    after = state.load("svc", spec.state_dir)
    assert after is not None and (after.live_port, after.live_release, after.pending) == (9090, "1.1.0", None)
