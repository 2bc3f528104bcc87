"""Generated protobuf and gRPC code for the bridge's gRPC API; regenerate with `python -m bridges.protogen`.

The sources are under `protos/` (Buf layout, package `mqtt_fleet.bridge.v1`). Everything below this
package is generated and committed; `tests/bridges/test_protos.py` fails when it is stale. Import
the modules by their full path::

    from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2, bridge_pb2_grpc
"""
