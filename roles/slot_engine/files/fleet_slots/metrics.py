"""Request figures per service, as nginx counts them (role nginx, files/fleet_metrics.lua).

nginx counts each service's requests, 5xx answers and latency ($request_time) in a shared dict and
serves the raw counts on its control socket (nginx.metrics()): per service `total` (since nginx
started), `recent` (the last N seconds, whole 10 s windows) and `day` (the last 24 hours), each
with `requests`, `errors` (5xx) and, but for `day`, `seconds_sum` and `buckets` (latency
histogram counts, not cumulative, one per bound of `bounds` and a last one above them).

This module derives what people and scripts read from them:
- summary(): the status table's figures: request rate, 5xx share, p99, 24-hour availability;
- delta(): what happened between two readings, exactly (a deploy's watch reads the totals when
  it switches and again after its window: the difference counts every request in between);
- prometheus(), write_textfile(): the counters for node_exporter's textfile collector, written
  atomically (`fleet-slot metrics --textfile DIR`, the nginx role's timer).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import host

TEXTFILE = "fleet_requests.prom"


class MetricsError(ValueError):
    pass


def quantile(q: float, bounds: Sequence[float], buckets: Sequence[float]) -> float | None:
    """The q-quantile (0..1) of a histogram, interpolated linearly inside its bucket as Prometheus'
    histogram_quantile does: None without observations; the highest bound when it falls in the
    last bucket (above every bound), which says no more than "at least that"."""
    if len(buckets) != len(bounds) + 1:
        raise MetricsError(f"{len(buckets)} bucket counts for {len(bounds)} bounds (expected one more)")
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    for i, count in enumerate(buckets):
        if count > 0 and below + count >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * max(0.0, rank - below) / count
        below += count
    return float(bounds[-1])  # not reached: the last bucket with counts satisfies the test


def summary(figures: Mapping[str, Any], bounds: Sequence[float], now: float) -> dict[str, Any]:
    """One service's answer from nginx.metrics() as the status report's figures. Shares and
    percentiles are null without traffic (nothing to divide); `window_s`, `day_s`: the seconds
    the windows cover (less than asked when nginx started counting later)."""
    recent, day = figures.get("recent") or {}, figures.get("day") or {}
    window = max(1.0, now - float(recent.get("from", now)))
    requests, errors = int(recent.get("requests", 0)), int(recent.get("errors", 0))
    buckets = recent.get("buckets") or [0] * (len(bounds) + 1)
    p99 = quantile(0.99, bounds, buckets)
    day_requests, day_errors = int(day.get("requests", 0)), int(day.get("errors", 0))
    return {
        "window_s": round(window),
        "requests": requests,
        "errors": errors,
        "rate": requests / window,
        "error_share": errors / requests if requests else None,
        "p99_ms": None if p99 is None else p99 * 1000,
        # The p99 is above the highest bound: p99_ms says "at least".
        "p99_above_max": p99 is not None and sum(buckets[:-1]) < 0.99 * sum(buckets),
        "day_s": round(max(0.0, now - float(day.get("from", now)))),
        "day_requests": day_requests,
        "day_errors": day_errors,
        "availability_24h": 1 - day_errors / day_requests if day_requests else None,
    }


def summaries(answer: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """summary() of every service of a whole nginx.metrics() answer."""
    bounds, now = answer["bounds"], float(answer["now"])
    return {name: summary(figures, bounds, now) for name, figures in (answer.get("services") or {}).items()}


def delta(before: Mapping[str, Any], after: Mapping[str, Any], service: str) -> dict[str, Any]:
    """What `service` answered between two nginx.metrics() readings, from its totals: requests,
    errors, seconds_sum, buckets, seconds (between the readings). Exact, whatever the windows."""
    if before.get("started") != after.get("started"):
        raise MetricsError("nginx restarted between the two readings: its counters started again at 0")
    try:
        old, new = before["services"][service]["total"], after["services"][service]["total"]
    except KeyError as err:
        raise MetricsError(f"no figures of {service} in both readings") from err
    requests, errors = int(new["requests"]) - int(old["requests"]), int(new["errors"]) - int(old["errors"])
    buckets = [int(b) - int(a) for a, b in zip(old["buckets"], new["buckets"], strict=True)]
    if requests < 0 or errors < 0 or min(buckets, default=0) < 0:
        raise MetricsError("the counters went down between the readings: not two readings of one nginx")
    return {"requests": requests, "errors": errors, "buckets": buckets,
            "seconds_sum": float(new["seconds_sum"]) - float(old["seconds_sum"]),
            "seconds": float(after["now"]) - float(before["now"])}


# --------------------------------------------------------------------------- node_exporter

def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer() and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def prometheus(answer: Mapping[str, Any] | None) -> str:
    """The Prometheus text exposition of a nginx.metrics() answer's totals (counters and a latency
    histogram per service); None (nginx did not answer): only fleet_requests_up 0."""
    lines = ["# HELP fleet_requests_up Whether the last export could read nginx's request figures.",
             "# TYPE fleet_requests_up gauge", f"fleet_requests_up {0 if answer is None else 1}"]
    if answer is None:
        return "\n".join(lines) + "\n"
    bounds = [float(b) for b in answer["bounds"]]
    services = sorted((answer.get("services") or {}).items())
    lines += ["# HELP fleet_requests_started_time_seconds When nginx started counting (a restart resets "
              "the counters to 0; a reload does not).",
              "# TYPE fleet_requests_started_time_seconds gauge",
              f"fleet_requests_started_time_seconds {_number(answer['started'])}"]
    families = (
        ("fleet_http_requests_total", "counter",
         "Requests nginx answered in the service's locations (proxied, rate limited 429, or failed by nginx).",
         "requests"),
        ("fleet_http_server_errors_total", "counter", "Those answered with a 5xx status (by the slot or by nginx).",
         "errors"),
    )
    for name, kind, text, field in families:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{service="{_label(svc)}"}} {_number(f["total"][field])}' for svc, f in services]
    histogram = "fleet_http_request_duration_seconds"
    lines += [f"# HELP {histogram} Request time ($request_time: first byte in to last byte out) of those requests.",
              f"# TYPE {histogram} histogram"]
    for svc, figures in services:
        total, label = figures["total"], _label(svc)
        cumulative = 0
        for le, count in zip([*(_number(b) for b in bounds), "+Inf"], total["buckets"], strict=True):
            cumulative += int(count)
            lines.append(f'{histogram}_bucket{{service="{label}",le="{le}"}} {cumulative}')
        # _count is the +Inf bucket: a request counted between nginx's increments stays consistent.
        lines += [f'{histogram}_sum{{service="{label}"}} {_number(float(total["seconds_sum"]))}',
                  f'{histogram}_count{{service="{label}"}} {cumulative}']
    return "\n".join(lines) + "\n"


def write_textfile(directory: str | os.PathLike[str], text: str, name: str = TEXTFILE) -> Path:
    """Write `text` to directory/name atomically (a temporary file in the same directory, renamed
    over it), mode 0644: node_exporter never reads half a file, and ignores the temporary (no .prom)."""
    target = Path(directory) / name
    host.write_atomically(target, text, prefix=f".{name}.", suffix=".tmp")
    return target
