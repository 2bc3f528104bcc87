"""The pytest plugin as its users meet it: test files run by pytester in a fresh pytest process, which
loads the plugin through its `pytest11` entry point."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.procs import ROOT, TIMEOUT

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

USER_TESTS = r'''
import asyncio
import json

import pytest
from websockets.asyncio.server import serve

CONFIG = """
[[groups]]
name = "van"
count = 2
interval = 0.05
"""


@pytest.mark.asyncio
async def test_a_fleet_from_a_file(fleet_sim, mqtt_stream, tmp_path):
    status = await mqtt_stream("fleet/+/status")
    telemetry = await mqtt_stream("fleet/van-0001/telemetry")
    (tmp_path / "fleet.toml").write_text(CONFIG)
    fleet = await fleet_sim(tmp_path / "fleet.toml")
    assert fleet.devices == ("van-0000", "van-0001")
    await status.expect_count(2, match={"online": True}, within=5.0)
    events = await telemetry.expect_count(3, topic="fleet/+/telemetry", within=5.0)
    assert [event.payload["seq"] for event in events] == [0, 1, 2]
    await status.expect_silence(for_=0.2)


@pytest.mark.asyncio
async def test_someone_elses_websocket_server(ws_stream):
    async def quotes(websocket):
        for price in (1, 2, 3):
            await websocket.send(json.dumps({"symbol": "ACME", "price": price}))
        await websocket.wait_closed()

    async with serve(quotes, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stream = await ws_stream(f"ws://127.0.0.1:{port}/quotes")
        event = await stream.expect(match={"price": 3}, within=5.0)
        assert event.payload == {"symbol": "ACME", "price": 3}


async def serve_sse(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        b": hello\n\ndata: {\"temp\": 20}\n\nevent: note\ndata: not json\n\n"
    )
    await writer.drain()
    writer.close()


@pytest.mark.asyncio
async def test_someone_elses_sse_server(sse_stream):
    server = await asyncio.start_server(serve_sse, "127.0.0.1", 0)
    async with server:
        stream = await sse_stream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/feed")
        assert (await stream.expect(match={"temp": 20}, within=5.0)).payload == {"temp": 20}
        assert (await stream.expect(within=5.0)).payload == "not json"


@pytest.mark.asyncio
async def test_fails_showing_what_arrived(fleet_sim, mqtt_stream):
    status = await mqtt_stream("fleet/+/status")
    await fleet_sim({"groups": [{"name": "door", "count": 1}]})
    await status.expect(topic="fleet/+/status", match={"online": False}, within=1.0)


@pytest.mark.asyncio
async def test_fails_at_once_when_the_stream_ends(sse_stream):
    server = await asyncio.start_server(serve_sse, "127.0.0.1", 0)
    async with server:
        stream = await sse_stream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/feed")
        await stream.expect(match={"temp": 99}, within=60.0)
'''


def test_plugin_fixtures_and_stream_expectations(pytester: pytest.Pytester) -> None:
    """fleet_sim, mqtt_stream, ws_stream and sse_stream work in a user's project, against our broker and
    against other servers; a failed expectation names the stream, its filters and the expectation, and
    shows the events that arrived instead; a stream that ends fails an expectation at once."""
    pytester.makeini(INI)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--durations=0", timeout=60)
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E   *ExpectationFailed: mqtt stream mqtt://127.0.0.1:* (filters: fleet/+/status): expected an"
            " event matching topic=fleet/+/status,payload.online=false within 1.0s, got 0",
            "E   *it looked at 1 event; the last 1:",
            'E   *  {"topic":"fleet/door-0000/status","device":"door-0000","kind":"status",*'
            '"payload":{"online":true,*',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E   *ExpectationFailed: sse stream http://127.0.0.1:*/feed (filters: none): expected an event"
            " matching payload.temp=99 within 60.0s, got 0",
            "E   *the stream ended: the server ended the stream",
            "E   *it looked at 2 events; the last 2:",
            'E   *  {"temp":20}',
            'E   *  "not json"',
        ]
    )
    # Within 60 s, but a stream that ended fails at once (not in ten seconds or more).
    result.stdout.no_fnmatch_line("[1-9][0-9]*s call *test_fails_at_once_when_the_stream_ends")


def test_loading_the_plugin_imports_no_client_or_server_library() -> None:
    """The plugin is loaded by every pytest run where mqtt-fleet is installed: importing it and its
    fixtures loads neither the broker, the bridges, nor a network client library."""
    heavy = ("broker", "bridges", "grpc", "aiomqtt", "httpx", "websockets", "fleet.simulator")
    code = (
        "import sys, fleet.testing.plugin, fleet.testing.fixtures\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert result.stdout.strip() == "[]", result


def docs_example(section: str = "An end-to-end example") -> str:
    """The first python block of `section` of the docs page docs/testing.md."""
    page = (ROOT / "docs" / "testing.md").read_text()
    text = page.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert found is not None, f"no python block in the section {section!r} of docs/testing.md"
    return found[1]


def test_the_docs_example_passes_in_a_new_project(pytester: pytest.Pytester) -> None:
    """The docs' end-to-end example (15 lines at most) passes as it is, in a project with no config."""
    example = docs_example()
    assert len(example.splitlines()) <= 15, example
    pytester.makepyfile(test_docs_example=example)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1)


def test_the_docs_mqtt5_example_passes_in_a_new_project(pytester: pytest.Pytester) -> None:
    """The docs' MQTT 5 example, user properties and a content type expected over `mqtt_stream(...,
    version=5)`, passes as it is, in a project with no config."""
    pytester.makepyfile(test_docs_mqtt5=docs_example("MQTT 5 properties"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1)
