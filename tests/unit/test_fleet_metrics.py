"""nginx's request figures as the slot engine reads them (fleet_slots.metrics, nginx.metrics, status.py,
`fleet-slot metrics`): percentiles from histogram buckets, the status figures, exact deltas for a
deploy's watch, and the node_exporter textfile. The counting itself is nginx's (fleet_metrics.lua):
tests/integration/test_request_figures_lab.py sends requests through a real nginx."""

from __future__ import annotations

import json
import os
import re
import socketserver
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fleet_slots import engine, metrics, nginx, state, status

ROOT = Path(__file__).resolve().parents[2]
BOUNDS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]


def buckets(**counts: int) -> list[int]:
    """Bucket counts by upper bound: buckets(le_0_2=5, inf=1)."""
    found = [0] * (len(BOUNDS) + 1)
    for name, count in counts.items():
        index = len(BOUNDS) if name == "inf" else BOUNDS.index(float(name[3:].replace("_", ".")))
        found[index] = count
    return found


def figures(requests: int, errors: int, latency: list[int], day: tuple[int, int] | None = None,
            total: tuple[int, int] | None = None, now: float = 10_000.0) -> dict[str, Any]:
    day_requests, day_errors = day or (requests, errors)
    total_requests, total_errors = total or (requests, errors)
    return {"recent": {"requests": requests, "errors": errors, "seconds_sum": 0.5, "buckets": latency,
                       "from": now - 300},
            "day": {"requests": day_requests, "errors": day_errors, "from": now - 86_400},
            "total": {"requests": total_requests, "errors": total_errors, "seconds_sum": 1.25,
                      "buckets": latency}}


def answer(now: float = 10_000.0, started: float = 1_000.0, **services: dict[str, Any]) -> dict[str, Any]:
    """What GET /metrics on nginx's control socket answers."""
    return {"now": now, "started": started, "window": 300, "recent_step": 10, "day_seconds": 86_400,
            "bounds": BOUNDS, "services": {name.replace("_", "-"): f for name, f in services.items()}}


# --------------------------------------------------------------------------- quantile

def test_no_observation_has_no_quantile():
    assert metrics.quantile(0.99, BOUNDS, buckets()) is None


def test_the_quantile_is_interpolated_inside_its_bucket_as_prometheus_does():
    # 100 requests between 2 and 5 ms: the 99th is 99% of the way through that bucket.
    assert metrics.quantile(0.99, BOUNDS, buckets(le_0_005=100)) == pytest.approx(0.002 + 0.003 * 0.99)
    # The first bucket starts at 0.
    assert metrics.quantile(0.5, BOUNDS, buckets(le_0_001=10)) == pytest.approx(0.0005)


def test_a_few_slow_requests_put_the_p99_in_their_bucket():
    # 100 fast and 5 slow (0.2 to 0.5 s): the 99th percentile is a slow one.
    p99 = metrics.quantile(0.99, BOUNDS, buckets(le_0_001=60, le_0_002=40, le_0_5=5))
    assert p99 is not None and 0.2 < p99 <= 0.5
    # One slow request in 1000 leaves the p99 among the fast ones.
    p99 = metrics.quantile(0.99, BOUNDS, buckets(le_0_002=999, le_0_5=1))
    assert p99 is not None and p99 <= 0.002


def test_a_quantile_above_every_bound_is_the_highest_bound():
    assert metrics.quantile(0.99, BOUNDS, buckets(le_0_001=1, inf=99)) == 10.0


def test_bucket_counts_must_match_the_bounds():
    with pytest.raises(metrics.MetricsError, match="14 bucket counts for 12 bounds"):
        metrics.quantile(0.99, BOUNDS[:-1], buckets())


# --------------------------------------------------------------------------- summary

def test_the_summary_has_the_rate_the_5xx_share_the_p99_and_the_availability():
    found = metrics.summary(figures(600, 3, buckets(le_0_005=590, le_0_5=10), day=(20_000, 2)), BOUNDS, 10_000.0)
    assert (found["window_s"], found["requests"], found["errors"]) == (300, 600, 3)
    assert found["rate"] == pytest.approx(2.0)
    assert found["error_share"] == pytest.approx(0.005)
    assert 200 < found["p99_ms"] <= 500 and not found["p99_above_max"]
    assert (found["day_s"], found["day_requests"], found["day_errors"]) == (86_400, 20_000, 2)
    assert found["availability_24h"] == pytest.approx(0.9999)


