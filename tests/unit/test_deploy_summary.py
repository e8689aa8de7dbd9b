"""The deploy summary the callback prints: per host, and which release each host ends on."""

from __future__ import annotations

from callback_plugins.fleet_deploy_summary import summary_lines


def entry(result: str, **extra: object) -> dict[str, object]:
    return {"action": "switch", "mode": "deploy", "from_release": "1.0.0", "to_release": "1.1.0",
            "from_slot": 8010, "to_slot": 9010, "seconds": 3.2, "result": result, **extra}


def test_hosts_put_back_by_revert_all_count_as_on_the_previous_release() -> None:
    lines = summary_lines({"h1": entry("reverted"), "h2": entry("revert failed", message="health gate"),
                           "h3": entry("failed", message="preflight: port held"), "h4": entry("planned")},
                          unreachable=set())
    assert "put back (on_failure=revert_all)" in lines[0]
    assert "NOT PUT BACK" in lines[1] and lines[1].endswith(": health gate")
    assert "FAILED: preflight: port held" in lines[2]
    assert "not started" in lines[3]
    assert lines[-2:] == ["on 1.1.0: h2", "still on the previous release: h1, h3, h4"]


def test_a_deployed_host_is_on_the_new_release() -> None:
    assert summary_lines({"h1": entry("ok")}, unreachable=set())[-2:] == ["on 1.1.0: h1",
                                                                          "still on the previous release: none"]


def test_a_deployed_host_says_what_its_watch_saw() -> None:
    watched = {"seconds": 30.04, "requests": 612, "errors": 0, "p99_ms": 41.5, "breach": ""}
    lines = summary_lines({"h1": entry("ok", watch=watched), "h2": entry("ok", watch={})}, unreachable=set())
    assert lines[0].endswith("deployed (watched 30.0s: 612 requests, 0 5xx, p99 42 ms)")
    assert lines[1].endswith("deployed")
