"""Callback plugin: print the hot-deploy summary a person can read, whatever ended the run.

hot_deploy.yml records each host's plan and result with set_stats (key fleet_deploy_summary), so
the summary survives a stopped rollout and an unreachable host; this plugin prints it at the end.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: fleet_deploy_summary
type: aggregate
short_description: Per-host summary of a fleet hot deploy or rollback
description:
  - At the end of a run that recorded C(fleet_deploy_summary) with set_stats, prints one line per
    host - from release and slot, to release and slot, seconds taken, result (the canary steps it
    went through, and what the watch after the switch saw) - and which hosts
    now run the new release and which still run the old one.
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
"""

RESULT_WORDS = {
    "ok": "deployed",
    "failed": "FAILED",
    "unchanged": "already live",
    "planned": "not started",
    "unreachable": "unreachable (stopped there; check the host)",
    "reverted": "put back (on_failure=revert_all)",
    "revert failed": "NOT PUT BACK (on_failure=revert_all failed; check the host)",
    "canary back": "canary taken back (a step failed on another host)",
}
# Results that leave the host on the release the run moved to.
ON_NEW_RELEASE = ("ok", "revert failed")
MODE_WORDS = {"deploy": "deployed", "rollback": "rolled back", "restart": "restarted"}


def summary_lines(summary: dict[str, dict[str, Any]], unreachable: set[str]) -> list[str]:
    """The table and the closing verdict, from the recorded entries."""
    lines = []
    width = max((len(h) for h in summary), default=4)
    moving = [e for e in summary.values() if e.get("action", "none") != "none"]
    target = (moving or list(summary.values()) or [{}])[0].get("to_release", "?")
    on_target: list[str] = []
    behind: list[str] = []
    left_alone: list[str] = []
    for host in sorted(summary):
        entry = summary[host]
        result = entry.get("result", "planned")
        if host in unreachable and result == "planned":
            result = "unreachable"
        word = RESULT_WORDS.get(result, result.upper())
        if result == "ok":
            word = MODE_WORDS.get(entry.get("mode", "deploy"), word)
        elif result == "unchanged" and entry.get("note"):
            word = entry["note"]
        final = entry.get("to_release") if result in ON_NEW_RELEASE else entry.get("from_release")
        if final == target:
            on_target.append(host)
        elif result == "unchanged":
            left_alone.append(f"{host} ({final})")
        else:
            behind.append(host)
        seconds = f"{entry['seconds']:.1f}s" if isinstance(entry.get("seconds"), (int, float)) else "-"
        move = f"{entry.get('from_release', '?')} (:{entry.get('from_slot', '?')})"
        if result != "unchanged":
            move += f" -> {entry.get('to_release', '?')} (:{entry.get('to_slot', '?')})"
        line = f"{host:<{width}}  {move:<30}  {seconds:>7}  {word}"
        watched = entry.get("watch") or {}
        if result == "ok" and entry.get("canary"):
            line += " after a canary of " + ", ".join(f"{w}%" for w in entry["canary"])
        if result == "ok" and watched:
            p99 = f", p99 {watched['p99_ms']:.0f} ms" if isinstance(watched.get("p99_ms"), (int, float)) else ""
            line += (f" (watched {watched.get('seconds', 0):.1f}s: {watched.get('requests', 0)} requests, "
                     f"{watched.get('errors', 0)} 5xx{p99})")
        if result in ("failed", "revert failed"):
            line += f": {entry.get('message', '')}"
        lines.append(line)
    lines.append(f"on {target}: {', '.join(on_target) or 'none'}")
    lines.append(f"still on the previous release: {', '.join(behind) or 'none'}")
    if left_alone:
        lines.append(f"left alone (not on the release this run moves from): {', '.join(left_alone)}")
    return lines


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_deploy_summary"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_stats(self, stats: Any) -> None:
        summary = stats.custom.get("_run", {}).get("fleet_deploy_summary")
        if not summary:
            return
        first = next(iter(summary.values()))
        self._display.banner(f"FLEET {first.get('mode', 'deploy').upper()} SUMMARY: {first.get('service', '?')}")
        for line in summary_lines(summary, set(stats.dark)):
            self._display.display(line)
