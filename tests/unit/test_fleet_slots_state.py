"""The deploy state module (fleet_slots.state) and the deploy lock (fleet_slots.lock): schema,
every transition of a move, atomic saves, and the lock's refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fleet_slots import lock, state
from fleet_slots.state import Move, State, StateError


def fresh() -> State:
    return state.initial("main-api", 8010, "1.0.0")


def move(current: State, to_release: str, mode: str = "deploy") -> Move:
    return Move("d1", mode, current.live_port, current.idle_port(8010), current.live_release, to_release,
                history_before=list(current.history))


def deployed(current: State, to_release: str, mode: str = "deploy") -> State:
    current.begin(move(current, to_release, mode))
    for phase in ("healthy", "switched"):
        current.advance(phase)
    current.commit()
    current.advance("draining")
    current.finish()
    return current


def test_initial_state_is_live_on_the_given_slot():
    current = fresh()
    assert (current.live_port, current.live_release, current.history) == (8010, "1.0.0", ["1.0.0"])
    assert current.idle_port(8010) == 9010 and current.rollback_target() is None and current.pending is None


def test_a_deploy_moves_the_live_slot_and_extends_the_history():
    current = deployed(fresh(), "1.1.0")
    assert (current.live_port, current.live_release) == (9010, "1.1.0")
    assert current.history == ["1.0.0", "1.1.0"] and current.last_good_release == "1.0.0"
    assert set(current.slots) == {"9010"} and current.pending is None and current.last_deploy == "d1"


def test_a_rollback_steps_the_history_back():
    current = deployed(deployed(fresh(), "1.1.0"), "1.2.0")
    current = deployed(current, "1.1.0", mode="rollback")
    assert (current.live_port, current.live_release, current.history) == (9010, "1.1.0", ["1.0.0", "1.1.0"])
    assert current.rollback_target() == "1.0.0"


def test_a_restart_moves_slots_without_touching_the_history():
    current = deployed(deployed(fresh(), "1.1.0"), "1.1.0", mode="restart")
    assert (current.live_port, current.history) == (8010, ["1.0.0", "1.1.0"])


def test_a_good_deploy_clears_the_bad_mark_of_its_release():
    current = fresh()
    current.begin(move(current, "2.0.0"))
    current.abandon(bad=True)
    assert current.bad_releases == ["2.0.0"] and current.pending is None and set(current.slots) == {"8010"}
    assert deployed(current, "2.0.0").bad_releases == []


def test_a_recorded_move_reverts_exactly():
    current = deployed(fresh(), "1.1.0")
    before = current.to_dict()
    current.begin(move(current, "1.2.0"))
    current.advance("switched")
    current.commit()
    current.revert()
    current.abandon()
    after = current.to_dict()
    assert {k: after[k] for k in ("live_port", "history", "last_good_release", "pending")} == \
        {k: before[k] for k in ("live_port", "history", "last_good_release", "pending")}
    assert after["slots"]["9010"]["release"] == "1.1.0" and "8010" not in after["slots"]


def test_a_reconfigure_records_the_new_config_and_keeps_when_the_release_went_live():
    current = fresh()
    current.configure("old")
    released = current.slots["8010"]["released"]
    current.begin(Move("d2", "reconfigure", 8010, 9010, "1.0.0", "1.0.0", config="new", from_config="old",
                       from_released=released, history_before=list(current.history)))
    for phase in ("healthy", "switched"):
        current.advance(phase)
    current.commit()
    assert (current.live_port, current.live_config, current.history) == (9010, "new", ["1.0.0"])
    assert current.slots["9010"]["released"] == released
    current.revert()
    assert (current.live_port, current.live_config, current.slots["8010"]["released"]) == (8010, "old", released)


def test_a_failed_reconfigure_does_not_mark_the_release_bad():
    current = fresh()
    current.begin(Move("d2", "reconfigure", 8010, 9010, "1.0.0", "1.0.0", config="new"))
    current.abandon(bad=True)
    assert current.bad_releases == [] and current.pending is None and list(current.slots) == ["8010"]


def test_the_lock_waits_for_a_holder_that_lets_go(tmp_path: Path):
    lock.acquire("main-api", "deploy-1", "alice", 60, lock_dir=str(tmp_path))
    with pytest.raises(lock.LockHeld, match="held by alice"):
        lock.acquire("main-api", "site-1", "site.yml", 60, lock_dir=str(tmp_path), wait=0.6)
    lock.release("main-api", "deploy-1", str(tmp_path))
    assert lock.acquire("main-api", "site-1", "site.yml", 60, lock_dir=str(tmp_path), wait=0.6) == {}


def test_transitions_refuse_what_makes_no_sense():
    current = fresh()
    with pytest.raises(StateError, match="no move is pending"):
        current.advance("healthy")
    with pytest.raises(StateError, match="slot 8010 is live"):
        current.begin(Move("d1", "deploy", 9010, 8010, "1.0.0", "1.1.0"))
    current.begin(move(current, "1.1.0"))
    with pytest.raises(StateError, match="already pending"):
        current.begin(move(current, "1.2.0"))
    current.advance("switched")
    with pytest.raises(StateError, match="comes before"):
        current.advance("healthy")
    with pytest.raises(StateError, match="only a recorded move can finish"):
        current.finish()
    current.commit()
    with pytest.raises(StateError, match="cannot be abandoned"):
        current.abandon()


def test_save_and_load_round_trip_with_a_pending_move(tmp_path: Path):
    current = fresh()
    current.begin(move(current, "1.1.0"))
    current.advance("switched")
    state.save(current, str(tmp_path))
    loaded = state.load("main-api", str(tmp_path))
    assert loaded is not None and loaded.to_dict() == current.to_dict()
    assert loaded.pending is not None and loaded.pending.traffic_moved
    assert oct(os.stat(tmp_path / "main-api.json").st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["main-api.json"]  # no temporary file left


def test_a_state_from_before_the_engine_still_loads(tmp_path: Path):
    """State files written by earlier fleet versions (no pending, no history) are read as is."""
    (tmp_path / "zapier-mcp.json").write_text(json.dumps(
        {"service": "zapier-mcp", "live_port": 8090, "slots": {"8090": {"release": "1.0.0"}}}))
    loaded = state.load("zapier-mcp", str(tmp_path))
    assert loaded is not None and loaded.history == ["1.0.0"] and loaded.pending is None


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "Expecting property name"),
    ("[]", "not a JSON object"),
    ('{"service": "x", "slots": {}}', "missing field 'live_port'"),
    ('{"service": "x", "live_port": "8010", "slots": {}}', "live_port must be an integer"),
    ('{"service": "x", "live_port": 8010, "slots": {"9010": {"release": "1"}}}', "no release for the live slot"),
    ('{"service": "x", "live_port": 8010, "slots": {"8010": {"release": "1"}}, "pending": {"phase": "x"}}',
     "pending move is incomplete"),
])
def test_a_broken_state_file_is_an_error_that_names_the_file(tmp_path: Path, content: str, message: str):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(StateError, match=message) as err:
        state.load("x", str(tmp_path))
    assert str(tmp_path / "x.json") in str(err.value)
    assert isinstance(state.load_all(str(tmp_path))["x"], StateError)


def test_no_state_file_is_none(tmp_path: Path):
    assert state.load("nope", str(tmp_path)) is None


def test_the_lock_refuses_another_deploy_and_breaks_only_on_purpose(tmp_path: Path):
    where = str(tmp_path)
    assert lock.acquire("main-api", "d1", "alice@laptop", 60, lock_dir=where) == {}
    assert lock.acquire("main-api", "d1", "alice@laptop", 60, lock_dir=where) == {}  # re-entrant
    with pytest.raises(lock.LockHeld, match="held by alice@laptop since"):
        lock.acquire("main-api", "d2", "bob@ci", 60, lock_dir=where)
    assert not lock.release("main-api", "d2", where)
    broken = lock.acquire("main-api", "d2", "bob@ci", 60, break_lock=True, lock_dir=where)
    assert broken["owner"] == "alice@laptop"
    assert lock.read("main-api", where)["deploy_id"] == "d2"
    assert lock.release("main-api", "d2", where) and lock.read("main-api", where) is None


def test_the_lock_says_when_it_is_stale_and_its_process_died(tmp_path: Path):
    dead = {"deploy_id": "old", "owner": "carol@ci", "started": "2026-01-01T00:00:00Z", "expires": "x",
            "expires_epoch": 1, "pid": 2 ** 22 + 7}
    (tmp_path / "main-api.lock").write_text(json.dumps(dead))
    text = lock.describe(lock.read("main-api", str(tmp_path)) or {})
    assert "stale" in text and "no longer runs here" in text
    alive = {**dead, "expires_epoch": 2 ** 40, "pid": os.getpid()}
    assert "stale" not in lock.describe(alive) and "no longer" not in lock.describe(alive)
    assert not lock.held_by_other(dead, "d2") and lock.held_by_other(alive, "d2")


def test_a_lock_whose_process_died_is_taken_over_and_reported(tmp_path: Path):
    dead = {"deploy_id": "old", "owner": "carol@ci", "pid": 2 ** 22 + 7, "expires_epoch": 2 ** 40}
    (tmp_path / "main-api.lock").write_text(json.dumps(dead))
    assert lock.acquire("main-api", "d2", "bob@ci", 60, lock_dir=str(tmp_path)) == dead
    without_pid = {"deploy_id": "d2", "owner": "bob@ci", "expires_epoch": 1}  # unknown holder: refused
    (tmp_path / "main-api.lock").write_text(json.dumps(without_pid))
    with pytest.raises(lock.LockHeld):
        lock.acquire("main-api", "d3", "dan@ci", 60, lock_dir=str(tmp_path))


def test_the_command_prints_a_state_and_says_when_nginx_cannot_be_asked(tmp_path: Path, capsys):
    from fleet_slots.__main__ import main

    state.save(deployed(fresh(), "1.1.0"), str(tmp_path))
    args = ["--state-dir", str(tmp_path), "--control-socket", str(tmp_path / "none.sock")]
    assert main([*args, "state", "main-api"]) == 0
    assert json.loads(capsys.readouterr().out)["live_port"] == 9010
    assert main([*args, "state", "nope"]) == 2 and "no deploy state for nope" in capsys.readouterr().err
    assert main([*args, "status"]) == 1  # nginx's routes unknown: state and nginx cannot be shown to agree
    out = capsys.readouterr().out
    assert "nginx control socket" in out and "main-api" in out and "slot 9010" in out and "1.1.0" in out


def test_a_canary_holds_between_healthy_and_switched_and_its_weight_only_goes_up(tmp_path: Path):
    current = fresh()
    current.begin(move(current, "1.1.0"))
    with pytest.raises(StateError, match="passed its health gate"):
        current.canary(5)
    current.advance("healthy")
    assert current.weight is None and current.to_dict()["weight"] is None
    current.canary(5)
    current.canary(25)
    assert (current.live_port, current.weight) == (8010, 25) and current.pending is not None
    assert current.pending.canary and not current.pending.traffic_moved
    for bad in (25, 5, 100, 0):
        with pytest.raises(StateError, match="must be from 1 to 99 and above the current 25"):
            current.canary(bad)
    state.save(current, str(tmp_path))
    saved = json.loads((tmp_path / "main-api.json").read_text())
    assert saved["weight"] == 25 and saved["pending"]["weight"] == 25 and saved["pending"]["phase"] == "canary"
    loaded = state.load("main-api", str(tmp_path))
    assert loaded is not None and loaded.to_dict() == current.to_dict()
    # The end (100) is the move's switch: the weight goes with the canary phase.
    current.advance("switched")
    assert current.weight is None and current.pending is not None and current.pending.weight == 0
    current.commit()
    assert current.live_port == 9010


def test_a_canary_taken_back_leaves_the_old_slot_live_and_the_release_unmarked():
    current = fresh()
    current.begin(move(current, "1.1.0"))
    current.advance("healthy")
    current.canary(50)
    current.abandon()
    assert (current.live_port, current.pending, current.bad_releases, current.weight) == (8010, None, [], None)


def test_a_pending_canary_with_a_bad_weight_is_refused(tmp_path: Path):
    current = fresh()
    current.begin(move(current, "1.1.0"))
    data = current.to_dict()
    data["pending"].update(phase="canary", weight=150)
    (tmp_path / "main-api.json").write_text(json.dumps(data))
    with pytest.raises(StateError, match="pending move has weight 150"):
        state.load("main-api", str(tmp_path))


def test_a_lock_handed_over_between_canary_steps_refuses_others_until_it_expires(tmp_path: Path):
    lock.acquire("svc", "canary-1", "alice@laptop", 60, lock_dir=str(tmp_path))
    assert lock.hand_over("svc", "canary-1", 60, str(tmp_path))
    held = lock.read("svc", str(tmp_path))
    assert held is not None and held["handover"] and "pid" not in held and lock.in_progress(held)
    with pytest.raises(lock.LockHeld, match="between canary steps"):
        lock.acquire("svc", "other", "bob@ci", 60, lock_dir=str(tmp_path))
    assert lock.acquire("svc", "canary-1", "alice@laptop", 60, lock_dir=str(tmp_path)) == {}  # its next step
    taken = lock.read("svc", str(tmp_path))
    assert taken is not None and taken["pid"] == os.getpid() and "handover" not in taken
    assert lock.hand_over("svc", "canary-1", -1, str(tmp_path))  # expired: that deploy died
    assert not lock.hand_over("svc", "other", 60, str(tmp_path))
    broken = lock.acquire("svc", "other", "bob@ci", 60, lock_dir=str(tmp_path))
    assert broken["deploy_id"] == "canary-1" and broken["handover"]
