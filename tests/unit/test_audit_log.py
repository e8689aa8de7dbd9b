"""The deploy audit log (fleet_slots.engine.write_audit): one whole JSON line per move, however many
deploys on a host append at once."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import threading
import time
from pathlib import Path

from fleet_slots import engine

WRITERS, LINES = 8, 200


def audit(path: Path, writer: int, number: int) -> None:
    # Messages of 4-8 KiB: past the page size and the buffers, where a write that is not whole shows.
    message = f"w{writer}-{number} " + "m" * (4096 + 512 * writer)
    engine.write_audit(str(path), engine.Outcome("ok", message, "done", 8010, 9010, "1.0.0", "1.0.1"),
                       "main-api", "deploy", f"d{writer}", "tester", "web-1", time.time())


def append_many(path: Path, writer: int) -> None:
    for number in range(LINES):
        audit(path, writer, number)


def test_concurrent_deploys_append_whole_lines_and_lose_none(tmp_path: Path):
    path = tmp_path / "log" / "deploy-audit.log"
    context = multiprocessing.get_context("fork")  # the children inherit the test's sys.path
    writers = [context.Process(target=append_many, args=(path, writer)) for writer in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    records = [json.loads(line) for line in path.read_text().splitlines()]  # each line is whole JSON
    assert len(records) == WRITERS * LINES
    seen = {record["message"].split(" ", 1)[0] for record in records}
    assert seen == {f"w{writer}-{number}" for writer in range(WRITERS) for number in range(LINES)}
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_line_waits_for_whoever_holds_the_lock(tmp_path: Path):
    """Appenders and readers (a rotation, a copy) that flock the file never see half a line."""
    path = tmp_path / "deploy-audit.log"
    path.write_text("")
    with path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = threading.Thread(target=audit, args=(path, 0, 0))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and path.read_text() == ""
    writer.join(10)
    assert json.loads(path.read_text())["message"].startswith("w0-0 ")
