"""The watch window: after a switch, the new slot is watched while the old one keeps running.

For `Limits.seconds` after the switch the engine polls, every `Limits.interval` seconds:

- the new slot's own health (GET <health path> on its port, loopback, not through nginx) and
  whether its unit still runs;
- the service's real traffic through nginx on this host: nginx.metrics(service) read once just
  before the switch and again at every poll; metrics.delta() of the two is exactly what nginx
  answered in between (requests, 5xx, latency histogram).

judge() decides, from those figures alone (a pure function, unit-tested):

1. the new slot's unit is no longer active, or its health failed `health_failures` polls in a
   row: a breach, whatever the traffic;
2. 5xx: a breach when errors > max_error_share x max(requests, min_requests). Until min_requests
   requests have been seen the share is taken of min_requests, not of the few requests seen: a
   share of 3 requests is noise, so early on only a count of 5xx that would already be too many
   out of min_requests counts (with 1% of 100: a second 5xx);
3. latency: once min_requests requests have been seen, a breach when their p99 (from nginx's
   histogram, interpolated inside its bucket) exceeds max_p99_ms; never checked when max_p99_ms
   is None.

nginx counts per service, not per slot: the old slot's last in-flight requests, answered after
the switch, count too (they are few, and only make a good release look as good as the old one).
A service in maintenance (nginx answers 503 itself) is judged on its health only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from . import metrics

# How often the watch polls: a bad release serves for about one interval after the evidence.
INTERVAL = 0.2
# Health answers that must fail in a row (one lost probe is not a verdict).
HEALTH_FAILURES = 2


@dataclass(frozen=True)
class Limits:
    """The catalog's `deploy` section (and the -e watch= override): what a breach is."""

    seconds: float = 0.0  # 0: no watch
    max_error_share: float = 0.01
    max_p99_ms: float | None = None
    min_requests: int = 100
    interval: float = INTERVAL
    health_failures: int = HEALTH_FAILURES

    @property
    def errors_allowed_early(self) -> int:
        """5xx tolerated before min_requests requests (the third rule's count)."""
        return int(self.max_error_share * self.min_requests)


@dataclass
class Figures:
    """What the watch saw, for the module's result and the audit line."""

    seconds: float = 0.0  # watched, from the switch
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    polls: int = 0
    health_failed: int = 0  # health polls of the new slot that failed
    breach: str = ""  # why the release was judged bad, "" when it passed
    revert_s: float | None = None  # from the switch to traffic back on the old slot
    judged_on: str = "traffic and health"
    metrics_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        if self.p99_ms is not None:
            data["p99_ms"] = round(self.p99_ms, 1)
        if self.revert_s is not None:
            data["revert_s"] = round(self.revert_s, 3)
        return data


def judge(limits: Limits, requests: int, errors: int, p99_ms: float | None, health_failures_in_a_row: int,
          unit_active: bool = True) -> str:
    """Why the new release breaches the limits, or "" when it does not (see the module's doc)."""
    if not unit_active:
        return "its unit stopped running"
    if health_failures_in_a_row >= limits.health_failures:
        return f"its health check failed {health_failures_in_a_row} times in a row"
    if errors > limits.max_error_share * max(requests, limits.min_requests):
        share = f"{errors / requests:.1%}" if requests else "all"
        if requests >= limits.min_requests:
            return (f"{errors} of {requests} requests answered 5xx ({share}, more than the "
                    f"{limits.max_error_share:.2%} allowed)")
        return (f"{errors} of {requests} requests answered 5xx: more than the {limits.errors_allowed_early} "
                f"allowed before {limits.min_requests} requests ({limits.max_error_share:.2%} of them)")
    if (limits.max_p99_ms is not None and p99_ms is not None and requests >= limits.min_requests
            and p99_ms > limits.max_p99_ms):
        return f"p99 latency {p99_ms:.0f} ms over {requests} requests, more than the {limits.max_p99_ms:g} ms allowed"
    return ""


def traffic(before: Mapping[str, Any], after: Mapping[str, Any], service: str) -> tuple[int, int, float | None]:
    """Requests, 5xx and p99 (ms) between two nginx.metrics() readings."""
    delta = metrics.delta(before, after, service)
    p99 = metrics.quantile(0.99, after["bounds"], delta["buckets"])
    return delta["requests"], delta["errors"], None if p99 is None else p99 * 1000


def watch(limits: Limits, *, service: str, healthy: Callable[[], bool], unit_active: Callable[[], bool],
          read_metrics: Callable[[], Mapping[str, Any]] | None, baseline: Mapping[str, Any] | None,
          switched_at: float, judge_traffic: bool = True, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Figures:
    """Poll until `limits.seconds` after `switched_at` (a clock() time) or a breach; the Figures
    say which. `read_metrics` None or `baseline` None: traffic is not judged (figures unreadable)."""
    figures = Figures()
    if not judge_traffic:
        figures.judged_on = "health only (the service is in maintenance: nginx answers 503 itself)"
    elif read_metrics is None or baseline is None:
        figures.judged_on = "health only (nginx's request figures could not be read)"
    in_a_row = 0
    while True:
        figures.polls += 1
        ok = healthy()
        if not ok:
            figures.health_failed += 1
        in_a_row = 0 if ok else in_a_row + 1
        active = unit_active()
        if judge_traffic and read_metrics is not None and baseline is not None:
            try:
                figures.requests, figures.errors, figures.p99_ms = traffic(baseline, read_metrics(), service)
            except (metrics.MetricsError, RuntimeError, OSError, KeyError, ValueError) as err:
                # nginx restarted (counters at 0), or its socket is gone: keep watching the health.
                figures.metrics_error = str(err)
                figures.judged_on = "health only from then on (nginx's request figures could not be read)"
                read_metrics = None
        figures.seconds = clock() - switched_at
        figures.breach = judge(limits, figures.requests, figures.errors, figures.p99_ms, in_a_row, active)
        if figures.breach or figures.seconds >= limits.seconds:
            return figures
        sleep(min(limits.interval, max(0.0, limits.seconds - figures.seconds)))


def limits_of(section: Mapping[str, Any] | None, seconds: float | None = None) -> Limits:
    """Limits from the validated catalog's `deploy` section; `seconds` overrides its watch."""
    section = section or {}
    default = Limits()
    p99 = section.get("max_p99_ms", default.max_p99_ms)
    return Limits(
        seconds=float(section.get("watch", default.seconds) if seconds is None else seconds),
        max_error_share=float(section.get("max_error_share", default.max_error_share)),
        max_p99_ms=None if p99 in (None, "") else float(p99),
        min_requests=int(section.get("min_requests", default.min_requests)),
    )


__all__ = ["HEALTH_FAILURES", "INTERVAL", "Figures", "Limits", "judge", "limits_of", "traffic", "watch"]
