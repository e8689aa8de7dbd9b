#!/usr/bin/python3
"""Ansible module: poll an HTTP endpoint on the managed host until it passes or time runs out."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_http_probe
short_description: Health-gate an HTTP endpoint with fast polling and a bounded timeout
description:
  - Polls O(url) from the managed host every O(interval) seconds until the response has status
    O(status), contains O(body) and carries every header in O(headers), or O(timeout) seconds pass.
  - Fails with what it saw last (status, body excerpt, error), so a failed gate says why.
  - Reads only; it never changes the host, so it runs in check mode too.
options:
  url: {type: str, required: true, description: URL to poll.}
  status: {type: int, default: 200, description: Expected HTTP status.}
  body: {type: str, default: "", description: Text the body must contain.}
  headers: {type: dict, default: {}, description: Response headers that must have these values.}
  host_header: {type: str, description: Host header to send (for routing through nginx).}
  timeout: {type: float, default: 60, description: Seconds before giving up.}
  interval: {type: float, default: 0.5, description: Seconds between attempts.}
  start_grace: {type: float, default: 0, description: Seconds to wait before the first attempt.}
  request_timeout: {type: float, default: 5, description: Seconds one request may take.}
"""

EXAMPLES = r"""
- name: Health-gate the idle slot
  fleet_http_probe:
    url: http://127.0.0.1:9090/health
    body: '"status": "ok"'
    timeout: 30
"""

RETURN = r"""
passed: {type: bool, description: Whether the endpoint passed before the timeout.}
attempts: {type: int, description: Requests made.}
elapsed: {type: float, description: Seconds from the first attempt to the verdict.}
last_status: {type: int, description: Status of the last response (0 when none came).}
last_body: {type: str, description: First 300 characters of the last body.}
last_error: {type: str, description: The last connection or protocol error, if any.}
"""

import http.client
import time
import urllib.parse

from ansible.module_utils.basic import AnsibleModule


def attempt(url: str, host_header: str | None, request_timeout: float) -> tuple[int, str, dict[str, str], str]:
    """One GET: (status, body excerpt, headers, error)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=request_timeout)
    try:
        headers = {"Host": host_header} if host_header else {}
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
        response = conn.getresponse()
        body = response.read(65536).decode("utf-8", "replace")
        return response.status, body, {k.lower(): v for k, v in response.getheaders()}, ""
    except (OSError, http.client.HTTPException) as err:
        return 0, "", {}, f"{type(err).__name__}: {err}"
    finally:
        conn.close()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "status": {"type": "int", "default": 200},
            "body": {"type": "str", "default": ""},
            "headers": {"type": "dict", "default": {}},
            "host_header": {"type": "str"},
            "timeout": {"type": "float", "default": 60.0},
            "interval": {"type": "float", "default": 0.5},
            "start_grace": {"type": "float", "default": 0.0},
            "request_timeout": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    wanted_headers = {k.lower(): str(v) for k, v in p["headers"].items()}
    time.sleep(p["start_grace"])
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        status, body, headers, error = attempt(p["url"], p["host_header"], p["request_timeout"])
        mismatched = {k: headers.get(k, "") for k, v in wanted_headers.items() if headers.get(k) != v}
        passed = status == p["status"] and p["body"] in body and not mismatched
        elapsed = round(time.monotonic() - started, 3)
        if passed or elapsed + p["interval"] > p["timeout"]:
            break
        time.sleep(p["interval"])
    result = {
        "changed": False, "passed": passed, "attempts": attempts, "elapsed": elapsed,
        "last_status": status, "last_body": body[:300], "last_error": error,
        "last_headers": {k: headers.get(k, "") for k in wanted_headers},
    }
    if passed:
        module.exit_json(**result)
    saw = f"status {status}" if status else "no response"
    if status and mismatched:
        saw += f", headers {mismatched}"
    detail = f"; body: {body[:200]!r}" if status else ""
    module.fail_json(
        msg=(f"GET {p['url']}{' (Host: ' + p['host_header'] + ')' if p['host_header'] else ''} did not pass "
             f"in {p['timeout']:g}s ({attempts} attempts): wanted status {p['status']}"
             f"{' and body containing ' + repr(p['body']) if p['body'] else ''}; saw {saw}{detail}"
             f"{'; last error: ' + error if error else ''}"),
        **result,
    )


if __name__ == "__main__":
    main()
