"""The watch window after a switch (fleet_slots.watch) and the engine's use of it: the judging of
figures, the polling loop on a fake clock, and a whole move on a fake host whose new release
answers 5xx through nginx (traffic back on the old slot, release marked bad, audit line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fleet_slots import engine, host, nginx, state, watch
from fleet_slots.watch import Limits, judge

BOUNDS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]
DEFAULT = Limits(seconds=30)  # 1% of 100 requests, p99 not judged


# --------------------------------------------------------------------------- judge

def test_a_quiet_healthy_release_passes():
    assert judge(DEFAULT, 0, 0, None, 0) == ""
    assert judge(DEFAULT, 5000, 50, 12.0, 1) == ""  # exactly 1%, one lost health probe


def test_a_share_above_the_limit_breaches_once_enough_requests_were_seen():
    reason = judge(DEFAULT, 200, 3, None, 0)
    assert reason == "3 of 200 requests answered 5xx (1.5%, more than the 1.00% allowed)"


def test_below_min_requests_only_a_count_too_many_out_of_min_requests_breaches():
    # 1 of 3 is 33%, but 3 requests say little: 1% of 100 allows one 5xx...
    assert judge(DEFAULT, 3, 1, None, 0) == ""
    # ...a second one is already too many out of 100.
    assert judge(DEFAULT, 10, 2, None, 0) == (
        "2 of 10 requests answered 5xx: more than the 1 allowed before 100 requests (1.00% of them)")
    # With no traffic at all, 5xx counted from the old slot's last requests still count.
    assert judge(DEFAULT, 0, 0, None, 0) == ""


def test_a_stricter_catalog_breaches_on_the_first_5xx():
    strict = Limits(seconds=2, max_error_share=0.01, min_requests=20)  # 0.2 allowed: none
    assert strict.errors_allowed_early == 0
    assert judge(strict, 5, 1, None, 0).startswith("1 of 5 requests answered 5xx: more than the 0 allowed")
    assert judge(Limits(max_error_share=0), 1000, 1, None, 0).startswith("1 of 1000 requests answered 5xx")


def test_p99_is_judged_only_when_asked_and_on_enough_requests():
    assert judge(DEFAULT, 1000, 0, 900.0, 0) == ""  # max_p99_ms None: not judged
    latency = Limits(max_p99_ms=200, min_requests=50)
    assert judge(latency, 49, 0, 900.0, 0) == ""  # too few requests to have a p99
    assert judge(latency, 50, 0, 200.0, 0) == ""
    assert judge(latency, 50, 0, 350.0, 0) == (
        "p99 latency 350 ms over 50 requests, more than the 200 ms allowed")


def test_health_is_hard_evidence_whatever_the_traffic():
    assert judge(DEFAULT, 0, 0, None, 2) == "its health check failed 2 times in a row"
    assert judge(DEFAULT, 0, 0, None, 1) == ""
    assert judge(DEFAULT, 0, 0, None, 0, unit_active=False) == "its unit stopped running"


def test_limits_come_from_the_catalogs_deploy_section_and_the_override():
    section = {"watch": 2, "max_error_share": 0.05, "max_p99_ms": 250, "min_requests": 20}
    assert watch.limits_of(section) == Limits(seconds=2, max_error_share=0.05, max_p99_ms=250.0, min_requests=20)
    assert watch.limits_of(section, 0).seconds == 0
    assert watch.limits_of({**section, "max_p99_ms": None}).max_p99_ms is None
    assert watch.limits_of(None) == Limits()  # no section: no watch (the catalog fills one in)


# --------------------------------------------------------------------------- the loop

def reading(requests: int, errors: int, fast: int | None = None, slow: int = 0, started: float = 1.0) -> dict:
    buckets = [0] * (len(BOUNDS) + 1)
    buckets[0], buckets[8] = requests - slow if fast is None else fast, slow  # <= 1 ms, <= 500 ms
    return {"now": 0.0, "started": started, "bounds": BOUNDS,
            "services": {"svc": {"total": {"requests": requests, "errors": errors, "seconds_sum": 0.0,
                                           "buckets": buckets}}}}


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_loop(limits: Limits, readings: list[dict], health: list[bool] | None = None, **kwargs: Any):
    fake = FakeTime()
    answers, probes = iter(readings), iter(health or [])
    return watch.watch(limits, service="svc", healthy=lambda: next(probes, True), unit_active=lambda: True,
                       read_metrics=lambda: next(answers), baseline=reading(1000, 5), switched_at=fake.now,
                       clock=fake.clock, sleep=fake.sleep, **kwargs), fake


def test_a_good_release_is_watched_for_the_whole_window_every_interval():
    polls = [reading(1000 + 4 * n, 5) for n in range(1, 20)]
    figures, _ = run_loop(Limits(seconds=2), polls)
    assert figures.breach == "" and figures.seconds == pytest.approx(2.0)
    assert figures.polls == 11  # at 0, 0.2, ..., 2.0 s
    assert (figures.requests, figures.errors, figures.p99_ms) == (44, 0, pytest.approx(0.99))
    assert figures.as_dict()["judged_on"] == "traffic and health"


def test_a_flaky_release_is_caught_at_the_poll_that_sees_its_second_5xx():
    # every fifth request answers 500: after 0.4 s, 10 requests and 2 errors
    polls = [reading(1005, 6), reading(1010, 7), reading(1015, 8)]
    figures, _ = run_loop(Limits(seconds=30), polls)
    assert figures.breach.startswith("2 of 10 requests answered 5xx")
    assert figures.seconds == pytest.approx(0.2) and figures.polls == 2


def test_a_slow_release_is_caught_by_its_p99_once_there_are_enough_requests():
    polls = [reading(1000 + 10 * n, 5, fast=1000, slow=10 * n) for n in range(1, 10)]
    figures, _ = run_loop(Limits(seconds=30, max_p99_ms=100, min_requests=20), polls)
    assert figures.breach.startswith("p99 latency") and figures.requests == 20
    assert 200 < figures.p99_ms <= 500


def test_failing_health_breaches_without_traffic_figures():
    figures, _ = run_loop(Limits(seconds=30), [], health=[True, False, False], judge_traffic=False)
    assert figures.breach == "its health check failed 2 times in a row"
    assert figures.judged_on.startswith("health only (the service is in maintenance")
    assert figures.health_failed == 2


def test_unreadable_figures_leave_the_health_to_judge():
    figures, _ = run_loop(Limits(seconds=1), [reading(1000, 5, started=2.0)])  # nginx restarted
    assert figures.breach == "" and "nginx restarted" in figures.metrics_error
    assert figures.judged_on.startswith("health only from then on")
    assert figures.polls == 6


# --------------------------------------------------------------------------- a move on a fake host

class FakeHost:
    """systemd units, listeners, probes and nginx's slot table of one service, in memory. The
    release named `bad` answers its health but every fifth request through nginx with 500."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.units: dict[str, str] = {}
        self.route = 8090
        self.releases: dict[int, str] = {}
        self.requests = self.errors = 0
        self.switches: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(host, "systemctl", self.systemctl)
        monkeypatch.setattr(host, "unit_active", lambda unit: self.units.get(unit, "inactive"))
        monkeypatch.setattr(host, "start", lambda unit: self.units.__setitem__(unit, "active"))
        monkeypatch.setattr(host, "stop", lambda unit, wait=True: self.units.__setitem__(unit, "inactive"))
        monkeypatch.setattr(host, "wait_inactive", lambda unit, timeout: True)
        monkeypatch.setattr(host, "enable_at_boot", lambda enable, disable: None)
        monkeypatch.setattr(host, "listeners", self.listeners)
        monkeypatch.setattr(host, "get", self.get)
        monkeypatch.setattr(nginx, "route", lambda service, control_socket=None: self.route)
        monkeypatch.setattr(nginx, "switch", self.switch)
        monkeypatch.setattr(nginx, "metrics", self.metrics)

    def systemctl(self, *args: str, check: bool = True) -> Any:
        if args[0] == "stop":
            self.units[args[-1]] = "inactive"
        return None

    def listeners(self, port: int) -> list[host.Listener]:
        unit = f"svc@{port}.service"
        return [host.Listener(1, "app", unit)] if self.units.get(unit) == "active" else []

    def get(self, url: str, host_header: str | None = None, timeout: float = 5.0) -> host.Probe:
        port = int(url.split(":")[2].split("/")[0]) if url.count(":") == 2 else self.route
        return host.Probe(200, '{"status": "ok"}', f"127.0.0.1:{port}", "")

    def switch(self, service: str, port: int, control_socket: str = "") -> int:
        self.switches.append(port)
        previous, self.route = self.route, port
        return previous

    def metrics(self, service: str, window: int = 300, control_socket: str = "") -> dict:
        """Each read: 4 more client requests through nginx, to whichever slot is routed."""
        for _ in range(4):
            self.requests += 1
            if self.releases.get(self.route) == self.bad and self.requests % 5 == 0:
                self.errors += 1
        return reading(self.requests, self.errors)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeHost, engine.Spec]:
    fake_host = FakeHost(bad="4.0.0-flaky")
    return fake_host, on_fake_host(fake_host, tmp_path, monkeypatch, Limits(seconds=0.5, interval=0.01))


