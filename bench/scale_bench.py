#!/usr/bin/env python3
"""Benchmark: how does the cost of converging the fleet grow with the number of hosts?

    python3 -m bench.scale_bench                         # 1, 3, 6 and 10 hosts (long: one lab each)
    python3 -m bench.scale_bench --hosts 1,2 --keep      # a quick look; leave the labs up

For each host count N of --hosts, on a fresh lab of its own (`python3 -m lab --name scale-N up
--hosts N --gpu 1`, hosts scale-N-1..N; taken down again after measuring, unless --keep), it
measures, as the wall clock of each command (time.monotonic() around the subprocess):

    first run    ansible-playbook site.yml on the fresh hosts
    no-op        site.yml again: nothing left to do; its PLAY RECAP must show changed=0 on every
                 host (the tasks that did report a change are listed otherwise)
    memory       each host's memory use after the no-op (`docker stats --no-stream` of the lab's
                 containers), the mean MiB per host
    deploy       a rolling deploy, hot_deploy.yml -e service=main-api -e version=1.1.0
                 -e batch_size=B, with B from --batch-size, by default a third of the hosts rounded
                 up, so there are 3 batches at every size from 3 hosts on; the batches are counted
                 in its output (one "Roll out" play header per batch)

Playbooks run from the repository root with `-i <the lab's inventory>`; releases are built first
(tools/build_release.py --all-lab). It prints one row per host count (hosts, first run s, no-op s,
deploy s (batches), MiB/host), each timing's growth against the 3-host row when 3 is among the
sizes, and the issue's goals next to the figures:

    no-op        from 3 to 10 hosts at most 1.5x as long
    deploy       grows with the number of batches, not with the number of hosts

It writes build/bench/scale.json (every figure, per-host recaps and memory), build/bench/scale.png
(seconds against hosts, one line per measurement; MiB per host beside it) and each playbook's
output to build/bench/scale-logs/.

Exit status: 0 when every size was measured and each no-op showed changed=0 with the expected
number of batches in the deploy; 1 otherwise (a goal missed is reported, not an error); 2 when a
lab or a playbook failed (the figures measured until then are still written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.client import REPO_ROOT, Lab
from lab.dockerctl import LabError

SERVICE = "main-api"
VERSION = "1.1.0"  # site.yml converges main-api to the catalog's 1.0.0: the deploy moves every host
BASE_HOSTS = 3  # the row growth is measured against
NOOP_GOAL = 1.5  # no-op from 3 to 10 hosts at most this many times as long
NOOP_GOAL_HOSTS = 10
TARGET_BATCHES = 3  # the default batch size keeps this many batches
ROLLOUT_PLAY = "PLAY [Roll out, one batch of hosts at a time]"  # printed once per batch
LAB_TIMEOUT_S = 900.0
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+(ok=\d+.*)$")
TASK_LINE = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]")
CHANGED_LINE = re.compile(r"^changed: \[([^\]]+)\]")
MEMORY_UNITS = {"B": 1 / 2**20, "KiB": 1 / 2**10, "MiB": 1.0, "GiB": 2**10, "TiB": 2**20,
                "kB": 1e3 / 2**20, "KB": 1e3 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20, "TB": 1e12 / 2**20}


@dataclass
class Size:
    """The figures of one host count, measured on a lab of its own."""

    hosts: int
    lab: str
    batch_size: int
    expected_batches: int
    up_s: float | None = None  # `lab up`, for the record
    first_s: float | None = None
    noop_s: float | None = None
    deploy_s: float | None = None
    batches: int | None = None  # counted in the deploy's output
    noop_recap: dict[str, dict[str, int]] = field(default_factory=dict)
    first_recap: dict[str, dict[str, int]] = field(default_factory=dict)
    noop_changed: dict[str, list[str]] = field(default_factory=dict)  # per host, the tasks that changed
    memory_mib: dict[str, float] = field(default_factory=dict)
    mean_mib: float | None = None
    loadavg: dict[str, float] = field(default_factory=dict)  # controller's 1-min load before each step
    problems: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def noop_clean(self) -> bool | None:
        """Whether the no-op's recap showed changed=0 on every host (None: not measured)."""
        if not self.noop_recap:
            return None
        return not self.noop_changed and all(r.get("changed", 0) == 0 for r in self.noop_recap.values())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


