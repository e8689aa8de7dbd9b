#!/usr/bin/env python3
"""Benchmark: does a hot deploy drop requests, and how close is a host's switch to its floor?

    make bench                     # lab up, site.yml, then this with the defaults
    python3 -m bench.hot_deploy_bench --inventory .lab/x1/hosts.yml --rate 120 --deploys 2 --step 0

Steady load goes through nginx on every host of the lab for the whole run (Host header
<service>.fleet.test), from three client kinds, each with GET and POST (bench/loadgen.py): reuse
(keep-alive, reuses an idle connection without checking it), check (keep-alive, checks before
reuse), close (a connection per request). Phases:

    floor        each host's time for the live release to get healthy on its idle slot, on its own
                 (started by systemctl, /health polled every 10 ms; under the same load)
    baseline     quiet load
    deploys      rolling hot deploys in a row (1.1.0, 1.2.0, 2.0.0, 1.0.0, ... skipping a live one)
    rollback     rollback.yml
    interrupted  hot_deploy.yml -e drill_halt_after=switch, killed (controller and frozen engine)
                 once the first host has switched, then the same deploy run again: it reconciles
                 first; afterwards no host may have a pending move and every live slot must answer
    restart      hot_deploy.yml -e restart=true (the live release moves to the other slot)
    reconfigure  site.yml --tags service with a new secret in the service's environment, then
                 again without it: each applies the change through a slot switch, host by host
    naive        `systemctl restart` of the live slot on each host, 2 s apart (this one drops requests)

Each deploy, the rollback and the interrupted deploy start --step seconds (default 35) after the
previous one, with at least 3 s of load after each: at 240 req/s the three guarded phases carry
about 60,000 requests.

It prints, per phase and client kind, requests, non-2xx, connection errors, p50/p99 latency and
the keep-alive reconnects of check clients; per host, the engine's time for each move of this run
(the audit log's `seconds`) against its floor (time to healthy + that move's own drain + the watch
the catalog asks for, `deploy.watch`, as the audit line records it); and the wall-clock time of
each rolling deploy, whose goal is 8 s plus the watch of each host in turn. It writes
build/bench/hot_deploy.json (every figure),
build/bench/hot_deploy.png (latency per request by client kind, failures per second, phases
shaded, switches dashed) and each playbook's output to build/bench/logs/.

Exit status: 1 if any request failed in the deploys, rollback, interrupted, restart or reconfigure
phases (any client kind), or if a playbook of those phases failed or the check after the interrupted deploy did not
pass; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.loadgen import CLIENTS, LoadGenerator, Sample, Target, failures, summarize, summarize_by_client
from lab.client import DEFAULT_INVENTORY, REPO_ROOT, Lab

RELEASES = ("1.1.0", "1.2.0", "2.0.0", "1.0.0")
CATALOG = REPO_ROOT / "inventories" / "lab" / "group_vars" / "all" / "fleet_services.yml"
GUARDED = ("deploys", "rollback", "interrupted", "restart", "reconfigure")  # no request may fail
ROLLING_GOAL_S = 8.0  # a rolling deploy of the lab's 3 hosts, plus each host's watch (a chosen hold)
GUARDED_REQUESTS_GOAL = 50_000  # requests in the guarded phases, for figures worth trusting
MOVE_MODES = ("deploy", "rollback", "restart", "reconfigure")
SETTLE_S = 3.0  # load after every deploy step, at the least
SWITCH_GOAL_S = 1.0  # a host's switch may take this much longer than its floor
COLOURS = {"reuse": "tab:orange", "check": "tab:blue", "close": "tab:green"}

# Runs on a host: start `release` on the idle slot (with the live slot's environment file, as
# a move gives it), poll its health every 10 ms, print the seconds from `systemctl start` to the
# first healthy answer, stop it again.
FLOOR_SCRIPT = """
import http.client, os, shutil, subprocess, sys, time
service, port, live, release, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
link, unit = f"/opt/fleet/{service}/slots/{port}", f"{service}@{port}.service"
env = f"/etc/fleet/{service}/{port}.env"
shutil.copy2(f"/etc/fleet/{service}/{live}.env", env)
os.symlink(f"../releases/{release}", link + ".floor")
os.replace(link + ".floor", link)
subprocess.run(["systemctl", "reset-failed", unit], capture_output=True)
start = time.monotonic()
try:
    subprocess.run(["systemctl", "start", unit], check=True)
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() - start > 60:
            sys.exit(f"{unit} not healthy within 60 s")
        time.sleep(0.01)
    print(f"{time.monotonic() - start:.4f}")