def on_fake_host(fake_host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: Limits) -> engine.Spec:
    """Service svc live on 8090 with 1.0.0, releases 1.1.0 and 4.0.0-flaky staged, on `fake_host`."""
    fake_host.install(monkeypatch)
    spec = engine.Spec(service="svc", blue_port=8090, service_root=str(tmp_path / "opt"),
                       state_dir=str(tmp_path / "state"), lock_dir=str(tmp_path / "locks"),
                       config_dir=str(tmp_path / "etc"), verify_timeout=1, watch=limits)
    for release in ("1.0.0", "1.1.0", "4.0.0-flaky"):
        spec.release_dir(release).mkdir(parents=True)
        (spec.release_dir(release) / ".fleet-release").write_text(release)
    spec.slot_link(8090).parent.mkdir(parents=True)
    state.save(state.initial("svc", 8090, "1.0.0"), spec.state_dir)
    fake_host.units["svc@8090.service"] = "active"
    fake_host.releases[8090] = "1.0.0"
    original = host.point_slot

    def point(link: Path, release: str) -> None:
        original(link, release)
        fake_host.releases[int(link.name)] = release

    monkeypatch.setattr(host, "point_slot", point)
    return spec


def deploy(spec: engine.Spec, release: str, audit: Path) -> engine.Outcome:
    return engine.run(spec, mode="deploy", release=release, deploy_id="d1", owner="t@test", hostname="h1",
                      lock_ttl=60, break_lock=False, audit_log=str(audit))


