"""What is told and kept: the state file, the run lock, redaction of secrets, the webhook, and the
transitions (new, worse, recovered after clean runs) that decide what is sent."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .common import Finding, iso
from .config import OK, RANK, STATE_VERSION, VERSION, Config, WebhookSettings

# Credentials in any URL: scheme://user:password@, the password running to the last "@" before a
# space or quote. The same rule as the backup job's (roles/backup/files/fleet_backup.py); each
# script is installed on its own, so each carries it.
_URL_CREDENTIALS = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^\s\"'<>]*@")

# --------------------------------------------------------------------------- state, files

def load_state(path: str) -> dict[str, Any]:
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else {}


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Write via a temporary file in the same directory, fsync, rename: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: node_exporter skips it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def append_line(path: str, line: str) -> None:
    if path == "-":
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(state_file: str, wait_s: float) -> Iterator[bool]:
    """An exclusive lock beside the state file; yields False if another run holds it past `wait_s`."""
    path = Path(state_file).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        yield True
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- webhook

def redact_credentials(text: str) -> str:
    """Replace the password of every URL in `text` with ***."""
    return _URL_CREDENTIALS.sub(r"\g<prefix>:***@", text)


@functools.cache
def _webhook_secrets(url: str) -> tuple[str, ...]:
    """The parts of the webhook URL that grant access (all of it, its path, query and password),
    as written, percent-decoded (urllib's errors quote the decoded host) and JSON-escaped (the log
    and state are JSON), longest first so that no part is left half-replaced."""
    parts = urllib.parse.urlsplit(url)
    forms: set[str] = set()
    for part in (url, parts.path, parts.query, parts.password or ""):
        for form in (part, urllib.parse.unquote(part)):
            forms |= {form, json.dumps(form)[1:-1]}
    return tuple(sorted((f for f in forms if len(f) > 1), key=len, reverse=True))


def redact(text: str, url: str) -> str:
    """Remove the webhook URL `url` (its secret parts) and every URL's password from a message."""
    for secret in _webhook_secrets(url) if url else ():
        text = text.replace(secret, "<webhook>")
    return redact_credentials(text)


def post_webhook(settings: WebhookSettings, payload: dict[str, Any],
                 sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str, int]:
    """POST `payload` as JSON; retry network errors, 5xx, 408 and 429 within the total time.

    Returns (delivered, last error with the URL scrubbed, attempts).
    """
    deadline = time.monotonic() + settings.total_timeout_s
    data = json.dumps(payload).encode("utf-8")
    opener = urllib.request.build_opener(_NoRedirect)
    attempts, error, backoff = 0, "", 1.0
    while attempts <= settings.retries:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = error or "no time left"
            break
        attempts += 1
        request = urllib.request.Request(settings.url, data=data, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"fleet-health/{VERSION}"})
        try:
            with opener.open(request, timeout=min(settings.timeout_s, remaining)) as response:
                response.read(4096)
                return True, "", attempts
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # the receiver refuses this request: retrying will not help
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            error = str(reason) or type(reason).__name__
        pause = min(backoff, deadline - time.monotonic())
        if attempts > settings.retries or pause <= 0:
            break
        sleep(pause)
        backoff *= 2
    return False, redact(error, settings.url), attempts


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirected webhook is a misconfiguration: report the 3xx


def compose_messages(host: str, status: str, new: list[dict[str, Any]], events: list[dict[str, Any]],
                     recovered: list[dict[str, Any]], still_open: int) -> list[tuple[str, dict[str, Any]]]:
    """Slack-compatible payloads: one ALERT (new or worse problems, events), one RECOVERY."""
    messages = []
    if new or events:
        count = len(new) + len(events)
        lines = [f"ALERT {host}: {status.upper()} ({count} new problem{'s' if count != 1 else ''})"]
        lines += [f"- {p['severity'].upper()} {p['key']}: {p['message']}" for p in new + events]
        others = still_open - len(new)
        if others > 0:
            lines.append(f"{others} earlier problem{'s' if others != 1 else ''} still open.")
        messages.append(("alert", {"text": "\n".join(lines)}))
    if recovered:
        count = len(recovered)
        lines = [f"RECOVERY {host}: now {status.upper()} ({count} problem{'s' if count != 1 else ''} cleared)"]
        lines += [f"- {r['key']}: ok again (was {r['severity'].upper()} since {r.get('since', '?')}: "
                  f"{r['message']})" for r in recovered]
        messages.append(("recovery", {"text": "\n".join(lines)}))
    return messages


