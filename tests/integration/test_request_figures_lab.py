"""nginx's request figures on the lab fleet: a known number of requests to one service on one host
(plain ones, 5xx ones from the demo's /status/503, slow ones from /slow), then what nginx counted
(its control socket), what the timer exports for node_exporter (fleet_requests.prom) and what
status.yml shows (table and JSON) must match what was sent.

Other traffic may reach the service meanwhile (the health checker asks /health through nginx every
5 minutes): it is read from nginx's access log for the same stretch and added, so the counts stay
exact. Nothing here assumes a slot or a release; no slot is stopped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any

from .conftest import ROOT, Lab
from .helpers import HOST2

sys.path.insert(0, str(ROOT / "roles" / "slot_engine" / "files"))
from fleet_slots import metrics  # the slot engine's reader, as status.py uses it

SERVICE = "infrastructure"
NAME = f"{SERVICE}.fleet.test"
OK, FAILED, SLOW = 40, 4, 2  # SLOW of OK + FAILED + SLOW: more than 1%, so the p99 is a slow one
STATUS_TASK = "Print the status table, or the report as JSON"
ACCESS_LOG = "/var/log/nginx/access.log"
# The access log's line (nginx.conf.j2, log_format fleet): address [time] "host" "request" status ...
LOG_LINE = re.compile(r'^\S+ \[[^]]+\] "(?P<host>[^"]*)" "(?P<request>[^"]*)" (?P<status>\d{3}) ')


def get(lab: Lab, host: str, path: str) -> int:
    request = urllib.request.Request(f"http://{lab.hosts[host]}{path}", headers={"Host": NAME})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)


def reading(lab: Lab, host: str, log_from: int | None = None) -> tuple[dict[str, Any], int, list[str]]:
    """nginx's counts of the service (its control socket, through fleet-slot), the access log's length,
    and its lines from line `log_from` on, in one ssh call."""
    tail = f"; tail -n +{log_from} {ACCESS_LOG}" if log_from else ""
    out = lab.ssh(host, f"fleet-slot metrics {SERVICE} --raw --window 60 && wc -l < {ACCESS_LOG}{tail}").stdout
    answer, end = json.JSONDecoder().raw_decode(out)
    rest = out[end:].strip().splitlines()
    return answer, int(rest[0]), rest[1:]


def others(lines: list[str], marker: str) -> tuple[int, int]:
    """Requests (and 5xx) to the service's locations the access log shows that this test did not send."""
    found = [m for m in map(LOG_LINE.match, lines) if m and m["host"] == NAME and marker not in m["request"]]
    counted = [m for m in found if "/.well-known/acme-challenge/" not in m["request"]]
    return len(counted), sum(1 for m in counted if m["status"].startswith("5"))


def status_yml(lab: Lab, host: str, *args: str) -> Any:
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    run = subprocess.run(lab.argv("status.yml", "-e", f"service={SERVICE}", "--limit", host, *args), cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    after = run.stdout.split(f"TASK [{STATUS_TASK}]", 1)[1]
    return json.JSONDecoder().raw_decode(after[after.index("=> ") + 3:])[0]["msg"]


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_what_nginx_counts_exports_and_status_shows_is_what_was_sent(lab: Lab):
    host, marker = HOST2, f"figures-{uuid.uuid4().hex[:12]}"
    before, log_length, _ = reading(lab, host)

    statuses = [get(lab, host, f"/{marker}/{n}") for n in range(OK)]
    statuses += [get(lab, host, f"/status/503?{marker}") for _ in range(FAILED)]
    statuses += [get(lab, host, f"/slow?seconds=0.25&{marker}") for _ in range(SLOW)]
    # Not the service's: an ACME challenge on its name, and nginx's own health answer.
    assert get(lab, host, f"/.well-known/acme-challenge/{marker}") == 404
    assert statuses == [200] * OK + [503] * FAILED + [200] * SLOW

    after, _, lines = reading(lab, host, log_length + 1)
    foreign, foreign_5xx = others(lines, marker)
    assert foreign <= 5, lines  # the health checker's few /health requests at most

    # The control socket: exact counts (the totals' difference), a p99 among the slow requests.
    change = metrics.delta(before, after, SERVICE)
    assert change["requests"] == OK + FAILED + SLOW + foreign
    assert change["errors"] == FAILED + foreign_5xx
    assert sum(change["buckets"]) == change["requests"]
    p99 = metrics.quantile(0.99, after["bounds"], change["buckets"])
    assert p99 is not None and 0.2 < p99 <= 0.5, change  # the bucket of the slow ones
    recent = after["services"][SERVICE]["recent"]
    assert recent["requests"] >= OK + FAILED + SLOW and recent["errors"] >= FAILED
    assert after["services"][SERVICE]["day"]["errors"] >= FAILED

    # node_exporter's file, written by the timer's unit now, and nginx's counts right after it.
    out = lab.ssh(host, "systemctl start fleet-request-metrics.service && "
                        "cat /var/lib/prometheus/node-exporter/fleet_requests.prom && "
                        f"echo @@@ && fleet-slot metrics {SERVICE} --raw").stdout
    exported, latest = samples(out.split("@@@")[0]), json.loads(out.split("@@@")[1])
    label = f'{{service="{SERVICE}"}}'
    total, newest = after["services"][SERVICE]["total"], latest["services"][SERVICE]["total"]
    assert exported["fleet_requests_up"] == 1
    assert total["requests"] <= exported[f"fleet_http_requests_total{label}"] <= newest["requests"]
    assert total["errors"] <= exported[f"fleet_http_server_errors_total{label}"] <= newest["errors"]
    count = exported[f"fleet_http_request_duration_seconds_count{label}"]
    assert count == exported[f"fleet_http_requests_total{label}"]
    assert exported[f'fleet_http_request_duration_seconds_bucket{{service="{SERVICE}",le="+Inf"}}'] == count

    # status.yml, as JSON then as a table: the last 5 minutes and the last 24 hours of that host.
    report = status_yml(lab, host, "-e", "format=json")
    (row,) = report["rows"]
    shown = row["requests"]
    assert report["hosts"][host]["metrics_error"] == ""
    assert shown["requests"] >= OK + FAILED + SLOW and shown["errors"] >= FAILED
    assert shown["error_share"] == shown["errors"] / shown["requests"] and shown["rate"] > 0
    assert shown["p99_ms"] is not None and shown["p99_ms"] > 0
    assert shown["day_errors"] == latest["services"][SERVICE]["day"]["errors"]  # no 5xx since, but ours
    assert shown["day_requests"] >= latest["services"][SERVICE]["day"]["requests"]
    assert shown["availability_24h"] == 1 - shown["day_errors"] / shown["day_requests"] < 1

    table = status_yml(lab, host)
    assert table[0].split()[-5:] == ["REQ/S", "5XX", "P99", "AVAIL", "24H"]
    (line,) = [line for line in table if line.startswith(SERVICE)]
    rate, share, p99_cell, available = re.split(r"\s{2,}", line.strip())[-4:]
    assert float(rate) > 0 and re.fullmatch(r"\d+\.\d\d%", share), line
    assert re.fullmatch(r">?[\d.]+m?s", p99_cell) and re.fullmatch(r"\d+\.\d\d%", available), line
