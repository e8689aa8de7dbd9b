"""fleet-slot status [SERVICE]: the deploy state and nginx's route of each service on this host.
fleet-slot state SERVICE: one service's whole deploy state, as JSON, read through the state module.
fleet-slot metrics [SERVICE] [--window N] [--json|--raw]: nginx's request figures of each service (the
last N seconds' rate, 5xx share and p99, the last 24 hours' availability); --raw: nginx's counts.
fleet-slot metrics --textfile DIR: write them for node_exporter's textfile collector (DIR/fleet_requests.prom)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import metrics, nginx, state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-slot", description=__doc__)
    parser.add_argument("--state-dir", default=state.STATE_DIR)
    parser.add_argument("--control-socket", default=nginx.CONTROL_SOCKET)
    parser.add_argument("command", choices=["status", "state", "metrics"])
    parser.add_argument("service", nargs="?")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument("--window", type=int, default=300, help="metrics: the recent window, 1 to 600 seconds")
    parser.add_argument("--raw", action="store_true", help="metrics: nginx's counts as it serves them (JSON)")
    parser.add_argument("--textfile", metavar="DIR", help="metrics: write DIR/" + metrics.TEXTFILE + " instead")
    args = parser.parse_args(argv)
    if args.command == "metrics":
        return _metrics(args)
    if args.command == "state":
        if not args.service:
            parser.error("state needs a SERVICE")
        try:
            found = state.load(args.service, args.state_dir)
        except state.StateError as err:
            print(f"fleet-slot: {err}", file=sys.stderr)
            return 2
        if found is None:
            print(f"fleet-slot: no deploy state for {args.service} in {args.state_dir}", file=sys.stderr)
            return 2
        print(json.dumps(found.to_dict(), indent=2))
        return 0
    try:
        routes: dict[str, int] | str = nginx.routes(args.control_socket)
    except nginx.NginxControlError as err:
        routes = str(err)
    states = state.load_all(args.state_dir)
    if args.service:
        states = {k: v for k, v in states.items() if k == args.service}
        if not states:
            print(f"fleet-slot: no deploy state for {args.service} in {args.state_dir}", file=sys.stderr)
            return 2
    rows: dict[str, dict[str, Any]] = {}
    for name, current in states.items():
        if isinstance(current, state.StateError):
            rows[name] = {"error": str(current)}
            continue
        routed = routes.get(name) if isinstance(routes, dict) else None
        rows[name] = {"live_port": current.live_port, "release": current.live_release, "nginx_routes": routed,
                      "agree": routed == current.live_port,
                      "pending": f"{current.pending.mode} {current.pending.deploy_id} after {current.pending.phase}"
                      if current.pending else None}
    if args.json:
        print(json.dumps({"services": rows, "nginx_error": routes if isinstance(routes, str) else None}, indent=2))
    else:
        if isinstance(routes, str):
            print(f"nginx: {routes}")
        for name, row in rows.items():
            if "error" in row:
                print(f"{name:20} {row['error']}")
                continue
            flag = "" if row["agree"] else f"  (nginx routes {row['nginx_routes']})"
            pending = f"  PENDING {row['pending']}" if row["pending"] else ""
            print(f"{name:20} slot {row['live_port']:<6} {row['release']}{flag}{pending}")
    return 0 if all(r.get("agree") and not r.get("pending") for r in rows.values()) else 1


def _metrics(args: argparse.Namespace) -> int:
    try:
        answer: dict[str, Any] | None = nginx.metrics(args.service, args.window, args.control_socket)
        error = ""
    except nginx.NginxControlError as err:
        answer, error = None, str(err)
    if args.textfile:
        # Without nginx's answer, only fleet_requests_up 0: stale counters would read as current.
        metrics.write_textfile(args.textfile, metrics.prometheus(answer))
    if answer is None:
        print(f"fleet-slot: {error}", file=sys.stderr)
        return 2
    if args.textfile:
        return 0
    if args.raw:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0
    figures = metrics.summaries(answer)
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True))
        return 0
    print(f"{'SERVICE':20} {'REQUESTS':>9} {'REQ/S':>8} {'5XX':>6} {'P99':>8}  AVAIL 24H  (last {args.window} s)")
    for name, row in sorted(figures.items()):
        share = "-" if row["error_share"] is None else f"{row['error_share']:.2%}"
        p99 = "-" if row["p99_ms"] is None else f"{'>' if row['p99_above_max'] else ''}{row['p99_ms']:.1f}ms"
        avail = "no traffic" if row["availability_24h"] is None else f"{row['availability_24h']:.4%}"
        print(f"{name:20} {row['requests']:>9} {row['rate']:>8.2f} {share:>6} {p99:>8}  {avail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
