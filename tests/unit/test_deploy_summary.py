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


def test_a_canary_shows_its_steps_and_a_host_it_was_taken_back_from() -> None:
    watched = {"seconds": 4.0, "requests": 200, "errors": 0, "breach": ""}
    lines = summary_lines({"h1": entry("ok", canary=[5, 25], watch=watched),
                           "h2": entry("failed", message="canary 25%: watch: breached"),
                           "h3": entry("canary back")}, unreachable=set())
    assert lines[0].endswith("deployed after a canary of 5%, 25% (watched 4.0s: 200 requests, 0 5xx)")
    assert "FAILED: canary 25%: watch: breached" in lines[1]
    assert lines[2].endswith("canary taken back (a step failed on another host)")
    assert lines[-1] == "still on the previous release: h2, h3"
