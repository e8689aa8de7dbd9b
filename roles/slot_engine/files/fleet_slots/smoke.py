"""Smoke checks of a move (the catalog's `deploy.smoke`): a few requests the new release must
answer as expected, sent to the new slot directly before the switch and through nginx after it.

A failure before the switch aborts the move as a failed health gate does (traffic never moved);
after it, as a failed verify does (traffic switched back). The message says which check failed,
where it was sent and what came back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import host

TIMEOUT = 5.0  # seconds one smoke request may take


@dataclass(frozen=True)
class Check:
    """One request and the answer it wants: this status, and `body` somewhere in the body ('' for any)."""

    method: str
    path: str
    status: int = 200
    body: str = ""

    def wanted(self) -> str:
        return f"status {self.status}" + (f" and a body containing {self.body!r}" if self.body else "")

    def passes(self, probe: host.Probe) -> bool:
        return probe.status == self.status and self.body in probe.body


def checks_of(entries: Iterable[Mapping[str, Any]] | None) -> tuple[Check, ...]:
    """The validated catalog's `deploy.smoke` entries as checks."""
    return tuple(Check(str(e.get("method") or "GET").upper(), str(e["path"]), int(e.get("status") or 200),
                       str(e.get("body") or "")) for e in entries or ())


Probe = Callable[[str, "str | None", float, str], host.Probe]


def first_failure(checks: Iterable[Check], base_url: str, where: str, host_header: str | None = None,
                  timeout: float = TIMEOUT, probe: Probe | None = None) -> str:
    """Send each check to `base_url` in turn; '' when all pass, else what the first failing one saw."""
    send = probe or (lambda url, header, seconds, method: host.get(url, header, seconds, method))
    listed = list(checks)
    for number, check in enumerate(listed, 1):
        url = base_url + check.path
        answer = send(url, host_header, timeout, check.method)
        if not check.passes(answer):
            sent = f"{check.method} {url}" + (f" (Host: {host_header})" if host_header else "")
            return (f"smoke check {number} of {len(listed)} failed {where}: {sent} wanted {check.wanted()}; "
                    f"saw {answer.describe()}")
    return ""


__all__ = ["TIMEOUT", "Check", "checks_of", "first_failure"]
