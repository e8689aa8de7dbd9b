"""The deploy state of one service on one host: its schema and every transition.

This module is the only writer of /var/lib/fleet/state/<service>.json; every reader (the slot
engine, the Ansible module, the local fact, the health checker, the benchmark) goes through
`load`. nginx's Lua balancer reads three fields of it, `live_port`, `weight` (with the pending move's
`to_port`) and `maintenance`, when nginx starts or reloads.

    {
      "service": "main-api",
      "live_port": 9010,                       # the slot nginx routes to
      "slots": {"8010": {"release": "1.0.0", "since": "...", "released": "...", "config": "<sha256>"}, ...},
      "history": ["1.0.0", "1.1.0"],           # releases that were live, oldest first (last 10)
      "last_good_release": "1.0.0",            # history[-2]: what a rollback returns to
      "bad_releases": ["9.9.9"],               # failed their health gate, verification or watch here
      "last_deploy": "main-api-2026...",       # deploy id of the last completed move
      "pending": null | {...},                 # the journal of a move in progress
      "weight": null | 25,                     # a canary's share of requests (%) on pending.to_port
      "maintenance": null | {"since": "...", "by": "alice@laptop", "reason": "...", "retry_after": 600}
    }

A slot's `config` is the digest of the unit and environment it was started with (site.yml
compares it with the catalog's to decide whether a configuration change needs a slot switch;
"" when unknown, as in states written before configs were recorded).

A move writes `pending` (from/to slot and release, deploy id, phase) before it changes anything a
client could see, advances its phase as it goes, and clears it when the old slot is stopped. A
`pending` found by a later run is a move that was interrupted: see engine.reconcile.

A canary (hot_deploy.yml -e canary=5,25,100) is a move that holds in phase `canary` between
`healthy` and `switched`: the live slot stays the old one and nginx sends the pending move's
`weight` percent of the service's requests to the new slot. `weight` is written at the top level
too (derived from the journal, ignored when read back) for nginx's init and the status table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import host

STATE_DIR = "/var/lib/fleet/state"

# The phases of a move, in order. A move interrupted before "switched" never moved traffic.
# "canary": the new slot takes `weight` percent of the requests, the old one stays live.
PHASES = ("started", "healthy", "canary", "switched", "recorded", "draining")
# Live releases remembered, oldest first: enough to roll back step by step, bounded.
HISTORY_KEEP = 10
# deploy and rollback change the release; restart moves the live release to the other slot;
# reconfigure does the same with a new configuration (site.yml applying a catalog change).
MODES = ("deploy", "rollback", "restart", "reconfigure")
SAME_RELEASE_MODES = ("restart", "reconfigure")


class StateError(ValueError):
    """A state file that is missing, unreadable or not of this schema."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Move:
    """A slot switch in progress (the journal entry)."""

    deploy_id: str
    mode: str
    from_port: int
    to_port: int
    from_release: str
    to_release: str
    phase: str = "started"
    owner: str = ""
    config: str = ""  # the new slot's configuration digest
    from_config: str = ""  # the old slot's, to put it back exactly on a revert
    from_released: str = ""
    history_before: list[str] = field(default_factory=list)  # to revert a recorded move exactly
    started: str = field(default_factory=now_iso)
    started_epoch: float = field(default_factory=time.time)
    weight: int = 0  # phase canary: the new slot's share of requests, percent (1 to 99)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Move:
        try:
            move = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as err:
            raise StateError(f"pending move is incomplete: {err}") from err
        if move.phase not in PHASES:
            raise StateError(f"pending move has unknown phase {move.phase!r} (expected one of {', '.join(PHASES)})")
        if not isinstance(move.weight, int) or isinstance(move.weight, bool) or not 0 <= move.weight <= 99:
            raise StateError(f"pending move has weight {move.weight!r} (expected a whole percent from 0 to 99)")
        return move

    @property
    def traffic_moved(self) -> bool:
        return PHASES.index(self.phase) >= PHASES.index("switched")

    @property
    def canary(self) -> bool:
        """The move holds in a canary step: the new slot takes `weight` percent of the requests."""
        return self.phase == "canary"


