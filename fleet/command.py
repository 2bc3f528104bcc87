"""`fleet cmd DEVICE OP [VALUE]`: send one command to a simulated device and wait for its ack.

The command goes to `{prefix}/{device}/cmd` at QoS 1 as `{"id": ..., "op": ..., "value": ...}`.
Over MQTT 5 it is a request: it carries a Response Topic (`{prefix}/{device}/cmd/response/{token}`)
and Correlation Data (the command id), and a v5 device answers there. The ack is also accepted on
`{prefix}/{device}/cmd/ack`, where 3.1.1 devices answer, matched by the command id.

Without a version, the link speaks MQTT 3.1.1 unless the device's retained birth says
`"protocol": 5`: the status subscription's retained message comes before the next SUBACK, so one
extra SUBSCRIBE tells whether there is one, without waiting for silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from fleet.device import speaks_v5
from fleet.mqtt import v5
from fleet.mqtt.properties import Properties, encode_property_body
from fleet.packets import Connect, Publish
from fleet.simulator import Target
from fleet.topics import validate_topic
from fleet.transport import ClientSession, Link

__all__ = ["Reply", "Request", "send_command"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One command to one device; the topics follow the default scheme under `prefix`."""

    device: str
    op: str
    value: Any = None
    prefix: str = "fleet"
    id: str = field(default_factory=lambda: f"cmd-{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        validate_topic(self.command_topic)  # raises TopicError for a device or prefix with + or #

    @property
    def command_topic(self) -> str:
        return f"{self.prefix}/{self.device}/cmd"

    @property
    def ack_topic(self) -> str:
        return f"{self.prefix}/{self.device}/cmd/ack"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/{self.device}/status"

    @property
    def response_topic(self) -> str:
        return f"{self.prefix}/{self.device}/cmd/response/{self.id}"

    def payload(self) -> bytes:
        body: dict[str, Any] = {"id": self.id, "op": self.op}
        if self.value is not None:
            body["value"] = self.value
        return json.dumps(body, separators=(",", ":")).encode()

    def properties(self) -> bytes:
        """The encoded MQTT 5 properties that make the command a request: its Response Topic, and
        the command id as Correlation Data."""
        return encode_property_body(
            Properties(response_topic=self.response_topic, correlation_data=self.id.encode())
        )

    def answered_by(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> bool:
        """Whether a message on `topic`, with the JSON object `body` and the Correlation Data
        `correlation` (None: none), is the device's ack: on the response topic with the command id
        as its correlation data, or on cmd/ack with the command id in its body."""
        if topic == self.response_topic:
            return correlation == self.id.encode()
        return topic == self.ack_topic and body.get("id") == self.id


@dataclass(frozen=True, slots=True)
class Reply:
    """The device's ack: its JSON body, the topic it came on, and the version the link spoke."""

    body: dict[str, Any]
    topic: str
    version: int

    @property
    def ok(self) -> bool:
        return self.body.get("ok") is True


class _Inbox:
    """What the link receives: the retained status, and the reply to `request`."""

    __slots__ = ("reply", "request", "status")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.status: dict[str, Any] | None = None
        self.reply: asyncio.Future[tuple[dict[str, Any], str]] = asyncio.get_running_loop().create_future()

    def __call__(self, message: Publish | v5.Publish) -> None:
        request = self.request
        try:
            body = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(body, dict):
            return
        if message.topic == request.status_topic:
            self.status = body
            return
        correlation = message.properties.correlation_data if isinstance(message, v5.Publish) else None
        if request.answered_by(message.topic, body, correlation) and not self.reply.done():
            self.reply.set_result((body, message.topic))


async def send_command(
    target: Target, request: Request, *, timeout: float, version: int | None = None
) -> Reply | None:
    """Send `request` and wait up to `timeout` seconds (connecting included) for the device's ack;
    None when none came. `version` 4 or 5 fixes the link's MQTT version; None asks the device's
    retained birth. Raises TransportError or ConnectRefused when the broker cannot be reached."""
    inbox = _Inbox(request)
    try:
        async with asyncio.timeout(timeout):
            link = await _open(target, version or 4, inbox)
            try:
                if version is None:
                    await link.subscribe([(request.status_topic, 1)])
                await link.subscribe([(request.ack_topic, 1)])  # after the retained status, if any
                if version is None and speaks_v5(inbox.status):
                    await link.disconnect()
                    link = await _open(target, 5, inbox)
                    await link.subscribe([(request.ack_topic, 1)])
                properties = b""
                if link.version == 5:
                    await link.subscribe([(request.response_topic, 1)])
                    properties = request.properties()
                sent = link.publish(request.command_topic, request.payload(), 1, False, properties)
                assert sent is not None
                await sent
                body, topic = await inbox.reply
                return Reply(body, topic, link.version)
            finally:
                with contextlib.suppress(Exception):
                    await link.disconnect(timeout=1.0)
    except TimeoutError:
        return None


async def _open(target: Target, version: int, inbox: _Inbox) -> Link:
    login = target.login()
    packet: Connect | v5.Connect
    if version == 5:
        # An empty client id: the broker assigns one (Assigned Client Identifier).
        packet = v5.Connect(True, 60, "", None, login.username, login.password)
    else:
        client_id = f"fleet-cmd-{secrets.token_hex(4)}"
        packet = Connect("MQTT", 4, True, 60, client_id, None, login.username, login.password)
    link, _ = await Link.open(
        target.endpoint, packet, session=ClientSession(), on_message=inbox, ssl=login.ssl
    )
    return link
