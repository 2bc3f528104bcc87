"""`fleet bridge` as a user runs it: a subprocess against a `fleet broker` subprocess."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.bridges.conftest import bridge_events_url
from tests.procs import MOSQUITTO_PUB, FleetBroker, Proc, fleet_argv, mosquitto, run


def test_fleet_bridge_serves_sse_and_health_and_stops_cleanly(
    start_fleet_broker: Callable[..., FleetBroker], bridge_proc: Callable[..., Proc]
) -> None:
    """`fleet bridge` prints its URLs, bridges MQTT to SSE, reports health, and exits 0 on SIGTERM."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
    proc = bridge_proc("--broker", f"mqtt://127.0.0.1:{broker.port}", "--http-port", 0, "--grpc-port", 0)
    events_url = bridge_events_url(proc)
    proc.stdout.wait_for(lambda line: line.startswith("fleet bridge: serving grpc://"))
    dashboard_url = events_url.removesuffix("events")
    proc.stdout.wait_for(lambda line: line == f"fleet bridge: serving {dashboard_url}")

    retained = run(
        mosquitto(MOSQUITTO_PUB, broker.port, "-t", "fleet/d1/status", "-r", "-m", '{"online":true}')
    )
    assert retained.returncode == 0, retained
    sse = run(["curl", "-sN", "--max-time", "2", f"{events_url}?filter=fleet/%2B/status&last_event_id=0"])
    assert "event: status" in sse.stdout, sse
    page = run(["curl", "-s", "--max-time", "2", dashboard_url])
    assert "<title>mqtt-fleet dashboard</title>" in page.stdout, page

    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()
    assert proc.stdout.lines[-1] == "fleet bridge: shutting down", proc.describe()


def test_fleet_bridge_refuses_a_bad_broker_url_with_one_line() -> None:
    """A broker URL with an unknown scheme is a one-line error naming the field, without a traceback."""
    result = run(fleet_argv("bridge", "--broker", "ftp://127.0.0.1:1"))
    assert result.returncode != 0
    assert "bridge.broker" in result.stderr, result.stderr
    assert "scheme" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_fleet_bridge_on_a_taken_grpc_port_fails_with_one_line(bridge_proc: Callable[..., Proc]) -> None:
    """A second `fleet bridge` on the gRPC port of a first fails at once, "address already in use",
    without a traceback, instead of sharing the port with it."""
    # No broker is needed to listen: the bridges keep retrying their broker link meanwhile.
    first = bridge_proc("--broker", "mqtt://127.0.0.1:1", "--http-port", 0, "--grpc-port", 0)
    index = first.stdout.wait_for(lambda line: line.startswith("fleet bridge: serving grpc://"))
    grpc_port = first.stdout.lines[index].rsplit(":", 1)[1]
    second = run(
        fleet_argv("bridge", "--broker", "mqtt://127.0.0.1:1", "--http-port", "0", "--grpc-port", grpc_port)
    )
    assert second.returncode == 1, second
    assert (
        f"cannot listen: [Errno 98] gRPC cannot listen on 127.0.0.1:{grpc_port}: address already in use"
        in (second.stderr)
    ), second.stderr
    assert "Traceback" not in second.stderr
