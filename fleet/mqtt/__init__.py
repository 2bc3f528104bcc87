"""The MQTT protocol, sans I/O: MQTT 5 beside the 3.1.1 codec of `fleet.packets`.

- `fleet.mqtt.properties`: MQTT 5 properties, their types, the packets each may appear in, and the
  "at most once" rule;
- `fleet.mqtt.reasons`: MQTT 5 reason codes, and which packet may carry which;
- `fleet.mqtt.v5`: MQTT 5 packet values, strict decoders for both directions, and encoders.

Both versions share the frame reader (`fleet.packets.FrameReader`), the topic rules (`fleet.topics`)
and the subscription tree (`fleet.routing`). A malformed packet raises `ProtocolError` naming the
statement of the MQTT 5.0 OASIS standard it breaks.
"""