# -- the lab -----------------------------------------------------------------------------------
def lab_command(name: str, *args: str) -> tuple[str, float]:
    """`python3 -m lab --name NAME ARGS` from the repository root: its stdout and wall-clock seconds."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lab", "--name", name, *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=LAB_TIMEOUT_S)
    seconds = round(time.monotonic() - start, 3)
    if result.returncode != 0:
        raise LabError(f"python3 -m lab --name {name} {' '.join(args)} failed ({result.returncode}):\n"
                       f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout, seconds


def lab_down(name: str) -> None:
    """Take down a lab this bench started; a failure is reported, not raised (it runs in finally)."""
    try:
        _, seconds = lab_command(name, "down")
        say(f"lab {name} down ({seconds:.1f}s)")
    except (LabError, subprocess.TimeoutExpired) as err:
        print(f"WARNING: could not take lab {name} down: {err}", file=sys.stderr, flush=True)


def memory_mib(hosts: list[str]) -> dict[str, float]:
    """Per container (= host name), its memory use in MiB, from one `docker stats --no-stream`."""
    result = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *hosts],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise LabError(f"docker stats failed ({result.returncode}): {result.stderr}")
    usage = {}
    for line in result.stdout.splitlines():
        if "\t" in line:
            name, mem = line.split("\t", 1)
            usage[name.strip()] = round(to_mib(mem.split("/")[0].strip()), 1)
    return usage


def to_mib(text: str) -> float:
    """'164.8MiB' (docker's MemUsage, before the '/') in MiB."""
    match = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]+)", text)
    if not match or match.group(2) not in MEMORY_UNITS:
        raise ValueError(f"unexpected memory figure from docker stats: {text!r}")
    return float(match.group(1)) * MEMORY_UNITS[match.group(2)]


# -- playbook output ---------------------------------------------------------------------------
def play_recap(output: str) -> dict[str, dict[str, int]]:
    """Per host, the counters of the PLAY RECAP (ok, changed, unreachable, failed, ...)."""
    recap: dict[str, dict[str, int]] = {}
    if "PLAY RECAP" not in output:
        return recap
    for line in output.rsplit("PLAY RECAP", 1)[1].splitlines()[1:]:
        match = RECAP_LINE.match(line.strip())
        if match:
            recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
        elif recap:
            break
    return recap


def changed_tasks(output: str) -> dict[str, list[str]]:
    """Per host, the tasks (and handlers) that reported `changed`."""
    task = "?"
    changed: dict[str, list[str]] = {}
    for line in output.splitlines():
        if m := TASK_LINE.match(line):
            task = m.group(1)
        elif m := CHANGED_LINE.match(line):
            tasks = changed.setdefault(m.group(1).split(" -> ")[0], [])
            if task not in tasks:
                tasks.append(task)
    return changed


# -- one host count ----------------------------------------------------------------------------
def default_batch_size(hosts: int) -> int:
    return max(1, math.ceil(hosts / TARGET_BATCHES))