@dataclass
class State:
    service: str
    live_port: int
    slots: dict[str, dict[str, Any]]
    history: list[str]
    last_good_release: str | None = None
    bad_releases: list[str] = field(default_factory=list)
    last_deploy: str | None = None
    pending: Move | None = None
    maintenance: dict[str, Any] | None = None

    # -- reading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "state") -> State:
        if not isinstance(data, dict):
            raise StateError(f"{where}: not a JSON object")
        try:
            live = data["live_port"]
            slots = data["slots"]
            service = data["service"]
        except KeyError as err:
            raise StateError(f"{where}: missing field {err}") from err
        if not isinstance(live, int) or isinstance(live, bool):
            raise StateError(f"{where}: live_port must be an integer, not {live!r}")
        if not isinstance(slots, dict) or str(live) not in slots or "release" not in slots[str(live)]:
            raise StateError(f"{where}: slots has no release for the live slot {live}")
        live_release = slots[str(live)]["release"]
        pending = data.get("pending")
        return cls(
            service=service, live_port=live, slots=slots,
            history=list(data.get("history") or [live_release]),
            last_good_release=data.get("last_good_release"),
            bad_releases=list(data.get("bad_releases") or []),
            last_deploy=data.get("last_deploy"),
            pending=Move.from_dict(pending) if pending else None,
            maintenance=_maintenance_from(data.get("maintenance"), where),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pending"] = asdict(self.pending) if self.pending else None
        data["weight"] = self.weight
        return data

    @property
    def weight(self) -> int | None:
        """The canary's share of requests (percent) on the pending move's new slot; None without one."""
        return self.pending.weight if self.pending is not None and self.pending.canary else None

    @property
    def live_release(self) -> str:
        return str(self.slots[str(self.live_port)]["release"])

    @property
    def live_config(self) -> str:
        return str(self.slots[str(self.live_port)].get("config") or "")

    @property
    def live_since(self) -> str:
        return str(self.slots[str(self.live_port)].get("since") or "")

    def idle_port(self, blue_port: int) -> int:
        """The other slot of a service whose blue slot is `blue_port`."""
        return blue_port + 1000 if self.live_port == blue_port else blue_port

    def rollback_target(self) -> str | None:
        """The release that was live before the current one, if any."""
        return self.history[-2] if len(self.history) > 1 else None

    # -- transitions ---------------------------------------------------------------------------
    def begin(self, move: Move) -> None:
        if self.pending is not None:
            raise StateError(f"{self.service}: a move is already pending ({self.pending.deploy_id}, "
                             f"phase {self.pending.phase}); reconcile it first")
        if move.from_port != self.live_port:
            raise StateError(f"{self.service}: move starts from slot {move.from_port}, "
                             f"but slot {self.live_port} is live")
        self.pending = move

    def advance(self, phase: str) -> None:
        if self.pending is None:
            raise StateError(f"{self.service}: no move is pending")
        if PHASES.index(phase) < PHASES.index(self.pending.phase):
            raise StateError(f"{self.service}: phase {phase} comes before {self.pending.phase}")
        self.pending.phase = phase
        if phase != "canary":
            self.pending.weight = 0

    def canary(self, weight: int) -> None:
        """The pending move's new slot takes `weight` percent of the requests (1 to 99); the old
        slot stays live. Steps only go up: a canary is taken back with abandon()."""
        move = self.pending
        if move is None or move.phase not in ("healthy", "canary"):
            raise StateError(f"{self.service}: only a move whose new slot passed its health gate can take a share "
                             "of the traffic")
        if not 1 <= weight <= 99 or (move.canary and weight <= move.weight):
            raise StateError(f"{self.service}: canary weight {weight} must be from 1 to 99 and above the current "
                             f"{move.weight if move.canary else 0}")
        move.phase, move.weight = "canary", weight

    def commit(self) -> None:
        """The pending move's slot becomes live (phase `recorded`); the old slot still runs."""
        move = self.pending
        if move is None:
            raise StateError(f"{self.service}: no move to commit")
        if move.mode == "rollback" and self.history[-2:-1] == [move.to_release]:
            self.history = self.history[:-1]
        elif move.mode not in SAME_RELEASE_MODES or self.history[-1:] != [move.to_release]:
            self.history = [*self.history, move.to_release][-HISTORY_KEEP:]
        # `released`: when this release went live here (a restart or reconfigure keeps it), what a
        # rollback compares across hosts to find the fleet's last move.
        released = self.slots[str(self.live_port)].get("released") if move.mode in SAME_RELEASE_MODES else None
        self.live_port = move.to_port
        self.slots[str(move.to_port)] = {"release": move.to_release, "since": now_iso(), "config": move.config,
                                         "released": released or now_iso()}
        self.last_good_release = self.rollback_target()
        self.bad_releases = [r for r in self.bad_releases if r != move.to_release]
        self.last_deploy = move.deploy_id
        move.phase = "recorded"

    def finish(self) -> None:
        """The old slot is stopped: forget it and clear the journal."""
        move = self.pending
        if move is None or move.phase not in ("recorded", "draining"):
            raise StateError(f"{self.service}: only a recorded move can finish")
        self.slots.pop(str(move.from_port), None)
        self.pending = None

    def revert(self) -> None:
        """Undo commit(): the old slot is live again (the move stays pending, to be abandoned)."""
        move = self.pending
        if move is None or move.phase not in ("recorded", "draining"):
            raise StateError(f"{self.service}: only a recorded move can be reverted")
        self.live_port = move.from_port
        self.slots[str(move.from_port)] = {"release": move.from_release, "since": now_iso(),
                                           "config": move.from_config, "released": move.from_released}
        self.history = list(move.history_before) or [move.from_release]
        self.last_good_release = self.rollback_target()
        move.phase = "switched"

    def abandon(self, bad: bool = False) -> None:
        """The pending move did not happen: traffic stays on the live slot."""
        move = self.pending
        if move is None:
            return
        if move.traffic_moved and move.phase != "switched":
            raise StateError(f"{self.service}: a recorded move cannot be abandoned")
        self.slots.pop(str(move.to_port), None)
        # A failed restart or reconfigure says nothing against the release itself.
        if bad and move.mode not in SAME_RELEASE_MODES and move.to_release not in self.bad_releases:
            self.bad_releases.append(move.to_release)
        self.pending = None

    def start_maintenance(self, by: str, reason: str, retry_after: int) -> None:
        """nginx answers the service with 503 and its maintenance page; a service already in
        maintenance keeps its `since` and `by` (a new retry_after or reason replaces the old)."""
        if retry_after < 1:
            raise StateError(f"{self.service}: retry_after must be at least 1 second, not {retry_after}")
        kept = self.maintenance or {"since": now_iso(), "by": by}
        self.maintenance = {"since": kept["since"], "by": kept["by"], "reason": reason, "retry_after": retry_after}

    def end_maintenance(self) -> None:
        self.maintenance = None

    def configure(self, config: str) -> None:
        """The live slot was (re)started in place with configuration `config` (it served nothing)."""
        self.slots[str(self.live_port)]["config"] = config


def _maintenance_from(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    retry = value.get("retry_after") if isinstance(value, dict) else None
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 1:
        raise StateError(f"{where}: maintenance must be null or an object with retry_after (seconds, at "
                         f"least 1), not {value!r}")
    return {"since": str(value.get("since") or ""), "by": str(value.get("by") or ""),
            "reason": str(value.get("reason") or ""), "retry_after": retry}


def initial(service: str, port: int, release: str, config: str = "") -> State:
    """The state of a service started for the first time on `port`."""
    return State(service=service, live_port=port,
                 slots={str(port): {"release": release, "since": now_iso(), "config": config, "released": now_iso()}},
                 history=[release])


def path_of(service: str, state_dir: str = STATE_DIR) -> Path:
    return Path(state_dir) / f"{service}.json"


def load(service: str, state_dir: str = STATE_DIR) -> State | None:
    """The state of `service`, None when it has none; StateError when the file is broken."""
    path = path_of(service, state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateError(f"{path}: {err}") from err
    try:
        return State.from_dict(json.loads(text), str(path))
    except ValueError as err:
        raise StateError(f"{path}: {err}") from err


def load_all(state_dir: str = STATE_DIR) -> dict[str, State | StateError]:
    """Every service's state on this host; a broken file maps to its error."""
    states: dict[str, State | StateError] = {}
    for path in sorted(Path(state_dir).glob("*.json")):
        try:
            states[path.stem] = load(path.stem, state_dir) or StateError(f"{path} vanished")
        except StateError as err:
            states[path.stem] = err
    return states


def save(state: State, state_dir: str = STATE_DIR) -> None:
    """Replace the state file atomically (write, fsync, rename): a crash leaves old or new."""
    path = path_of(state.service, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    host.write_atomically(path, json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n",
                          prefix=f".{state.service}.")
