"""fleet_slots.maintenance and the state's maintenance record: maintenance.yml's call on a host.

nginx's side (the control socket) is replaced here by a table with the same three calls; the real
nginx, its Lua and the control socket are tested in tests/integration/test_maintenance_lab.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fleet_slots import lock, maintenance, nginx, state


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """nginx's maintenance table: service -> Retry-After, through the same calls the engine makes."""
    applied: dict[str, int] = {}
    monkeypatch.setattr(nginx, "maintenance", lambda control_socket="": dict(applied))
    monkeypatch.setattr(nginx, "set_maintenance",
                        lambda service, seconds, control_socket="": applied.__setitem__(service, seconds))
    monkeypatch.setattr(nginx, "clear_maintenance", lambda service, control_socket="": applied.pop(service))
    return applied


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    state_dir = str(tmp_path / "state")
    state.save(state.initial("main-api", 8010, "1.0.0"), state_dir)
    return {"state_dir": state_dir, "lock_dir": str(tmp_path / "locks"), "audit_log": str(tmp_path / "deploy.log")}


def switch(dirs: dict[str, str], on: bool, **kwargs: Any) -> maintenance.Switch:
    args: dict[str, Any] = {"retry_after": 600, "reason": "", "owner": "alice@laptop", "deploy_id": "m-1",
                            "hostname": "web-1", **dirs, **kwargs}
    return maintenance.switch("main-api", on, **args)