def test_without_traffic_shares_and_percentiles_are_null_not_zero():
    found = metrics.summary(figures(0, 0, buckets(), day=(0, 0)), BOUNDS, 10_000.0)
    assert (found["rate"], found["error_share"], found["p99_ms"], found["availability_24h"]) == (0, None, None, None)


def test_a_window_nginx_started_within_is_as_long_as_nginx_has_counted():
    seen = figures(30, 0, buckets(le_0_001=30))
    seen["recent"]["from"] = 10_000.0 - 15
    found = metrics.summary(seen, BOUNDS, 10_000.0)
    assert found["window_s"] == 15 and found["rate"] == pytest.approx(2.0)


def test_a_p99_above_every_bound_says_so():
    found = metrics.summary(figures(10, 0, buckets(inf=10)), BOUNDS, 10_000.0)
    assert found["p99_ms"] == 10_000 and found["p99_above_max"]


def test_summaries_covers_every_service_of_an_answer():
    found = metrics.summaries(answer(main_api=figures(3, 1, buckets(le_0_001=3)), other=figures(0, 0, buckets())))
    assert sorted(found) == ["main-api", "other"] and found["main-api"]["errors"] == 1


# --------------------------------------------------------------------------- delta (a deploy's watch)

def test_the_delta_of_two_readings_counts_exactly_what_came_between():
    before = answer(now=10_000.0, main_api=figures(100, 1, buckets(le_0_001=100), total=(100, 1)))
    after = answer(now=10_030.0, main_api=figures(160, 4, buckets(le_0_001=150, le_0_5=10), total=(160, 4)))
    change = metrics.delta(before, after, "main-api")
    assert (change["requests"], change["errors"], change["seconds"]) == (60, 3, 30.0)
    assert change["buckets"] == buckets(le_0_001=50, le_0_5=10)
    assert 200 < (metrics.quantile(0.99, BOUNDS, change["buckets"]) or 0) * 1000 <= 500


def test_a_delta_across_an_nginx_restart_is_refused():
    before = answer(started=1_000.0, main_api=figures(100, 1, buckets(le_0_001=100)))
    after = answer(started=9_000.0, main_api=figures(5, 0, buckets(le_0_001=5)))
    with pytest.raises(metrics.MetricsError, match="nginx restarted"):
        metrics.delta(before, after, "main-api")
    with pytest.raises(metrics.MetricsError, match="no figures of other"):
        metrics.delta(before, before, "other")


# --------------------------------------------------------------------------- node_exporter

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')


def samples(text: str) -> dict[str, float]:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(SAMPLE.match(line) for line in lines), lines
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def test_the_exposition_has_counters_and_a_cumulative_histogram_per_service():
    text = metrics.prometheus(answer(main_api=figures(7, 2, buckets(le_0_001=4, le_0_5=2, inf=1))))
    assert text.endswith("\n")
    assert "# TYPE fleet_http_requests_total counter" in text
    assert "# TYPE fleet_http_request_duration_seconds histogram" in text
    found = samples(text)
    assert found["fleet_requests_up"] == 1 and found["fleet_requests_started_time_seconds"] == 1000
    assert found['fleet_http_requests_total{service="main-api"}'] == 7
    assert found['fleet_http_server_errors_total{service="main-api"}'] == 2
    bucket = 'fleet_http_request_duration_seconds_bucket{service="main-api",le="%s"}'
    assert (found[bucket % "0.001"], found[bucket % "0.2"], found[bucket % "0.5"], found[bucket % "10"]) == (4, 4, 6, 6)
    assert found[bucket % "+Inf"] == found['fleet_http_request_duration_seconds_count{service="main-api"}'] == 7
    assert found['fleet_http_request_duration_seconds_sum{service="main-api"}'] == 1.25


def test_without_nginx_the_exposition_says_only_that_it_is_down():
    assert samples(metrics.prometheus(None)) == {"fleet_requests_up": 0}


