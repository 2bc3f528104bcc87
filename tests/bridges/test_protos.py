"""The committed gRPC code under bridges/proto/ is what `python -m bridges.protogen` generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("mqtt_fleet/bridge/v1/bridge.proto")


def protogen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridges.protogen", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of protos/ and bridges/proto/ under `tmp_path`, so a test can change them."""
    protos, out = tmp_path / "protos", tmp_path / "out"
    shutil.copytree(ROOT / "protos", protos)
    shutil.copytree(ROOT / "bridges" / "proto", out, ignore=shutil.ignore_patterns("__pycache__"))
    return protos, out


def test_committed_code_is_current() -> None:
    """`--check` passes on the committed tree: the generated code matches the .proto sources."""
    result = protogen("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_after_a_proto_change(tmp_path: Path) -> None:
    """After a change to (a copy of) the proto, `--check` exits 1 and names the stale files."""
    protos, out = copy_tree(tmp_path)
    source = protos / PROTO
    source.write_text(
        source.read_text().replace(
            "message PublishResponse {}", "message PublishResponse {\n  uint64 id = 1;\n}"
        )
    )
    result = protogen("--check", "--protos", protos, "--out", out)
    assert result.returncode == 1
    assert "differs: mqtt_fleet/bridge/v1/bridge_pb2.py" in result.stderr
    assert "run `python -m bridges.protogen`" in result.stderr


def test_regenerating_makes_the_check_pass_again(tmp_path: Path) -> None:
    """Regenerating into a changed copy rewrites the stale files, removes orphans, and `--check` passes."""
    protos, out = copy_tree(tmp_path)
    source = protos / PROTO
    source.write_text(
        source.read_text().replace(
            "message PublishResponse {}", "message PublishResponse {\n  uint64 id = 1;\n}"
        )
    )
    orphan = out / "mqtt_fleet" / "bridge" / "v1" / "old_pb2.py"
    orphan.write_text("")
    assert (
        "no longer generated: mqtt_fleet/bridge/v1/old_pb2.py"
        in protogen("--check", "--protos", protos, "--out", out).stderr
    )

    assert protogen("--protos", protos, "--out", out).returncode == 0
    assert not orphan.exists()
    assert b"PublishResponse" in (out / "mqtt_fleet/bridge/v1/bridge_pb2.py").read_bytes()
    result = protogen("--check", "--protos", protos, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "__init__.py").read_bytes() == (ROOT / "bridges/proto/__init__.py").read_bytes()


def test_generated_modules_import_by_their_package_path() -> None:
    """The generated modules import as bridges.proto.mqtt_fleet.bridge.v1, with no sys.path change."""
    from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2, bridge_pb2_grpc

    assert bridge_pb2.Event.DESCRIPTOR.full_name == "mqtt_fleet.bridge.v1.Event"
    assert (
        bridge_pb2_grpc.FleetBridgeServiceStub.__module__
        == "bridges.proto.mqtt_fleet.bridge.v1.bridge_pb2_grpc"
    )
    assert not any(Path(entry).resolve() == ROOT / "bridges" / "proto" for entry in sys.path if entry)