def transitions(findings: list[Finding], notified: dict[str, Any], now: dt.datetime, clean_runs: dict[str, Any],
                recover_after: int
                ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Open problems now, those new or worse than what was notified, the notified ones clean for
    `recover_after` runs in a row (recovered), and the clean-run count of every notified one not open now."""
    current: dict[str, Any] = {}
    for f in findings:
        if f.event or f.severity == OK:
            continue
        known = notified.get(f.key, {})
        since = known.get("since", iso(now)) if known.get("severity") == f.severity else iso(now)
        current[f.key] = {"key": f.key, "severity": f.severity, "message": f.message, "since": since}
    new = [p for k, p in current.items()
           if k not in notified or RANK[p["severity"]] > RANK.get(notified[k].get("severity", OK), 0)]
    clean = {k: int(clean_runs.get(k, 0)) + 1 for k in notified if k not in current}
    recovered = [{**notified[k], "key": k} for k, runs in clean.items() if runs >= recover_after]
    return current, new, recovered, clean


def notify(config: Config, host: str, status: str, findings: list[Finding], state: dict[str, Any],
           now: dt.datetime, read_only: bool) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
    """Send what changed; returns the webhook report, the state to keep, new keys and cleared keys.

    `notified` in the state is what the receiver was last told is open. Only a delivered message
    moves it, so a message that could not be delivered is sent again by the next run; events
    (XID lines, restarts) that could not be delivered wait in `pending_events`.
    """
    notified = state.get("notified") if isinstance(state.get("notified"), dict) else {}
    assert isinstance(notified, dict)
    clean_runs = state.get("clean_runs") if isinstance(state.get("clean_runs"), dict) else {}
    assert isinstance(clean_runs, dict)
    current, new, recovered, clean = transitions(findings, notified, now, clean_runs, config.webhook.recover_after)
    gone = {r["key"] for r in recovered}
    # Cleared, but not for enough runs yet: still open as far as anyone was told.
    holding = {k: p for k, p in notified.items() if k in clean and k not in gone}
    events = [f.as_dict() for f in findings if f.event and f.severity != OK]
    pending = [e for e in state.get("pending_events", []) if isinstance(e, dict)]
    report: dict[str, Any] = {"configured": bool(config.webhook.url), "sent": [], "failed": []}
    keep: dict[str, Any] = {"notified": notified, "pending_events": pending, "clean_runs": clean_runs}
    if read_only:
        report["skipped"] = "read-only run (--no-webhook)"
    elif not config.webhook.url:
        keep = {"notified": {**holding, **current}, "pending_events": []}  # nobody to tell: all counts as told
    else:
        told = dict(notified)
        waiting = (pending + events)[-50:]
        for kind, payload in compose_messages(host, status, new, waiting, recovered, len(current)):
            # Messages of a state written before redaction existed may still quote a secret.
            payload = {"text": redact(payload["text"], config.webhook.url)}
            delivered, error, attempts = post_webhook(config.webhook, payload)
            (report["sent"] if delivered else report["failed"]).append(
                {"kind": kind, "attempts": attempts, **({"error": error} if error else {})})
            if delivered and kind == "alert":
                told.update({p["key"]: p for p in new})
                waiting = []
            elif delivered:
                for r in recovered:
                    told.pop(r["key"], None)
        # A problem that eased (critical to warn) is recorded as told, so a relapse alerts again.
        for key, was in list(told.items()):
            now_open = current.get(key)
            if now_open is not None and RANK[now_open["severity"]] <= RANK[was["severity"]]:
                told[key] = now_open
        keep = {"notified": told, "pending_events": waiting}
    if not read_only:
        keep["clean_runs"] = {k: runs for k, runs in clean.items() if k in keep["notified"]}
    return report, keep, [p["key"] for p in new] + [e["key"] for e in events], [r["key"] for r in recovered]


