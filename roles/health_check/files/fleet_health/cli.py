"""One run (all checks side by side under a time budget, self-healing, alerts, the log line and the
metrics file) and the command line."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .alerts import append_line, load_state, notify, redact, run_lock, write_atomic
from .common import Finding, Metrics, Runner, iso, parse_time, run_command, utcnow, worst
from .config import (
    CRITICAL,
    EXIT_CODES,
    METRIC_VALUE,
    METRICS_FILE,
    OK,
    STATE_VERSION,
    UNKNOWN,
    VERSION,
    WARN,
    Config,
    ConfigError,
    read_config,
)
from .gpu import boot_id, check_gpus, check_xids, normalise_bus_id
from .host import check_backup, check_certificates, check_disks, check_memory
from .services import ServiceOutcome, check_service, check_slots, self_heal

# --------------------------------------------------------------------------- one run

@dataclass
class Options:
    read_only: bool = False  # --no-webhook: send nothing, write no state, restart nothing
    pretty: bool = False


def _parallel(tasks: dict[str, Callable[[], Any]], budget_s: float) -> dict[str, Any]:
    """Run each task in a daemon thread; a task still running after `budget_s` yields its name."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def wrap(name: str, task: Callable[[], Any]) -> None:
        try:
            results[name] = task()
        except Exception as exc:  # a bug in one check must not hide the others
            errors[name] = exc

    threads = {name: threading.Thread(target=wrap, args=(name, task), daemon=True, name=name)
               for name, task in tasks.items()}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + budget_s
    for name, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            results[name] = TimeoutError(f"check {name} did not finish within {budget_s:.0f} s")
        elif name in errors:
            results[name] = RuntimeError(f"check {name} crashed: {type(errors[name]).__name__}: {errors[name]}")
    return results


