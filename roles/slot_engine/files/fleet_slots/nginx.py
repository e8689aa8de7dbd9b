"""The switch: nginx's slot table, read and set through its control socket.

nginx (role `nginx`) keeps each service's live port in a lua_shared_dict that its Lua balancer
reads per request, and serves a small HTTP API on a unix socket only root can reach:

    GET /slots             -> {"main-api": 8010, ...}
    PUT /slots/<service>   body "9010" -> {"service": "main-api", "port": 9010, "previous": 8010}
    GET /maintenance               -> {"main-api": 600, ...}  (services in maintenance: Retry-After)
    PUT /maintenance/<service>     body "600": answer 503 with the maintenance page from now on
    DELETE /maintenance/<service>  route to the live slot again
    GET /canary                    -> {"main-api": {"port": 9010, "weight": 25, "requests": 812}, ...}
    PUT /canary/<service>          body "9010 25": send 25% of the requests to the idle slot 9010
    DELETE /canary/<service>       every request to the live slot again (PUT /slots ends it too)
    GET /metrics[?window=N]            request figures per service (fleet_slots.metrics reads them)
    GET /metrics/<service>[?window=N]  one service's

Setting a value changes where the next request goes; nginx is not reloaded and no connection,
client or upstream, is closed.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

CONTROL_SOCKET = "/run/fleet-nginx/control.sock"


class NginxControlError(RuntimeError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _call(method: str, path: str, body: str | None = None, control_socket: str = CONTROL_SOCKET,
          timeout: float = 5.0) -> Any:
    conn = _UnixConnection(control_socket, timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        payload = response.read().decode("utf-8", "replace")
    except OSError as err:
        raise NginxControlError(f"nginx control socket {control_socket}: {err} (is nginx running with "
                                "fleet's slot balancer?)") from err
    finally:
        conn.close()
    if response.status != 200:
        raise NginxControlError(f"nginx control {method} {path}: {response.status} {payload.strip()}")
    return json.loads(payload)


def routes(control_socket: str = CONTROL_SOCKET) -> dict[str, int]:
    """Every service's live port as nginx routes it right now."""
    return {k: int(v) for k, v in _call("GET", "/slots", control_socket=control_socket).items()}


def route(service: str, control_socket: str = CONTROL_SOCKET) -> int | None:
    return routes(control_socket).get(service)


def switch(service: str, port: int, control_socket: str = CONTROL_SOCKET) -> int | None:
    """Route `service` to `port` from the next request on, ending a canary; returns the previous port."""
    answer = _call("PUT", f"/slots/{service}", body=str(port), control_socket=control_socket)
    previous = answer.get("previous")
    return int(previous) if previous is not None else None


def canaries(control_socket: str = CONTROL_SOCKET) -> dict[str, dict[str, int]]:
    """The services in a canary step right now: each one's canary port, weight and requests counted."""
    answer: dict[str, dict[str, int]] = _call("GET", "/canary", control_socket=control_socket)
    return answer


def set_canary(service: str, port: int, weight: int, control_socket: str = CONTROL_SOCKET) -> None:
    """From the next request on, exactly `weight` percent of the service's requests go to its idle
    slot `port` (request n when floor(n*weight/100) passes a whole number), the rest to the live one."""
    _call("PUT", f"/canary/{service}", body=f"{port} {weight}", control_socket=control_socket)


def clear_canary(service: str, control_socket: str = CONTROL_SOCKET) -> None:
    """From the next request on, every request of `service` goes to its live slot again."""
    _call("DELETE", f"/canary/{service}", control_socket=control_socket)


def maintenance(control_socket: str = CONTROL_SOCKET) -> dict[str, int]:
    """The services nginx answers with its maintenance page right now, each with its Retry-After."""
    return {k: int(v) for k, v in _call("GET", "/maintenance", control_socket=control_socket).items()}


def set_maintenance(service: str, retry_after: int, control_socket: str = CONTROL_SOCKET) -> None:
    """From the next request on, nginx answers `service` with 503 and its maintenance page."""
    _call("PUT", f"/maintenance/{service}", body=str(retry_after), control_socket=control_socket)


def clear_maintenance(service: str, control_socket: str = CONTROL_SOCKET) -> None:
    """From the next request on, nginx routes `service` to its live slot again."""
    _call("DELETE", f"/maintenance/{service}", control_socket=control_socket)


def metrics(service: str | None = None, window: int = 300, control_socket: str = CONTROL_SOCKET) -> dict[str, Any]:
    """nginx's request figures of every service it routes (or of `service` only): per service its
    totals since nginx started, the last `window` seconds (1 to 600, whole 10 s windows) and the
    last 24 hours; fleet_slots.metrics derives rates, shares and percentiles from them."""
    path = "/metrics" + (f"/{service}" if service else "")
    answer: dict[str, Any] = _call("GET", f"{path}?window={int(window)}", control_socket=control_socket)
    return answer