finally:
    subprocess.run(["systemctl", "stop", unit], capture_output=True)
    os.unlink(link)
    os.unlink(env)
"""


@dataclass
class Window:
    name: str
    start: float
    end: float


@dataclass
class PlaybookRun:
    phase: str
    command: str
    release: str
    seconds: float  # wall clock of the ansible-playbook command
    returncode: int
    log: str  # where its output is
    rolling: bool = True  # a plain rolling move across every host, ok (counted in the rolling deploy times)


@dataclass
class Run:
    """What the phases did, for the report."""

    lab: Lab
    service: str
    out: Path
    load: LoadGenerator
    step: float  # seconds from the start of one deploy (rollback, interrupted deploy) to the next
    windows: list[Window] = field(default_factory=list)
    playbooks: list[PlaybookRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what makes the run fail besides dropped requests
    interrupted: dict[str, Any] = field(default_factory=dict)
    _cycle: int = 0

    def say(self, message: str) -> None:
        print(f"[{self.load.now():6.1f}s] {message}", flush=True)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.load.now()
        try:
            yield
        finally:
            self.windows.append(Window(name, start, self.load.now()))

    # -- the lab -------------------------------------------------------------------------------
    def state(self, host: str) -> dict[str, Any]:
        """The service's deploy state on `host`, read through the slot engine's state module."""
        return dict(json.loads(self.lab.ssh(host, f"fleet-slot state {self.service}").stdout))

    def live_releases(self) -> set[str]:
        releases = set()
        for host in sorted(self.lab.hosts):
            current = self.state(host)
            releases.add(current["slots"][str(current["live_port"])]["release"])
        return releases

    def next_release(self) -> str:
        """The next release of the cycle that is live on no host."""
        live = self.live_releases()
        while RELEASES[self._cycle % len(RELEASES)] in live:
            self._cycle += 1
        release = RELEASES[self._cycle % len(RELEASES)]
        self._cycle += 1
        return release

    def inventory_args(self) -> list[str]:
        return [] if self.lab.inventory == DEFAULT_INVENTORY else ["-i", str(self.lab.inventory)]

    def playbook(self, phase: str, playbook: str, *extra: str, release: str = "", rolling: bool = True,
                 guarded: bool = True) -> PlaybookRun:
        """Run a playbook to its end, timed; its output goes to a log file, its summary is printed."""
        args = [playbook, "-e", f"service={self.service}", *extra]
        log = self.out / "logs" / f"{len(self.playbooks) + 1:02d}-{phase}-{playbook.removesuffix('.yml')}.log"
        start = time.monotonic()
        result = self.lab.playbook(*args, check=False)
        seconds = round(time.monotonic() - start, 3)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(result.stdout + result.stderr)
        run = PlaybookRun(phase, "ansible-playbook " + " ".join(args), release, seconds, result.returncode,
                          str(log), rolling and result.returncode == 0)
        self.playbooks.append(run)
        self.say(f"{run.command}: {'ok' if run.returncode == 0 else 'FAILED'} in {seconds:.1f}s")
        for line in summary_of(result.stdout):
            print(f"           {line}", flush=True)
        if result.returncode != 0 and guarded:
            self.problems.append(f"{run.command} failed (rc {run.returncode}), see {log}")
        return run

    # -- the phases ----------------------------------------------------------------------------
    def floors(self) -> dict[str, float]:
        """Per host: seconds for the live release to get healthy on the idle slot, on its own."""
        entry = yaml.safe_load(CATALOG.read_text())["fleet_services"][self.service]
        port, health_path = int(entry["port"]), entry.get("health", {}).get("path", "/health")
        healthy = {}
        for host in sorted(self.lab.hosts):
            current = self.state(host)
            live = current["live_port"]
            idle = port + 1000 if live == port else port
            release = current["slots"][str(live)]["release"]
            command = shlex.join(["python3", "-c", FLOOR_SCRIPT, self.service, str(idle), str(live), release,
                                  health_path])
            healthy[host] = float(self.lab.ssh(host, command).stdout.strip())
            self.say(f"{host}: {release} healthy on slot {idle} after {healthy[host]:.3f}s")
        return healthy

    @contextmanager
    def paced(self) -> Iterator[None]:
        """Load keeps going after the step until `step` seconds have passed, and at least SETTLE_S."""
        start = time.monotonic()
        yield
        time.sleep(max(SETTLE_S, self.step - (time.monotonic() - start)))

    def deploys(self, count: int) -> None:
        for _ in range(count):
            with self.paced():
                release = self.next_release()
                self.playbook("deploys", "hot_deploy.yml", "-e", f"version={release}", release=release)

    def rollback(self) -> None:
        with self.paced():
            self.playbook("rollback", "rollback.yml")

    def restart(self) -> None:
        with self.paced():
            self.playbook("restart", "hot_deploy.yml", "-e", "restart=true", rolling=False)

    def reconfigure(self) -> None:
        """A secret added to the service's environment, applied by site.yml; then removed again."""
        catalog = yaml.safe_load(CATALOG.read_text())
        catalog["fleet_services"][self.service]["environment"]["BENCH_SECRET"] = f"bench-{int(time.time())}"
        changed = self.out / "catalog-with-secret.yml"
        changed.write_text(yaml.safe_dump(catalog))
        for extra in (("-e", f"@{changed}"), ()):
            with self.paced():
                self.playbook("reconfigure", "site.yml", "--tags", "service", *extra, rolling=False)

    def interrupted_deploy(self) -> None:
        with self.paced():
            self.interrupt_and_resume()

    def interrupt_and_resume(self) -> None:
        """Kill a deploy (controller and engine) right after the first host switched, then resume it."""
        release = self.next_release()
        first = sorted(self.lab.hosts)[0]
        halted = f"/run/fleet-slots/{self.service}.halted"
        args = ["hot_deploy.yml", "-e", f"service={self.service}", "-e", f"version={release}",
                "-e", "drill_halt_after=switch"]
        log = self.out / "logs" / f"{len(self.playbooks) + 1:02d}-interrupted-killed.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.say(f"ansible-playbook {' '.join(args)} (to be killed once {first} has switched)")
        start = time.monotonic()
        with log.open("w") as output:
            # Output to a file: an ssh ControlPersist master outlives the run and would hold a pipe open.
            process = subprocess.Popen(["ansible-playbook", *self.inventory_args(), *args], cwd=REPO_ROOT,
                                       env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"}, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        marker = ""
        try:
            deadline = time.monotonic() + 300
            while not marker:
                marker = self.lab.ssh(first, f"cat {halted} 2>/dev/null || true").stdout.strip()
                if not marker and (process.poll() is not None or time.monotonic() > deadline):
                    self.problems.append(f"the drill never halted on {first} (see {log})")
                    self.say(f"the drill never halted on {first}: see {log}")
                    return
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        pid, halted_after = marker.split()
        seconds = round(time.monotonic() - start, 3)
        self.lab.ssh(first, f"kill -9 {int(pid)}; rm -f {halted}")
        self.playbooks.append(PlaybookRun("interrupted", "ansible-playbook " + " ".join(args), release, seconds,
                                          -signal.SIGKILL, str(log), rolling=False))
        self.say(f"{first}: engine (PID {pid}) halted after {halted_after}; killed it and ansible-playbook")
        self.interrupted = {"release": release, "host": first, "halted_after": halted_after,
                            "state_after_kill": self.state(first)}
        resumed = self.playbook("interrupted", "hot_deploy.yml", "-e", f"version={release}", release=release,
                                rolling=False)
        self.interrupted["resume_returncode"] = resumed.returncode
        self.interrupted["check"] = self.check_settled(release)

    def check_settled(self, release: str) -> dict[str, dict[str, Any]]:
        """Per host: no pending move, the live slot answers its health and nginx serves it."""
        checks = {}
        for host in sorted(self.lab.hosts):
            current = self.state(host)
            live = current["live_port"]
            health = self.lab.ssh(host, f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{live}/health",
                                  check=False).stdout.strip()
            served = serving(self.lab.hosts[host], self.service)
            check = {"pending": current.get("pending"), "live_port": live,
                     "live_release": current["slots"][str(live)]["release"], "health": health,
                     "served_by": served.get("port"), "ok": False}
            check["ok"] = (check["pending"] is None and health == "200" and served.get("port") == live
                           and check["live_release"] == release)
            checks[host] = check
            if not check["ok"]:
                self.problems.append(f"after the interrupted deploy, {host}: {check}")
            self.say(f"{host}: pending {check['pending'] is not None}, live slot {live} ({check['live_release']}) "
                     f"health {health}, nginx serves slot {check['served_by']}: {'ok' if check['ok'] else 'NOT OK'}")
        return checks

    def naive_restart(self, gap: float) -> None:
        for host in sorted(self.lab.hosts):
            live = self.state(host)["live_port"]
            self.say(f"{host}: systemctl restart {self.service}@{live}")
            self.lab.ssh(host, f"systemctl restart {self.service}@{live}")
            time.sleep(gap)


def serving(address: str, service: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://{address}/", headers={"Host": f"{service}.fleet.test"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.load(response))
    except (OSError, ValueError) as err:
        return {"error": str(err)}


def summary_of(output: str) -> list[str]:
    """The fleet_deploy_summary callback's lines of a playbook's output."""
    if "SUMMARY" not in output:
        return [line for line in output.splitlines() if "fatal:" in line or "FAILED" in line][:5]
    lines = []
    for line in output.split("SUMMARY", 1)[1].splitlines()[1:]:
        if not line.strip() or line.startswith(("PLAY RECAP", "TASKS RECAP")):
            break
        lines.append(line)
    return lines


# -- after the run -----------------------------------------------------------------------------
def audit_lines(lab: Lab, service: str, since: str) -> dict[str, list[dict[str, Any]]]:
    """Per host, the deploy audit lines of this service written during this run."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for host in sorted(lab.hosts):
        out = lab.ssh(host, "cat /var/log/fleet/deploy.log 2>/dev/null || true").stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        lines[host] = [r for r in records if r.get("service") == service and r.get("time", "") >= since]
    return lines


def switch_figures(audit: dict[str, list[dict[str, Any]]], healthy: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per host: each ok move's engine time against its floor (time to healthy + its own drain +
    its watch: the engine holds the move for the watch by design).

    A move is an audit line that started a release on the idle slot (deploy, rollback, restart);
    lines of other modes (a reconcile found by the plan) are kept apart, under `other`."""
    def move(r: dict[str, Any], healthy_s: float) -> dict[str, Any]:
        durations = r.get("durations", {})
        watch_s = float((r.get("watch") or {}).get("seconds", 0.0))
        return {"mode": r["mode"], "to_release": r["to_release"], "seconds": r["seconds"], "durations": durations,
                "watch_s": watch_s, "floor": round(healthy_s + float(durations.get("drain", 0.0)) + watch_s, 3)}

    figures: dict[str, dict[str, Any]] = {}
    for host, records in audit.items():
        moves = [move(r, healthy[host]) for r in records if r.get("result") == "ok" and r.get("mode") in MOVE_MODES]
        rest = {"failed": [r for r in records if r.get("result") != "ok"],
                "other": [r for r in records if r.get("result") == "ok" and r.get("mode") not in MOVE_MODES]}
        if not moves:
            figures[host] = {"moves": [], **rest}
            continue
        switch = statistics.median(m["seconds"] for m in moves)
        floor = statistics.median(m["floor"] for m in moves)
        figures[host] = {
            "moves": moves, **rest,
            "healthy_s": healthy[host], "median_switch_s": round(switch, 3), "median_floor_s": round(floor, 3),
            "difference_s": round(switch - floor, 3), "ratio": round(switch / floor, 2) if floor else None,
            "within_goal": switch - floor <= SWITCH_GOAL_S,
        }
    return figures


def switch_points(samples: list[Sample]) -> dict[str, list[float]]:
    """Per host, the moments the serving slot changed, as clients saw it."""
    points: dict[str, list[float]] = {}
    last: dict[str, int] = {}
    for s in samples:
        if s.slot is None:
            continue
        if s.host in last and s.slot != last[s.host]:
            points.setdefault(s.host, []).append(round(s.t, 3))
        last[s.host] = s.slot
    return points


def in_window(samples: list[Sample], window: Window) -> list[Sample]:
    return [s for s in samples if window.start <= s.t < window.end]


def print_tables(report: dict[str, Any], run: Run) -> None:
    header = (f"{'phase':<12} {'client':<6} {'requests':>8} {'non-2xx':>8} {'conn err':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'reconnects':>10}")
    print(f"\n{header}\n{'-' * len(header)}")
    for name, phase in report["phases"].items():
        for client, f in phase["by_client"].items():
            reconnects = f["reconnects"] if client == "check" else "-"
            print(f"{name:<12} {client:<6} {f['requests']:>8} {f['non_2xx']:>8} {f['connection_errors']:>8} "
                  f"{f['p50_ms']:>8} {f['p99_ms']:>8} {reconnects:>10}")
    guarded = report["guarded"]
    print(f"\n{' + '.join(GUARDED)}: {guarded['requests']} requests"
          f"{'' if guarded['requests'] >= GUARDED_REQUESTS_GOAL else f' (fewer than {GUARDED_REQUESTS_GOAL})'}, "
          f"{guarded['failed']} failed ({', '.join(f'{k} {v}' for k, v in guarded['failed_by_client'].items())})")
    print(f"check clients reopened {report['keepalive_reconnects']} keep-alive connections that nginx had closed "
          f"while idle (whole run); connections opened: "
          f"{', '.join(f'{k} {v}' for k, v in report['connections_by_client'].items())}")
    print(f"controller load average (1 min): {report['loadavg']['start']} at the start, "
          f"{report['loadavg']['end']} at the end")

    print(f"\nper-host switch: the engine's time for a whole move (audit `seconds`) against its floor "
          f"(time to healthy on its own + that move's drain + its watch); goal: difference <= {SWITCH_GOAL_S:g}s")
    print(f"{'host':<16} {'moves':>5} {'healthy s':>9} {'switch s':>9} {'floor s':>8} {'diff s':>7} {'ratio':>6}")
    for host, f in report["switch"].items():
        if not f["moves"]:
            print(f"{host:<16} {0:>5}  (no ok move in the audit log)")
            continue
        print(f"{host:<16} {len(f['moves']):>5} {f['healthy_s']:>9.3f} {f['median_switch_s']:>9.3f} "
              f"{f['median_floor_s']:>8.3f} {f['difference_s']:>7.3f} {f['ratio']:>6}"
              f"{'' if f['within_goal'] else '  over the goal'}")
        for m in f["moves"]:
            d = m["durations"]
            phases = "  ".join(f"{k} {d[k]:.2f}" for k in ("start", "health_gate", "switch", "verify", "record",
                                                            "drain") if k in d)
            print(f"    {m['mode']:<8} -> {m['to_release']:<6} {m['seconds']:>6.2f}s (floor {m['floor']:.2f}s)  "
                  f"{phases}")
    for host, f in report["switch"].items():
        for r in f["other"] + f["failed"]:
            print(f"    {host}: {r.get('mode')} {r.get('result')} {r.get('seconds')}s: {r.get('message', '')}")

    rolling = report["rolling"]
    print(f"\nrolling deploys ({len(run.lab.hosts)} hosts, wall clock of ansible-playbook; goal <= "
          f"{ROLLING_GOAL_S:g}s + {len(run.lab.hosts)} x the {rolling['watch_s']:g}s watch = {rolling['goal_s']:g}s):")
    for p in run.playbooks:
        mark = "" if p.rolling else "  (not counted)"
        print(f"    {p.phase:<12} {p.release or '-':<6} {p.seconds:>6.1f}s  rc {p.returncode}{mark}  {p.command}")
    if rolling["count"]:
        print(f"    min {rolling['min_s']}s  median {rolling['median_s']}s  max {rolling['max_s']}s over "
              f"{rolling['count']} runs{'' if rolling['within_goal'] else '  over the goal'}")


def plot(path: Path, samples: list[Sample], windows: list[Window], switches: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_err) = plt.subplots(2, 1, figsize=(15, 8), sharex=True, height_ratios=(3, 1))
    for client in CLIENTS:
        points = [s for s in samples if s.client == client and not s.error]
        ax_lat.scatter([s.t for s in points], [s.latency * 1000 for s in points], s=1.5, color=COLOURS[client],
                       label=client, alpha=0.6, linewidths=0)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms)")
    end = int(samples[-1].t) + 1 if samples else 1
    bottom = [0] * end
    for client in CLIENTS:
        counts = [0] * end
        for s in failures(samples):
            if s.client == client:
                counts[int(s.t)] += 1
        if any(counts):
            ax_err.bar(range(end), counts, width=1.0, bottom=bottom, color=COLOURS[client], label=client,
                       align="edge")
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax_err.set_ylabel("failed requests / s")
    ax_err.set_xlabel("seconds since the load started")
    shades = ("whitesmoke", "white", "honeydew", "lightcyan", "lavender", "mistyrose")
    for i, (window, shade) in enumerate(zip(windows, shades, strict=False)):
        for ax in (ax_lat, ax_err):
            ax.axvspan(window.start, window.end, color=shade, alpha=0.8, zorder=0)
        # Names on two alternating rows (x in data, y in axes fraction): short windows do not overlap.
        ax_lat.text(window.start, 0.99 - 0.04 * (i % 2), f" {window.name}", va="top", fontsize=9,
                    transform=ax_lat.get_xaxis_transform())
    for host_points in switches.values():
        for t in host_points:
            ax_lat.axvline(t, color="grey", linewidth=0.6, linestyle="--", zorder=1)
            ax_err.axvline(t, color="grey", linewidth=0.6, linestyle="--", zorder=1)
    ax_lat.legend(loc="upper right", bbox_to_anchor=(1.0, 0.9), markerscale=6, fontsize=8, title="client")
    if ax_err.get_legend_handles_labels()[0]:
        ax_err.legend(loc="upper left", fontsize=8)
    ax_lat.set_title("deploys, rollback, interrupted, restart, reconfigure, naive restart: latency per request, "
                     "failed requests, slot switches seen by clients (dashed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY,
                        help=f"the lab's inventory (default {DEFAULT_INVENTORY.relative_to(REPO_ROOT)})")
    parser.add_argument("--service", default="zapier-mcp")
    parser.add_argument("--rate", type=float, default=240.0, help="requests per second in total (default 240)")
    parser.add_argument("--deploys", type=int, default=5, help="rolling hot deploys in a row (default 5)")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of quiet load first (default 10)")
    parser.add_argument("--step", type=float, default=35.0,
                        help="seconds from the start of one deploy, the rollback or the interrupted deploy to the "
                             f"next (default 35; a longer one is followed by {SETTLE_S:g}s of load)")
    parser.add_argument("--naive-gap", type=float, default=2.0, help="seconds between naive restarts (default 2)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    args = parser.parse_args()

    lab = Lab(args.inventory.resolve())
    shutil.rmtree(args.out / "logs", ignore_errors=True)  # the playbook logs of an earlier run
    targets = [Target(host, address, f"{args.service}.fleet.test") for host, address in sorted(lab.hosts.items())]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = LoadGenerator(targets, args.rate)
    run = Run(lab, args.service, args.out, load, args.step)
    print(f"{args.service} on {', '.join(sorted(lab.hosts))} ({lab.inventory}); load {args.rate:g} req/s in "
          f"{len(load.streams)} streams (modes x hosts); live: {', '.join(sorted(run.live_releases()))}", flush=True)
    loadavg_start = round(os.getloadavg()[0], 2)
    load.start()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("baseline", lambda: time.sleep(args.baseline)),
        ("deploys", lambda: run.deploys(args.deploys)),
        ("rollback", run.rollback),
        ("interrupted", run.interrupted_deploy),
        ("restart", run.restart),
        ("reconfigure", run.reconfigure),
        ("naive", lambda: run.naive_restart(args.naive_gap)),
    ]
    try:
        with run.phase("floor"):
            healthy = run.floors()
        for name, step in steps:
            run.say(f"phase {name}")
            with run.phase(name):
                step()
    finally:
        samples = load.stop()

    audit = audit_lines(lab, args.service, since)
    guarded_samples = [s for w in run.windows if w.name in GUARDED for s in in_window(samples, w)]
    guarded_failed = failures(guarded_samples)
    rolling_times = [p.seconds for p in run.playbooks if p.rolling]
    switch = switch_figures(audit, healthy)
    # The watch each move held (the audit's), the same on every host: the catalog's deploy.watch.
    watch_s = round(statistics.median([m["watch_s"] for f in switch.values() for m in f["moves"]] or [0.0]), 1)
    rolling_goal_s = ROLLING_GOAL_S + len(lab.hosts) * watch_s
    report: dict[str, Any] = {
        "service": args.service, "hosts": lab.hosts, "inventory": str(lab.inventory), "since": since,
        "rate_target": args.rate, "streams": len(load.streams), "modes": sorted({s.mode for s in load.streams}),
        "windows": [asdict(w) for w in run.windows],
        "phases": {w.name: {"window": [round(w.start, 3), round(w.end, 3)],
                            "all": summarize(in_window(samples, w)),
                            "by_client": summarize_by_client(in_window(samples, w))} for w in run.windows},
        "guarded": {"phases": list(GUARDED), "requests": len(guarded_samples), "failed": len(guarded_failed),
                    "failed_by_client": {c: sum(1 for s in guarded_failed if s.client == c) for c in CLIENTS}},
        "keepalive_reconnects": sum(st.reconnects for st in load.streams if st.client == "check"),
        "connections_by_client": {c: sum(st.connections for st in load.streams if st.client == c) for c in CLIENTS},
        "loadavg": {"start": loadavg_start, "end": round(os.getloadavg()[0], 2)},
        "floor_healthy_s": healthy,
        "switch": switch,
        "rolling": {"count": len(rolling_times), "goal_s": rolling_goal_s, "watch_s": watch_s,
                    "min_s": min(rolling_times, default=None), "max_s": max(rolling_times, default=None),
                    "median_s": round(statistics.median(rolling_times), 3) if rolling_times else None,
                    "within_goal": bool(rolling_times) and max(rolling_times) <= rolling_goal_s},
        "playbooks": [asdict(p) for p in run.playbooks],
        "interrupted": run.interrupted,
        "switch_points": switch_points(samples),
        "audit": audit,
        "problems": run.problems,
        "failures": [asdict(s) for s in failures(samples)],
    }
    print_tables(report, run)
    for problem in run.problems:
        print(f"PROBLEM: {problem}")
    for s in guarded_failed[:20]:
        print(f"  failed at {s.t:7.2f}s {s.host} {s.mode}: {s.status or ''} {s.error}")
    png, figures = args.out / "hot_deploy.png", args.out / "hot_deploy.json"
    plot(png, samples, run.windows, report["switch_points"])
    figures.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nplot: {png}\nfigures: {figures}")
    return 1 if guarded_failed or run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