def run_checks(config: Config, state: dict[str, Any], options: Options, runner: Runner,
               metrics: Metrics, now: dt.datetime) -> tuple[list[Finding], dict[str, Any], list[str]]:
    """All checks and self-healing; returns findings, the state to keep, and actions taken."""
    tasks: dict[str, Callable[[], Any]] = {
        f"service {s.name}": functools.partial(check_service, s, config, metrics, runner) for s in config.services
    }
    if config.slots.enabled:
        tasks["slots"] = lambda: check_slots(config, runner)
    if config.tls.certificate_dirs:
        tasks["tls"] = lambda: check_certificates(config.tls, metrics, runner, now)
    if config.gpu.enabled:
        tasks["gpu"] = lambda: check_gpus(config, metrics, runner)
        current_boot = boot_id()
        tasks["xid"] = lambda: check_xids(config, state.get("kernel_log", {}), metrics, runner, current_boot)
    limits = [2 * config.http.timeout_s + 5.0,  # direct and nginx, then `systemctl is-active`
              config.slots.timeout_s + 2, 4 * config.tls.timeout_s]
    if config.gpu.enabled:
        limits += [2 * config.gpu.timeout_s + 2, config.gpu.kernel_log_timeout_s + 2]
    budget = max(limits) + 2
    results = _parallel(tasks, budget)

    findings: list[Finding] = []
    new_state: dict[str, Any] = {"kernel_log": state.get("kernel_log", {}),
                                 "restarts": dict(state.get("restarts", {}))}
    outcomes: dict[str, ServiceOutcome] = {}
    for name, result in results.items():
        if isinstance(result, Exception):
            findings.append(Finding("checker", name.replace(" ", "_"), UNKNOWN, str(result)))
        elif name in ("slots", "tls"):
            findings.extend(result)
        elif name == "gpu":
            findings.extend(result[1])
        elif name == "xid":
            xid_findings, cursor = result
            gpus = results["gpu"][0] if isinstance(results.get("gpu"), tuple) else []
            by_bus = {normalise_bus_id(g.bus_id): g.index for g in gpus}
            for finding in xid_findings:  # name the GPU, now that both threads are done
                pci = finding.target.partition("@")[2]
                index = by_bus.get(normalise_bus_id(pci)) if finding.event else None
                if index is not None:
                    finding.message = finding.message.replace(f"on {pci}:", f"on {pci} (GPU {index}):", 1)
            findings.extend(xid_findings)
            new_state["kernel_log"] = cursor
        else:
            outcomes[name.removeprefix("service ")] = result
            findings.extend(result.findings)

    findings.extend(check_disks(config.disk, metrics))
    findings.extend(check_memory(config.memory, metrics))
    if config.backup.enabled:
        findings.extend(check_backup(config.backup, metrics, now))

    # Consecutive runs with a hard failure per service. One restart per run at most, the
    # longest-failing slot first, so a host-wide fault (every slot hung at once) does not turn into
    # a restart storm; and at most max_per_hour per service, so a release that hangs again right
    # after each restart is left to the operators, with a critical alert, instead of restarted forever.
    previous = state.get("failures", {}) if isinstance(state.get("failures"), dict) else {}
    failures: dict[str, int] = {}
    for service in config.services:
        outcome = outcomes.get(service.name)
        failed = outcome is not None and outcome.hard_failure
        failures[service.name] = int(previous.get(service.name, 0)) + 1 if failed else 0
    new_state["failures"] = failures
    hour_ago = now - dt.timedelta(hours=1)
    recent = state.get("restart_times")
    recent = recent if isinstance(recent, dict) else {}
    restart_times: dict[str, list[str]] = {
        name: [t for t in times if (when := parse_time(t)) is not None and when > hour_ago]
        for name, times in recent.items() if isinstance(times, list)}
    new_state["restart_times"] = {name: times for name, times in restart_times.items() if times}
    actions: list[str] = []
    if config.self_heal.enabled and not options.read_only:
        due = [s for s in config.services if failures[s.name] >= config.self_heal.after_failures]
        restarted = False
        for service in sorted(due, key=lambda s: -failures[s.name]):
            done = restart_times.get(service.name, [])
            if len(done) >= config.self_heal.max_per_hour:
                findings.append(Finding("self_heal", service.name, CRITICAL, (
                    f"gave up restarting {service.name}: {len(done)} restarts in the last hour "
                    f"(self_heal.max_per_hour) and its health check still fails hard, "
                    f"{failures[service.name]} runs in a row; it needs a look")))
                continue
            if restarted:
                continue
            port = outcomes[service.name].live_port
            finding = self_heal(service, port, failures[service.name], config, runner) if port else None
            if finding is not None:
                restarted = True
                findings.append(finding)
                actions.append(finding.message)
                failures[service.name] = 0
                new_state["restarts"][service.name] = new_state["restarts"].get(service.name, 0) + 1
                new_state["restart_times"][service.name] = [*done, iso(now)]
    for service, count in sorted(new_state["restarts"].items()):
        metrics.add("self_heal_restarts_total", "Restarts done by the health checker.", count,
                    {"service": service}, kind="counter")
    return findings, new_state, actions


def execute(config: Config, options: Options, runner: Runner = run_command) -> tuple[int, dict[str, Any]]:
    """One run under the lock (none for a read-only run); returns the exit code and the log record."""
    if options.read_only:
        return _execute(config, options, runner)
    with run_lock(config.state_file, config.lock_wait_s) as locked:
        if locked:
            return _execute(config, options, runner)
    record = {"time": iso(utcnow()), "host": config.host or socket.gethostname(), "status": UNKNOWN,
              "exit_code": 3, "message": f"another run held the lock for more than {config.lock_wait_s:g} s"}
    append_line(config.log_file, json.dumps(record))
    return 3, record