def test_a_release_that_fails_real_requests_is_switched_back_and_marked_bad(fake, tmp_path: Path):
    fake_host, spec = fake
    outcome = deploy(spec, "4.0.0-flaky", tmp_path / "deploy.log")
    assert (outcome.result, outcome.phase) == ("failed", "watch")
    # switched back by the watch at once (the undo that follows sets the same route again)
    assert fake_host.switches[:2] == [9090, 8090] and set(fake_host.switches[2:]) <= {8090}
    assert fake_host.route == 8090
    assert fake_host.units["svc@9090.service"] == "inactive" and fake_host.units["svc@8090.service"] == "active"
    after = state.load("svc", spec.state_dir)
    assert after is not None and after.live_port == 8090 and after.live_release == "1.0.0"
    assert after.pending is None and after.bad_releases == ["4.0.0-flaky"] and "9090" not in after.slots
    assert "breached its limits" in outcome.message and "answered 5xx" in outcome.message
    assert "release marked bad on this host" in outcome.message
    assert outcome.watch["breach"] and outcome.watch["revert_s"] < 2 and outcome.watch["errors"] >= 2
    line = json.loads((tmp_path / "deploy.log").read_text().splitlines()[-1])
    assert (line["result"], line["phase"], line["watch"]["errors"]) == ("failed", "watch", outcome.watch["errors"])
    # marked bad: refused next time, unless asked
    again = deploy(spec, "4.0.0-flaky", tmp_path / "deploy.log")
    assert again.result == "failed" and "was marked bad on this host" in again.message


def test_a_good_release_passes_its_watch_and_only_then_the_old_slot_stops(fake, tmp_path: Path):
    fake_host, spec = fake
    outcome = deploy(spec, "1.1.0", tmp_path / "deploy.log")
    assert outcome.result == "ok", outcome.message
    assert fake_host.switches == [9090] and fake_host.units["svc@8090.service"] == "inactive"
    assert outcome.watch["breach"] == "" and outcome.watch["seconds"] >= 0.5 and outcome.watch["errors"] == 0
    assert list(outcome.durations) == ["start", "health_gate", "switch", "verify", "watch", "record", "drain"]
    assert json.loads((tmp_path / "deploy.log").read_text())["watch"]["requests"] > 0


def test_without_a_watch_the_move_is_as_before(fake, tmp_path: Path):
    _, spec = fake
    outcome = deploy(engine.Spec(**{**spec.__dict__, "watch": Limits(seconds=0)}), "4.0.0-flaky",
                     tmp_path / "deploy.log")
    assert outcome.result == "ok" and outcome.watch == {} and "watch" not in outcome.durations
    assert "watch" not in json.loads((tmp_path / "deploy.log").read_text())


def test_a_move_killed_during_its_watch_is_finished_by_the_next_run_when_the_new_slot_is_healthy(fake):
    """The journal says `switched` all through the watch (the state is recorded after it): the
    reconcile's rule applies unchanged. Healthy and routed: finished (the watch is not resumed)."""
    fake_host, spec = fake
    current = state.load("svc", spec.state_dir)
    assert current is not None
    current.begin(state.Move("killed", "deploy", 8090, 9090, "1.0.0", "1.1.0"))
    current.advance("switched")
    state.save(current, spec.state_dir)
    host.point_slot(spec.slot_link(9090), "1.1.0")
    fake_host.units["svc@9090.service"], fake_host.route = "active", 9090
    found = engine.reconcile(spec, current)
    assert "interrupted after its switched phase" in found and "so the move was finished" in found
    after = state.load("svc", spec.state_dir)
    assert after is not None and (after.live_port, after.live_release, after.pending) == (9090, "1.1.0", None)
    assert fake_host.units["svc@8090.service"] == "inactive"