def test_the_textfile_is_replaced_atomically_and_readable_by_node_exporter(tmp_path: Path):
    old = tmp_path / metrics.TEXTFILE
    old.write_text("old\n")
    written = metrics.write_textfile(tmp_path, "fleet_requests_up 1\n")
    assert written == old and old.read_text() == "fleet_requests_up 1\n"
    assert stat.S_IMODE(old.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [metrics.TEXTFILE]  # no temporary left over


# --------------------------------------------------------------------------- through a control socket

class Control(BaseHTTPRequestHandler):
    """nginx's control socket as the slot engine sees it: canned answers (nginx's own are tested on the lab)."""

    answers: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:  # http.server calls it by this name
        self.server.paths.append(self.path)  # type: ignore[attr-defined]  # a UnixServer (below) has paths
        found = self.answers.get(self.path.split("?")[0])
        body = json.dumps(found if found is not None else {"error": "unknown"}).encode()
        self.send_response(200 if found is not None else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    paths: list[str]


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    path = str(tmp_path / "control.sock")
    server = UnixServer(path, Control)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    Control.answers = {"/slots": {"main-api": 8010}, "/maintenance": {},
                       "/metrics": answer(main_api=figures(600, 3, buckets(le_0_005=600), day=(1000, 1)))}
    yield path, server.paths
    server.shutdown()
    server.server_close()


def test_the_reader_asks_for_one_service_and_a_window(control: tuple[str, list[str]]):
    path, asked = control
    Control.answers["/metrics/main-api"] = Control.answers["/metrics"]
    assert nginx.metrics("main-api", 30, control_socket=path)["services"]["main-api"]["recent"]["requests"] == 600
    assert asked == ["/metrics/main-api?window=30"]


def test_status_reports_each_services_figures(control: tuple[str, list[str]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(status, "units_active", lambda units: dict.fromkeys(units, "inactive"))
    state.save(state.initial("main-api", 8010, "1.0.0"), str(tmp_path / "state"))
    found = status.report([engine.Spec("main-api", 8010)], include_unlisted=False, state_dir=str(tmp_path / "state"),
                          lock_dir=str(tmp_path / "locks"), control_socket=control[0], probe_timeout=0.2)
    assert found["metrics_error"] == ""
    figures_ = found["services"]["main-api"]["requests"]
    assert (figures_["requests"], figures_["errors"], figures_["rate"]) == (600, 3, 2.0)
    assert figures_["availability_24h"] == pytest.approx(0.999)


def test_status_without_figures_says_why_and_reports_the_rest(control: tuple[str, list[str]], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(status, "units_active", lambda units: dict.fromkeys(units, "inactive"))
    del Control.answers["/metrics"]  # an nginx whose Lua predates the figures: 404
    found = status.report([engine.Spec("main-api", 8010)], include_unlisted=False, state_dir=str(tmp_path / "state"),
                          lock_dir=str(tmp_path / "locks"), control_socket=control[0], probe_timeout=0.2)
    assert "/metrics" in found["metrics_error"] and "404" in found["metrics_error"]
    assert found["services"]["main-api"]["requests"] is None and found["routes"] == {"main-api": 8010}


def fleet_slot(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "roles" / "slot_engine" / "files")}
    return subprocess.run([sys.executable, "-m", "fleet_slots", *args], capture_output=True, text=True, env=env,
                          timeout=30, check=False)


def test_fleet_slot_writes_the_textfile_from_the_control_socket(control: tuple[str, list[str]], tmp_path: Path):
    out = tmp_path / "textfile"
    out.mkdir()
    done = fleet_slot("--control-socket", control[0], "metrics", "--textfile", str(out))
    assert done.returncode == 0, done.stderr
    found = samples((out / metrics.TEXTFILE).read_text())
    assert found["fleet_requests_up"] == 1 and found['fleet_http_requests_total{service="main-api"}'] == 600


def test_fleet_slot_without_nginx_writes_up_0_and_fails(tmp_path: Path):
    done = fleet_slot("--control-socket", str(tmp_path / "none.sock"), "metrics", "--textfile", str(tmp_path))
    assert done.returncode == 2 and "none.sock" in done.stderr
    assert samples((tmp_path / metrics.TEXTFILE).read_text()) == {"fleet_requests_up": 0}


def test_fleet_slot_prints_the_figures_as_a_table_or_json(control: tuple[str, list[str]]):
    table = fleet_slot("--control-socket", control[0], "metrics")
    assert table.returncode == 0, table.stderr
    assert re.search(r"main-api +600 +2\.00 +0\.50% +[0-9.]+ms +99\.9000%", table.stdout), table.stdout
    as_json = json.loads(fleet_slot("--control-socket", control[0], "metrics", "--json").stdout)
    assert as_json["main-api"]["errors"] == 3
