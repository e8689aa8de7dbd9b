"""The deploy's webhook (library/fleet_notify.py): what is posted, and that a failed post is told
without the URL's secret part and never raises."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.webhook_receiver import Webhook

ROOT = Path(__file__).resolve().parents[2]


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_notify", ROOT / "library" / "fleet_notify.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


notify = load_module()


@pytest.fixture
def receiver() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_a_post_delivers_the_json_body(receiver: Webhook) -> None:
    assert notify.post(receiver.url, {"event": "started", "service": "main-api"}, 5) == ""
    assert receiver.events == [{"event": "started", "service": "main-api"}]


def test_a_refusing_or_failing_webhook_is_an_error_string_without_the_secret() -> None:
    refusing = Webhook(refuse_first=(500,))
    try:
        error = notify.post(refusing.url, {"event": "host"}, 5)
    finally:
        refusing.close()
    assert error.endswith("answered HTTP 500") and "secret-key" not in error
    refused = notify.post("http://127.0.0.1:9/hook/secret-key", {"event": "host"}, 2)
    assert refused.startswith("posting to http://127.0.0.1:9 failed: ConnectionRefusedError")
    assert "secret" not in refused


def test_the_text_line_says_what_happened() -> None:
    base = {"service": "main-api", "mode": "deploy", "release": "1.2.0", "deploy_id": "main-api-1", "who": "al@ci"}
    assert notify.text_of("started", base) == "fleet: deploy of main-api 1.2.0 started by al@ci (main-api-1)"
    assert notify.text_of("host", {**base, "host": "web-1", "result": "ok", "message": "live"}) == (
        "fleet: deploy of main-api 1.2.0 on web-1: ok")
    assert notify.text_of("host", {**base, "host": "web-1", "result": "failed", "message": "smoke check 1 failed"}) \
        == "fleet: deploy of main-api 1.2.0 on web-1: failed: smoke check 1 failed"
    hosts = [{"host": "web-1", "result": "ok"}, {"host": "web-2", "result": "failed"}]
    assert notify.text_of("failed", {**base, "message": "web-2: boom", "hosts": hosts}) == (
        "fleet: deploy of main-api 1.2.0 FAILED: web-2: boom [web-1 ok, web-2 failed]")
    assert notify.text_of("finished", {**base, "hosts": hosts[:1]}) == (
        "fleet: deploy of main-api 1.2.0 finished [web-1 ok]")


def test_the_origin_keeps_only_scheme_and_host() -> None:
    assert notify.origin("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com"
    assert notify.origin("http://127.0.0.1:8123/x?token=1") == "http://127.0.0.1:8123"
