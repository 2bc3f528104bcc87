"""Test real-time streams: stream clients over MQTT, WebSocket, SSE and gRPC, and the pytest plugin.

`fleet.testing.streams` holds the clients; `fleet.testing.plugin` is the pytest11 entry point.
"""
