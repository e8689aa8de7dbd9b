#!/usr/bin/python3
"""Ansible module: post one event of a deploy to a webhook; a failed post is a warning, never a failure."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_notify
short_description: Post a deploy's event (started, a host's result, finished, failed) to a webhook
description:
  - Posts O(payload) with C(event) set to O(event) and a one-line C(text) (what Slack and similar
    incoming webhooks show) as JSON to O(webhook). hot_deploy.yml runs it on the controller
    (delegate_to localhost), so it behaves the same from the command line, ansible-runner and AWX.
  - Never fails on the post: a refused connection, a timeout or an answer other than 2xx is
    returned as RV(error) and a warning, so a notification never masks the deploy's result. The
    URL is never quoted back (a webhook's path is often its key), only its scheme and host.
  - An empty O(webhook) posts nothing (RV(posted=false), no warning).
options:
  webhook: {type: str, required: true, no_log: true, description: "The http(s) URL; empty: nothing is posted."}
  event: {type: str, required: true, choices: [started, host, finished, failed], description: Which event.}
  payload: {type: dict, default: {}, description: "The event's fields: service, mode, release, deploy_id, who,
      host, result, message, and for finished and failed, hosts (one entry per host)."}
  timeout: {type: float, default: 5, description: Seconds the post may take.}
"""

EXAMPLES = r"""
- name: Tell the webhook the deploy started
  fleet_notify:
    webhook: "{{ __deploy_webhook }}"
    event: started
    payload: {service: main-api, release: 1.2.0, deploy_id: "{{ __deploy_id }}", who: alice@laptop}
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
posted: {type: bool, description: Whether the webhook answered 2xx.}
error: {type: str, description: "Why the post failed ('' when it did not), without the URL's path."}
payload: {type: dict, description: What was posted.}
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def text_of(event: str, payload: dict[str, Any]) -> str:
    """One line a person reads in a chat channel."""
    what = f"{payload.get('mode') or 'deploy'} of {payload.get('service', '?')} {payload.get('release', '')}".rstrip()
    who = f" by {payload['who']}" if payload.get("who") else ""
    if event == "started":
        return f"fleet: {what} started{who} ({payload.get('deploy_id', '')})"
    if event == "host":
        message = f": {payload['message']}" if payload.get("result") != "ok" and payload.get("message") else ""
        return f"fleet: {what} on {payload.get('host', '?')}: {payload.get('result', '?')}{message}"
    hosts = payload.get("hosts") or []
    tally = ", ".join(f"{h.get('host')} {h.get('result')}" for h in hosts)
    word = "finished" if event == "finished" else "FAILED"
    message = f": {payload['message']}" if event == "failed" and payload.get("message") else ""
    return f"fleet: {what} {word}{message}" + (f" [{tally}]" if tally else "")


def origin(url: str) -> str:
    """The URL's scheme and host only: the rest may be a secret."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def post(url: str, body: dict[str, Any], timeout: float) -> str:
    """POST `body` as JSON; '' on a 2xx answer, else why not (the URL's path left out)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "fleet-deploy"})
    try:  # an http(s) URL: the catalog and validate.yml check it
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"posting to {origin(url)} failed: {type(reason).__name__}: {reason}".replace(url, origin(url))
    return "" if 200 <= status < 300 else f"{origin(url)} answered HTTP {status}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "webhook": {"type": "str", "required": True, "no_log": True},
            "event": {"type": "str", "required": True, "choices": ["started", "host", "finished", "failed"]},
            "payload": {"type": "dict", "default": {}},
            "timeout": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    body = {**p["payload"], "event": p["event"]}
    body["text"] = text_of(p["event"], body)
    if not p["webhook"] or module.check_mode:
        module.exit_json(changed=False, posted=False, error="", payload=body)
    error = post(p["webhook"], body, p["timeout"])
    if error:
        module.warn(f"the {p['event']} notification was not delivered ({error}); the run's result "
                    "does not depend on it")
    module.exit_json(changed=False, posted=not error, error=error, payload=body)


if __name__ == "__main__":
    main()