def _execute(config: Config, options: Options, runner: Runner) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    now = utcnow()
    host = config.host or socket.gethostname()
    metrics = Metrics()
    state = load_state(config.state_file)
    findings, new_state, actions = run_checks(config, state, options, runner, metrics, now)
    for finding in findings:  # the messages go into the log, the state file and the alerts
        finding.message = redact(finding.message, config.webhook.url)
    status = worst(f.severity for f in findings)
    webhook, told, new, recovered = notify(config, host, status, findings, state, now, options.read_only)

    duration = time.monotonic() - started
    metrics.add("status", "Worst finding of the last run: 0 ok, 1 warn, 2 critical, 3 unknown.",
                METRIC_VALUE[status])
    metrics.add("last_run_timestamp_seconds", "When the last run finished.", round(time.time(), 3))
    metrics.add("run_duration_seconds", "How long the last run took.", round(duration, 3))
    metrics.add("open_problems", "Problems open after the last run.",
                sum(1 for f in findings if f.severity != OK and not f.event))
    for f in findings:
        if not f.event:
            metrics.add("check_status", "Each check: 0 ok, 1 warn, 2 critical, 3 unknown.",
                        METRIC_VALUE[f.severity], {"check": f.check, "target": f.target})
    if webhook["configured"] and not options.read_only:
        metrics.add("webhook_failures", "Webhook messages the last run could not deliver.", len(webhook["failed"]))

    record = {
        "time": iso(now), "host": host, "checker": f"fleet-health/{VERSION}", "status": status,
        "exit_code": EXIT_CODES[status], "duration_s": round(duration, 3),
        "summary": {s: sum(1 for f in findings if f.severity == s) for s in (OK, WARN, CRITICAL, UNKNOWN)},
        "problems": [f.as_dict() for f in findings if f.severity != OK],
        "maintenance": sorted(f.target for f in findings if f.check == "maintenance"),
        "new": new,
        "recovered": recovered,
        "actions": actions,
        "webhook": webhook,
        "checks": [f.as_dict() for f in findings],
    }
    if not options.read_only:
        new_state.update(version=STATE_VERSION, updated=iso(now), **told)
        write_atomic(Path(config.state_file), redact(json.dumps(new_state, indent=1), config.webhook.url) + "\n",
                     0o600)
    if config.metrics_dir:
        write_atomic(Path(config.metrics_dir) / METRICS_FILE, metrics.render(), 0o644)
    append_line(config.log_file, redact(json.dumps(record, indent=2 if options.pretty else None), config.webhook.url))
    return EXIT_CODES[status], record


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleet-health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON config rendered by the health_check role (default: built-in "
                                         "defaults: no services, no backup check)")
    parser.add_argument("--once", action="store_true", help="run one check and exit (the only mode; cron "
                                                            "provides the schedule)")
    parser.add_argument("--no-webhook", action="store_true",
                        help="read-only run: send nothing, write no state, restart nothing")
    parser.add_argument("--gpu", action="store_true", help="check GPUs even if the config does not")
    parser.add_argument("--expect-gpus", type=int, metavar="N", help="GPUs this host should have")
    parser.add_argument("--log-file", metavar="PATH", help="where the JSON line goes ('-': stdout)")
    parser.add_argument("--metrics-dir", metavar="DIR", help="node_exporter textfile directory ('' : none)")
    parser.add_argument("--state-file", metavar="PATH", help="de-duplication state file")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON record")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        print(f"fleet-health: config error: {exc}", file=sys.stderr)
        if not args.check_config:
            record = {"time": iso(utcnow()), "host": socket.gethostname(), "status": UNKNOWN, "exit_code": 3,
                      "message": f"config error: {exc}"}
            with contextlib.suppress(OSError):
                append_line(args.log_file or Config().log_file, json.dumps(record))
        return 3
    if args.check_config:
        print(f"fleet-health: config ok ({len(config.services)} services, gpu "
              f"{'on' if config.gpu.enabled else 'off'}, webhook {'set' if config.webhook.url else 'unset'})")
        return 0
    if args.gpu:
        config.gpu.enabled = True
    if args.expect_gpus is not None:
        config.gpu.expected_count = args.expect_gpus
    if args.log_file is not None:
        config.log_file = args.log_file
    if args.metrics_dir is not None:
        config.metrics_dir = args.metrics_dir
    if args.state_file is not None:
        config.state_file = args.state_file
    options = Options(read_only=args.no_webhook, pretty=args.pretty)
    try:
        code, _ = execute(config, options)
    except Exception as exc:  # the last word of a cron job must reach its log
        message = redact(f"checker crashed: {type(exc).__name__}: {exc}", config.webhook.url)
        print(f"fleet-health: {message}", file=sys.stderr)
        with contextlib.suppress(OSError):
            append_line(config.log_file, json.dumps({"time": iso(utcnow()), "host": config.host or socket.gethostname(),
                                                     "status": UNKNOWN, "exit_code": 3, "message": message}))
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