def run_playbook(lab: Lab, size: Size, step: str, logs: Path, timeout: float,
                 *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """ansible-playbook ARGS against the lab, timed; its output goes to a log file. Raises on failure."""
    size.loadavg[step] = loadavg()
    inventory = lab.inventory.relative_to(REPO_ROOT) if lab.inventory.is_relative_to(REPO_ROOT) else lab.inventory
    say(f"{size.lab}: ansible-playbook -i {inventory} {' '.join(args)}")
    start = time.monotonic()
    result = lab.playbook(*args, check=True, timeout=timeout)
    seconds = round(time.monotonic() - start, 3)
    log = logs / f"{size.lab}-{step}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    size.logs[step] = str(log)
    say(f"{size.lab}: {step} took {seconds:.1f}s")
    return result, seconds


def measure(size: Size, logs: Path, timeout: float) -> None:
    """Fill in `size` from its lab, which is up (Lab's inventory found)."""
    _, up_s = lab_command(size.lab, "up", "--hosts", str(size.hosts), "--gpu", "1")
    size.up_s = up_s
    inventory = Path(lab_command(size.lab, "inventory")[0].strip().splitlines()[-1])
    lab = Lab(inventory if inventory.is_absolute() else REPO_ROOT / inventory)
    say(f"lab {size.lab} up in {up_s:.1f}s: {', '.join(sorted(lab.hosts))}")
    if len(lab.hosts) != size.hosts:
        raise LabError(f"lab {size.lab} has {len(lab.hosts)} hosts in {lab.inventory}, not {size.hosts}")

    first, size.first_s = run_playbook(lab, size, "first", logs, timeout, "site.yml")
    size.first_recap = play_recap(first.stdout)

    noop, size.noop_s = run_playbook(lab, size, "noop", logs, timeout, "site.yml")
    size.noop_recap = play_recap(noop.stdout)
    size.noop_changed = changed_tasks(noop.stdout)
    missing = sorted(set(lab.hosts) - set(size.noop_recap))
    if missing:
        size.problems.append(f"{size.hosts} hosts: no-op recap lacks {', '.join(missing)}")
    for host, counters in sorted(size.noop_recap.items()):
        if counters.get("changed", 0):
            tasks = "; ".join(size.noop_changed.get(host, [])) or "(tasks not found in the output)"
            size.problems.append(f"{size.hosts} hosts: no-op changed={counters['changed']} on {host}: {tasks}")

    size.loadavg["memory"] = loadavg()
    size.memory_mib = memory_mib(sorted(lab.hosts))
    if sorted(size.memory_mib) != sorted(lab.hosts):
        size.problems.append(f"{size.hosts} hosts: docker stats gave {sorted(size.memory_mib)}, "
                             f"not {sorted(lab.hosts)}")
    if size.memory_mib:
        size.mean_mib = round(sum(size.memory_mib.values()) / len(size.memory_mib), 1)
    say(f"{size.lab}: memory per host (MiB): "
        f"{', '.join(f'{h} {m:.1f}' for h, m in sorted(size.memory_mib.items()))}")

    deploy, size.deploy_s = run_playbook(lab, size, "deploy", logs, timeout, "hot_deploy.yml",
                                         "-e", f"service={SERVICE}", "-e", f"version={VERSION}",
                                         "-e", f"batch_size={size.batch_size}")
    size.batches = sum(1 for line in deploy.stdout.splitlines() if line.startswith(ROLLOUT_PLAY))
    if size.batches != size.expected_batches:
        size.problems.append(f"{size.hosts} hosts: the deploy ran {size.batches} batches of {size.batch_size}, "
                             f"expected {size.expected_batches}")


# -- the report --------------------------------------------------------------------------------
def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def growth(sizes: list[Size]) -> dict[int, dict[str, float | None]]:
    """Per host count, each timing (and batches) against the 3-host row; empty without one."""
    base = next((s for s in sizes if s.hosts == BASE_HOSTS), None)
    if base is None:
        return {}
    return {s.hosts: {"first": ratio(s.first_s, base.first_s), "noop": ratio(s.noop_s, base.noop_s),
                      "deploy": ratio(s.deploy_s, base.deploy_s),
                      "batches": ratio(s.batches, base.batches), "hosts": ratio(s.hosts, base.hosts)}
            for s in sizes}


def goals(sizes: list[Size], ratios: dict[int, dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """The issue's two goals, judged on the figures (None: not measured at these sizes)."""
    measured = {s.hosts: s for s in sizes}
    larger = sorted(h for h in ratios if h > BASE_HOSTS and measured[h].noop_s is not None)
    top = NOOP_GOAL_HOSTS if NOOP_GOAL_HOSTS in larger else (larger[-1] if larger else None)
    noop: dict[str, Any] = {"goal": f"no-op from {BASE_HOSTS} to {NOOP_GOAL_HOSTS} hosts <= {NOOP_GOAL:g}x",
                            "from": BASE_HOSTS, "to": top, "ratio": None, "met": None}
    if top is not None:
        noop["ratio"] = ratios[top]["noop"]
        noop["met"] = noop["ratio"] is not None and noop["ratio"] <= NOOP_GOAL
    deploy: dict[str, Any] = {"goal": "the rolling deploy grows with the number of batches, not hosts",
                              "rows": {}, "met": None}
    for hosts in larger:
        r = ratios[hosts]
        if r["deploy"] is None or not r["batches"] or not r["hosts"]:
            continue
        # On a log scale, is the deploy's growth nearer the batches' growth or the hosts' growth?
        to_batches = abs(math.log(r["deploy"] / r["batches"]))
        to_hosts = abs(math.log(r["deploy"] / r["hosts"]))
        deploy["rows"][hosts] = {"deploy_ratio": r["deploy"], "batches_ratio": r["batches"],
                                 "hosts_ratio": r["hosts"], "follows": "batches" if to_batches < to_hosts else "hosts"}
    if deploy["rows"]:
        deploy["met"] = all(row["follows"] == "batches" for row in deploy["rows"].values())
    return {"noop": noop, "deploy": deploy}


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def print_report(sizes: list[Size], ratios: dict[int, dict[str, float | None]],
                 judged: dict[str, dict[str, Any]]) -> None:
    base = f"x{BASE_HOSTS}"
    header = (f"{'hosts':>5} {'first run s':>11} {base:>6} {'no-op s':>8} {base:>6} {'deploy s':>9} "
              f"{'(batches of B)':>15} {base:>6} {'MiB/host':>9}  no-op changed=0")
    print(f"\n{header}\n{'-' * len(header)}")
    for s in sizes:
        r = ratios.get(s.hosts, {})
        batches = f"({fmt(s.batches, 'd')} of {s.batch_size})"
        clean = {None: "-", True: "yes", False: "NO"}[s.noop_clean]
        print(f"{s.hosts:>5} {fmt(s.first_s):>11} {fmt(r.get('first'), '.2f'):>6} {fmt(s.noop_s):>8} "
              f"{fmt(r.get('noop'), '.2f'):>6} {fmt(s.deploy_s):>9} {batches:>15} {fmt(r.get('deploy'), '.2f'):>6} "
              f"{fmt(s.mean_mib):>9}  {clean}")
    if not ratios:
        print(f"(growth ratios need a {BASE_HOSTS}-host row: add {BASE_HOSTS} to --hosts)")

    noop = judged["noop"]
    print(f"\ngoal: {noop['goal']}: ", end="")
    if noop["to"] is None:
        print(f"not measured (needs {BASE_HOSTS} and a larger size among --hosts)")
    else:
        scope = "" if noop["to"] == NOOP_GOAL_HOSTS else f" (measured to {noop['to']} hosts, not {NOOP_GOAL_HOSTS})"
        print(f"{BASE_HOSTS} -> {noop['to']} hosts {fmt(noop['ratio'], '.2f', 'x')}{scope}: "
              f"{'met' if noop['met'] else 'NOT met'}")
    deploy = judged["deploy"]
    print(f"goal: {deploy['goal']}: ", end="")
    if not deploy["rows"]:
        print(f"not measured (needs {BASE_HOSTS} and a larger size among --hosts)")
    else:
        print("met" if deploy["met"] else "NOT met")
        for hosts, row in deploy["rows"].items():
            print(f"    {BASE_HOSTS} -> {hosts} hosts: deploy {row['deploy_ratio']:.2f}x, batches "
                  f"{row['batches_ratio']:.2f}x, hosts {row['hosts_ratio']:.2f}x: follows the {row['follows']}")
    for s in sizes:
        if s.loadavg:
            print(f"controller load (1 min) at {s.hosts} hosts: "
                  f"{', '.join(f'{k} {v}' for k, v in s.loadavg.items())}")


def plot(path: Path, sizes: list[Size]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_mem) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(2, 1))
    for label, attr, colour in (("site.yml first run", "first_s", "tab:blue"),
                                ("site.yml no-op", "noop_s", "tab:green"),
                                ("rolling deploy", "deploy_s", "tab:orange")):
        points = [(s.hosts, getattr(s, attr)) for s in sizes if getattr(s, attr) is not None]
        if points:
            ax_s.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=label)
    for s in sizes:
        if s.deploy_s is not None:
            ax_s.annotate(f"{s.batches} batch{'' if s.batches == 1 else 'es'} of {s.batch_size}",
                          (s.hosts, s.deploy_s), textcoords="offset points", xytext=(4, 6), fontsize=8,
                          color="tab:orange")
    hosts = [s.hosts for s in sizes]
    for ax in (ax_s, ax_mem):
        ax.set_xlabel("hosts")
        ax.set_xticks(hosts)
        ax.grid(alpha=0.3)
    ax_s.set_ylabel("seconds (wall clock of ansible-playbook)")
    ax_s.set_ylim(bottom=0)
    ax_s.legend()
    ax_s.set_title(f"converge cost against hosts (deploy: {SERVICE} {VERSION}, ~{TARGET_BATCHES} batches)")
    memory = [(s.hosts, s.mean_mib) for s in sizes if s.mean_mib is not None]
    ax_mem.plot([m[0] for m in memory], [m[1] for m in memory], marker="o", color="tab:purple")
    ax_mem.set_ylabel("MiB per host (docker stats, after the no-op)")
    ax_mem.set_ylim(bottom=0)
    ax_mem.set_title("memory per lab host")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def host_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of host counts: {text!r}") from err
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"host counts must be 1 or more: {text!r}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=host_counts, default=[1, 3, 6, 10],
                        help="host counts, comma-separated, one lab each (default 1,3,6,10)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="hosts per batch of the rolling deploy (default: a third of the hosts, "
                             f"rounded up: {TARGET_BATCHES} batches at every size)")
    parser.add_argument("--keep", action="store_true", help="leave the labs up (scale-N) after measuring")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one playbook may take (default 1800)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be 1 or more")

    logs = args.out / "scale-logs"
    shutil.rmtree(logs, ignore_errors=True)  # the playbook logs of an earlier run
    start = time.monotonic()
    say("building the releases (tools/build_release.py --all-lab)")
    subprocess.run([sys.executable, "tools/build_release.py", "--all-lab"], cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL)

    sizes: list[Size] = []
    error = ""
    try:
        for hosts in args.hosts:
            batch_size = args.batch_size or default_batch_size(hosts)
            size = Size(hosts, f"scale-{hosts}", batch_size, math.ceil(hosts / batch_size))
            sizes.append(size)
            say(f"--- {hosts} hosts: lab {size.lab}, deploy in batches of {batch_size}")
            lab_command(size.lab, "down")  # a lab of this name is this bench's own, left by --keep
            try:
                measure(size, logs, args.timeout)
            finally:
                if not args.keep:
                    lab_down(size.lab)
    except (LabError, subprocess.SubprocessError) as err:
        error = str(err)
        print(f"\nFAILED, the bench stops here:\n{error}", file=sys.stderr, flush=True)

    ratios = growth(sizes)
    judged = goals(sizes, ratios)
    print_report(sizes, ratios, judged)
    problems = [p for s in sizes for p in s.problems]
    for problem in problems:
        print(f"PROBLEM: {problem}")
    report = {
        "service": SERVICE, "version": VERSION, "hosts": args.hosts, "batch_size": args.batch_size,
        "keep": args.keep, "seconds": round(time.monotonic() - start, 1), "cpus": os.cpu_count(),
        "sizes": [{**asdict(s), "noop_clean": s.noop_clean} for s in sizes],
        "growth_vs": BASE_HOSTS, "growth": ratios, "goals": judged, "problems": problems, "error": error,
    }
    png, figures = args.out / "scale.png", args.out / "scale.json"
    plot(png, sizes)
    figures.write_text(json.dumps(report, indent=2))
    print(f"\nplot: {png}\nfigures: {figures}\nlogs: {logs}")
    if args.keep:
        print(f"labs left up: {', '.join(s.lab for s in sizes)} (python3 -m lab --name NAME down)")
    if error:
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
