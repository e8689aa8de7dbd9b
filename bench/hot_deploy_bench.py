#!/usr/bin/env python3
"""Benchmark: does a hot deploy drop requests? Compared with a naive restart, in the same run.

    make bench                     # lab up, site.yml, then this with the defaults
    python3 -m bench.hot_deploy_bench --service zapier-mcp --rate 240 --deploys 3

Steady load (keep-alive on and off, GET and POST) goes through nginx on every lab host for the
whole run. Phases: a quiet baseline, several hot deploys of one service in a row (alternating
releases, each rolled across every host), then the naive way - `systemctl restart` of the live
slot on each host in turn. It prints requests, non-2xx, connection errors and p50/p99 latency per
phase, the per-host swap times from the deploy audit log next to their floor (time for a fresh
release to become healthy on its own plus one nginx reload, measured on a host), and draws a PNG
of latency and failures over time with every swap marked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bench.loadgen import LoadGenerator, Sample, Target, failures, summarize
from lab.client import REPO_ROOT, Lab

RELEASES = ("1.1.0", "1.2.0", "2.0.0", "1.0.0")
CATALOG = REPO_ROOT / "inventories" / "lab" / "group_vars" / "all" / "fleet_services.yml"


@dataclass
class Window:
    name: str
    start: float
    end: float


def run_phase(load: LoadGenerator, name: str, action) -> Window:
    start = load.now()
    action()
    return Window(name, start, load.now())


def deploy(lab: Lab, service: str, release: str) -> None:
    lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", f"version={release}")


def naive_restart(lab: Lab, service: str) -> None:
    for host in sorted(lab.hosts):
        state = json.loads(lab.ssh(host, f"cat /var/lib/fleet/state/{service}.json").stdout)
        lab.ssh(host, f"systemctl restart {service}@{state['live_port']}")
        time.sleep(2)


def floor_seconds(lab: Lab, service: str) -> dict[str, float]:
    """On one host: a release starting on the idle slot until healthy, and one nginx reload."""
    host = sorted(lab.hosts)[0]
    state = json.loads(lab.ssh(host, f"cat /var/lib/fleet/state/{service}.json").stdout)
    live = state["live_port"]
    port = yaml.safe_load(CATALOG.read_text())["fleet_services"][service]["port"]
    idle = port + 1000 if live == port else port
    script = (
        f"ln -sfn ../releases/{state['slots'][str(live)]['release']} /opt/fleet/{service}/slots/{idle}; "
        "s=$(date +%s.%N); "
        f"systemctl start {service}@{idle}; "
        f"until curl -fs -o /dev/null http://127.0.0.1:{idle}/health; do sleep 0.02; done; "
        "h=$(date +%s.%N); systemctl reload nginx; r=$(date +%s.%N); "
        f"systemctl stop {service}@{idle}; rm -f /opt/fleet/{service}/slots/{idle}; "
        'echo "$s $h $r"'
    )
    start, healthy, reloaded = (float(x) for x in lab.ssh(host, script).stdout.split())
    return {"healthy_s": round(healthy - start, 3), "reload_s": round(reloaded - healthy, 3),
            "floor_s": round(reloaded - start, 3)}


def switch_points(samples: list[Sample], window: Window) -> dict[str, list[float]]:
    """Per host, the moments in the window when the serving slot changed, as seen by clients."""
    points: dict[str, list[float]] = {}
    last: dict[str, int | None] = {}
    for s in samples:
        if s.slot is None:
            continue
        if s.host in last and s.slot != last[s.host] and window.start <= s.t <= window.end:
            points.setdefault(s.host, []).append(s.t)
        last[s.host] = s.slot
    return points


def audit_swaps(lab: Lab, service: str, since: str) -> dict[str, list[dict]]:
    """Per host, the deploy audit lines written during this run."""
    swaps: dict[str, list[dict]] = {}
    for host in sorted(lab.hosts):
        lines = lab.ssh(host, "cat /var/log/fleet/deploy.log").stdout.splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        swaps[host] = [r for r in records if r["service"] == service and r["time"] >= since and r["result"] == "ok"]
    return swaps


def plot(path: Path, samples: list[Sample], windows: list[Window], switches: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_err) = plt.subplots(2, 1, figsize=(13, 7), sharex=True, height_ratios=(3, 1))
    ok = [s for s in samples if not s.error]
    for mode, colour in zip(("keepalive-get", "keepalive-post", "close-get", "close-post"),
                            ("tab:blue", "tab:cyan", "tab:green", "tab:olive"), strict=True):
        points = [s for s in ok if s.mode == mode]
        ax_lat.scatter([s.t for s in points], [s.latency * 1000 for s in points], s=2, color=colour, label=mode)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms)")
    bad = failures(samples)
    buckets: dict[int, int] = {}
    for s in bad:
        buckets[int(s.t)] = buckets.get(int(s.t), 0) + 1
    ax_err.bar(list(buckets), list(buckets.values()), width=1.0, color="tab:red")
    ax_err.set_ylabel("failed requests / s")
    ax_err.set_xlabel("seconds since start")
    for window, shade in zip(windows, ("white", "honeydew", "mistyrose"), strict=False):
        for ax in (ax_lat, ax_err):
            ax.axvspan(window.start, window.end, color=shade, alpha=0.6, zorder=0)
        ax_lat.text(window.start, ax_lat.get_ylim()[1], f" {window.name}", va="top", fontsize=9)
    for host_points in switches.values():
        for t in host_points:
            ax_lat.axvline(t, color="grey", linewidth=0.6, linestyle="--")
    ax_lat.legend(loc="upper right", markerscale=4, fontsize=8)
    ax_lat.set_title("hot deploy vs naive restart: latency per request, failed requests, swaps (dashed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", default="zapier-mcp")
    parser.add_argument("--rate", type=float, default=240.0, help="requests per second in total (default 240)")
    parser.add_argument("--deploys", type=int, default=3, help="hot deploys in a row (default 3)")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of quiet load first")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    args = parser.parse_args()

    lab = Lab()
    server_name = f"{args.service}.fleet.test"
    targets = [Target(host, address, server_name) for host, address in sorted(lab.hosts.items())]
    print(f"floor on {sorted(lab.hosts)[0]}: {floor_seconds(lab, args.service)}", flush=True)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = LoadGenerator(targets, args.rate).start()
    windows = [run_phase(load, "baseline", lambda: time.sleep(args.baseline))]

    def deploys() -> None:
        for i in range(args.deploys):
            release = RELEASES[i % len(RELEASES)]
            print(f"[{load.now():6.1f}s] hot deploy {args.service} {release} across {len(targets)} hosts", flush=True)
            deploy(lab, args.service, release)

    windows.append(run_phase(load, "hot deploys", deploys))
    time.sleep(3)
    print(f"[{load.now():6.1f}s] naive systemctl restart on each host", flush=True)
    windows.append(run_phase(load, "naive restart", lambda: naive_restart(lab, args.service)))
    time.sleep(2)
    samples = load.stop()

    floor = floor_seconds(lab, args.service)
    swaps = audit_swaps(lab, args.service, since)
    switches = {h: p for w in windows[1:2] for h, p in switch_points(samples, w).items()}
    report = {"rate_target": args.rate, "service": args.service, "floor": floor, "phases": {}, "swaps": {}}
    print(f"\n{'phase':<14} {'requests':>8} {'req/s':>7} {'non-2xx':>8} {'conn err':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for window in windows:
        figures = summarize([s for s in samples if window.start <= s.t <= window.end])
        report["phases"][window.name] = figures
        print(f"{window.name:<14} {figures['requests']:>8} {figures['rate']:>7} {figures['non_2xx']:>8} "
              f"{figures['connection_errors']:>8} {figures['p50_ms']:>8} {figures['p99_ms']:>8}")
    print("\nper-host swap (from the audit log; 'swap' = write + nginx -t + reload + verify through nginx):")
    for host, records in swaps.items():
        report["swaps"][host] = [{"to": r["to_release"], **r["durations"], "total": r["seconds"]} for r in records]
        for r in records:
            d = r["durations"]
            print(f"  {host}  -> {r['to_release']:<6} total {r['seconds']:>5.1f}s  start {d['start']:>4.1f}s  "
                  f"health gate {d['health_gate']:>4.1f}s  swap {d['swap']:>4.1f}s  drain {d['drain']:>4.1f}s")
    print(f"floor: healthy on its own {floor['healthy_s']}s + one reload {floor['reload_s']}s = {floor['floor_s']}s")
    reconnects = sum(stream.reconnects for stream in load.streams)
    report["keepalive_reconnects"] = reconnects
    print(f"keep-alive connections closed by nginx while idle (reloads, keepalive_timeout) and reopened "
          f"before reuse: {reconnects}")
    bad = failures(samples)
    for s in bad[:20]:
        print(f"  failed at {s.t:7.2f}s {s.host} {s.mode}: {s.status or ''} {s.error}")
    png = args.out / "hot_deploy.png"
    plot(png, samples, windows, switches)
    (args.out / "hot_deploy.json").write_text(json.dumps(
        {**report, "failures": [asdict(s) for s in bad]}, indent=2))
    print(f"\nplot: {png}\nfigures: {args.out / 'hot_deploy.json'}")
    deploy_window = report["phases"]["hot deploys"]
    return 0 if deploy_window["non_2xx"] + deploy_window["connection_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