def audit_lines(dirs: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(dirs["audit_log"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------- the state's record

def test_the_record_survives_a_save_and_load(tmp_path: Path) -> None:
    current = state.initial("main-api", 8010, "1.0.0")
    current.start_maintenance("alice@laptop", "db migration", 120)
    state.save(current, str(tmp_path))
    loaded = state.load("main-api", str(tmp_path))
    assert loaded is not None and loaded.maintenance == current.maintenance
    assert loaded.maintenance["by"] == "alice@laptop" and loaded.maintenance["retry_after"] == 120
    # nginx's Lua reads these two fields of the file, at every start and reload.
    data = json.loads(state.path_of("main-api", str(tmp_path)).read_text())
    assert data["live_port"] == 8010 and data["maintenance"]["retry_after"] == 120


def test_a_state_written_before_maintenance_existed_reads_as_off() -> None:
    data = state.initial("main-api", 8010, "1.0.0").to_dict()
    del data["maintenance"]
    assert state.State.from_dict(data).maintenance is None


def test_turning_it_on_again_keeps_since_and_by() -> None:
    current = state.initial("main-api", 8010, "1.0.0")
    current.start_maintenance("alice@laptop", "", 600)
    since = current.maintenance["since"]  # type: ignore[index]
    current.start_maintenance("bob@ci", "longer", 1200)
    assert current.maintenance == {"since": since, "by": "alice@laptop", "reason": "longer", "retry_after": 1200}
    current.end_maintenance()
    assert current.maintenance is None


@pytest.mark.parametrize("bad", [{"retry_after": 0}, {"retry_after": "600"}, {"since": "x"}, "on", [600]])
def test_a_broken_record_is_a_state_error(bad: Any) -> None:
    data = {**state.initial("main-api", 8010, "1.0.0").to_dict(), "maintenance": bad}
    with pytest.raises(state.StateError, match="maintenance must be null or an object with retry_after"):
        state.State.from_dict(data, "main-api.json")


def test_retry_after_must_be_positive() -> None:
    with pytest.raises(state.StateError, match="at least 1 second"):
        state.initial("main-api", 8010, "1.0.0").start_maintenance("a", "", 0)


# --------------------------------------------------------------------------- the switch

def test_on_records_it_sets_nginx_and_audits(dirs: dict[str, str], table: dict[str, int]) -> None:
    done = switch(dirs, True, retry_after=300, reason="db migration")
    assert done.result == "changed", done.message
    assert table == {"main-api": 300}
    current = state.load("main-api", dirs["state_dir"])
    assert current is not None and current.maintenance is not None
    assert (current.maintenance["by"], current.maintenance["reason"]) == ("alice@laptop", "db migration")
    [line] = audit_lines(dirs)
    assert (line["mode"], line["result"], line["who"], line["host"]) == ("maintenance-on", "ok", "alice@laptop",
                                                                         "web-1")
    assert (line["reason"], line["retry_after"], line["to_release"], line["to_slot"]) == ("db migration", 300,
                                                                                         "1.0.0", 8010)
    assert lock.read("main-api", dirs["lock_dir"]) is None  # released


def test_off_clears_both_and_audits(dirs: dict[str, str], table: dict[str, int]) -> None:
    switch(dirs, True)
    done = switch(dirs, False, reason="done")
    assert done.result == "changed" and table == {}
    current = state.load("main-api", dirs["state_dir"])
    assert current is not None and current.maintenance is None
    assert [(line["mode"], line["reason"]) for line in audit_lines(dirs)] == [("maintenance-on", ""),
                                                                              ("maintenance-off", "done")]


def test_a_switch_to_where_it_is_changes_nothing_and_writes_no_line(dirs: dict[str, str],
                                                                   table: dict[str, int]) -> None:
    assert switch(dirs, False).result == "unchanged"
    switch(dirs, True)
    again = switch(dirs, True, owner="bob@ci")
    assert again.result == "unchanged" and "already on" in again.message
    assert again.maintenance is not None and again.maintenance["by"] == "alice@laptop"
    assert len(audit_lines(dirs)) == 1


def test_nginx_is_put_back_in_line_with_the_state(dirs: dict[str, str], table: dict[str, int]) -> None:
    """As after an nginx that lost its table, or a state restored from a backup."""
    switch(dirs, True, retry_after=60)
    table.clear()
    done = switch(dirs, True, retry_after=60)
    assert done.result == "changed" and table == {"main-api": 60}
    assert done.changes == ["answer main-api with 503 and its maintenance page in nginx (Retry-After 60s)"]
    table["main-api"] = 60
    switch(dirs, False)
    table["main-api"] = 5  # nginx applies a maintenance the state does not record
    assert switch(dirs, False).result == "changed" and table == {}


def test_check_mode_says_what_would_change_and_changes_nothing(dirs: dict[str, str], table: dict[str, int]) -> None:
    done = switch(dirs, True, check=True)
    assert done.result == "changed" and done.message.startswith("would turn maintenance of main-api on")
    assert len(done.changes) == 2
    assert table == {} and audit_lines(dirs) == []
    current = state.load("main-api", dirs["state_dir"])
    assert current is not None and current.maintenance is None
    assert switch(dirs, False, check=True).result == "unchanged"


def test_a_running_deploy_is_waited_for_then_named(dirs: dict[str, str], table: dict[str, int]) -> None:
    lock.acquire("main-api", "deploy-7", "carol@laptop", 600, lock_dir=dirs["lock_dir"])
    done = switch(dirs, True, lock_wait=0.1)
    assert done.result == "failed" and "carol@laptop" in done.message and "deploy-7" in done.message
    assert table == {} and audit_lines(dirs) == []
    assert lock.read("main-api", dirs["lock_dir"])["deploy_id"] == "deploy-7"  # type: ignore[index]


def test_a_service_without_state_is_refused(dirs: dict[str, str], table: dict[str, int]) -> None:
    done = maintenance.switch("other", True, retry_after=600, reason="", owner="a", deploy_id="m-2", **dirs)
    assert done.result == "failed" and "other has no deploy state" in done.message and "site.yml" in done.message
    assert table == {}


def test_an_nginx_that_does_not_answer_fails_the_switch(dirs: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def down(control_socket: str = "") -> dict[str, int]:
        raise nginx.NginxControlError("nginx control socket /run/x.sock: refused")

    monkeypatch.setattr(nginx, "maintenance", down)
    done = switch(dirs, True)
    assert done.result == "failed" and "refused" in done.message
    current = state.load("main-api", dirs["state_dir"])
    assert current is not None and current.maintenance is None


def test_a_deploy_keeps_the_record(dirs: dict[str, str], table: dict[str, int]) -> None:
    """The engine's transitions load and save the whole state: a move leaves maintenance as it was."""
    switch(dirs, True)
    current = state.load("main-api", dirs["state_dir"])
    assert current is not None
    current.begin(state.Move("d-1", "deploy", 8010, 9010, "1.0.0", "1.1.0"))
    current.commit()
    current.finish()
    state.save(current, dirs["state_dir"])
    after = state.load("main-api", dirs["state_dir"])
    assert after is not None and after.live_port == 9010 and after.maintenance is not None


def test_an_nginx_without_maintenance_mode_says_to_run_site_yml(dirs: dict[str, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def old(control_socket: str = "") -> dict[str, int]:
        raise nginx.NginxControlError('nginx control GET /maintenance: 404 {"error": "unknown path /maintenance"}')

    monkeypatch.setattr(nginx, "maintenance", old)
    done = switch(dirs, True, check=True)
    assert done.result == "failed" and "run site.yml (--tags nginx) on it first" in done.message
