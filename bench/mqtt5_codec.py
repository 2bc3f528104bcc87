"""Measure the PyPI package `mqtt5` (a Rust MQTT 5 codec) against what fleet's codec must do.

Prints, for each malformed MQTT 5 packet a broker must refuse, whether `mqtt5.read` refuses it and
whether `fleet.mqtt` does; then the decode and encode speed of a 200-byte QoS 1 PUBLISH for
`mqtt5`, fleet's MQTT 5 codec and fleet's MQTT 3.1.1 codec. Run (a few seconds):

    .venv/bin/pip install mqtt5==0.8.0 && .venv/bin/python bench/mqtt5_codec.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import mqtt5

from fleet.errors import ProtocolError
from fleet.mqtt import v5
from fleet.packets import FrameReader, decode_client_packet, encode_publish
from tests.fleet.malformed5 import MALFORMED


def _mqtt5_verdict(data: bytes) -> str:
    """'refuses', 'ACCEPTS', or 'PANICS' (a Rust panic surfaces as a BaseException, not an Exception)."""
    try:
        packet, size = mqtt5.read(memoryview(data))
    except Exception:
        return "refuses"
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        return "PANICS"
    if size != len(data) or (
        isinstance(packet, mqtt5.DisconnectPacket) and int(packet.reason_code.value) >= 0x80
    ):
        return "refuses"
    return "ACCEPTS"


def _fleet_refuses(data: bytes) -> bool:
    try:
        for kind, flags, body in FrameReader(1 << 20).feed(data):
            v5.decode_client_packet(kind, flags, body)
    except ProtocolError:
        return True
    return False


def _rate(call: Callable[[], object]) -> float:
    number = 20_000
    best = min(timeit.repeat(call, number=number, repeat=5))
    return number / best


def main() -> None:
    print(f"{'malformed MQTT 5 packet':<66} mqtt5    fleet.mqtt")
    refused = {"mqtt5": 0, "fleet": 0}
    for name, data in MALFORMED:
        verdict, ours = _mqtt5_verdict(data), _fleet_refuses(data)
        refused["mqtt5"] += verdict == "refuses"
        refused["fleet"] += ours
        print(f"{name:<66} {verdict:<8} {'refuses' if ours else 'ACCEPTS'}")
    print(
        f"refused: mqtt5 {refused['mqtt5']}/{len(MALFORMED)}, fleet.mqtt {refused['fleet']}/{len(MALFORMED)}"
    )

    payload = b"x" * 200
    wire5 = mqtt5.PublishPacket(
        "fleet/thermo-0007/telemetry", payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=7
    ).write()
    wire4 = encode_publish(b"fleet/thermo-0007/telemetry", payload, 1, packet_id=7)
    kind5, flags5, body5 = FrameReader(1 << 20).feed(wire5)[0]
    kind4, flags4, body4 = FrameReader(1 << 20).feed(wire4)[0]
    view = memoryview(wire5)
    rates = {
        "decode mqtt5.read (v5)": _rate(lambda: mqtt5.read(view)),
        "decode fleet.mqtt.v5 (v5)": _rate(lambda: v5.decode_client_packet(kind5, flags5, body5)),
        "decode fleet.packets (3.1.1)": _rate(lambda: decode_client_packet(kind4, flags4, body4)),
        "encode mqtt5 PublishPacket.write (v5)": _rate(
            lambda: mqtt5.PublishPacket(
                "fleet/thermo-0007/telemetry", payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=7
            ).write()
        ),
        "encode fleet.mqtt.v5 (v5)": _rate(
            lambda: v5.encode_publish(b"fleet/thermo-0007/telemetry", payload, 1, packet_id=7)
        ),
        "encode fleet.packets (3.1.1)": _rate(
            lambda: encode_publish(b"fleet/thermo-0007/telemetry", payload, 1, packet_id=7)
        ),
    }
    print("200-byte QoS 1 PUBLISH, packets per second (best of 5 x 20,000, one core):")
    for name, rate in rates.items():
        print(f"  {name:<40} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
