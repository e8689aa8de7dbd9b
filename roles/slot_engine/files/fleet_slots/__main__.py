"""fleet-slot status [SERVICE]: the deploy state and nginx's route of each service on this host.
fleet-slot state SERVICE: one service's whole deploy state, as JSON, read through the state module."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import nginx, state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-slot", description=__doc__)
    parser.add_argument("--state-dir", default=state.STATE_DIR)
    parser.add_argument("--control-socket", default=nginx.CONTROL_SOCKET)
    parser.add_argument("command", choices=["status", "state"])
    parser.add_argument("service", nargs="?")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
