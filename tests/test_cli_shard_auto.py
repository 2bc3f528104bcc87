"""`fleet run --shard auto` as real subprocesses: the shard comes from JOB_COMPLETION_INDEX, as in a
Kubernetes Indexed Job, and the count from --shards or FLEET_SHARDS."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.procs import CHILD_ENV, ROOT, fleet_argv

RUN_TIMEOUT = 30.0
SHARD_VARIABLES = ("JOB_COMPLETION_INDEX", "FLEET_SHARDS")
COUNTS = {"a": 5, "b": 4}
FLEET = """\
seed = 5

[broker]
port = 0
ws_port = 0
sys_interval = 0

[[groups]]
name = "a"
count = 5
interval = 0.2

[[groups]]
name = "b"
count = 4
interval = 0.3
qos = { telemetry = 1 }
"""


def fleet(*args: str | Path | int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m fleet ARGS` to completion with `env` added to the environment (bounded)."""
    without = {key: value for key, value in CHILD_ENV.items() if key not in SHARD_VARIABLES}
    return subprocess.run(
        fleet_argv(*args), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, cwd=ROOT,
        env=without | env,
    )  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return path


def test_auto_shards_add_up_to_the_whole_fleet(tmp_path: Path, config: Path) -> None:
    """Three pods' indexes 0, 1, 2 with FLEET_SHARDS=3 run shards 1/3, 2/3, 3/3, whose devices per
    group add up to exactly the devices of one process running the whole fleet."""
    whole = tmp_path / "whole.json"
    done = fleet("run", config, "--duration", 1, "--report", whole, env={})
    assert done.returncode == 0, done.stderr
    reports = []
    for index in range(3):
        path = tmp_path / f"shard-{index}.json"
        env = {"JOB_COMPLETION_INDEX": str(index), "FLEET_SHARDS": "3"}
        done = fleet("run", config, "--shard", "auto", "--duration", 1, "--report", path, env=env)
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(path.read_text()))
    assert [report["meta"]["shard"] for report in reports] == ["1/3", "2/3", "3/3"]
    single = json.loads(whole.read_text())
    for group, count in COUNTS.items():
        assert sum(report["groups"][group]["devices"] for report in reports) == count
        assert single["groups"][group]["devices"] == count
        assert sum(report["groups"][group]["connects"] for report in reports) == count


def test_shards_option_overrides_fleet_shards(tmp_path: Path, config: Path) -> None:
    """`--shards 2` with JOB_COMPLETION_INDEX=1 runs shard 2/2 even when FLEET_SHARDS says 3."""
    path = tmp_path / "out.json"
    env = {"JOB_COMPLETION_INDEX": "1", "FLEET_SHARDS": "3"}
    args = ("run", config, "--shard", "auto", "--shards", 2, "--duration", 0.5, "--report", path)
    done = fleet(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(path.read_text())["meta"]["shard"] == "2/2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_SHARDS": "4"}, "Error: --shard auto: JOB_COMPLETION_INDEX is not set (an Indexed Job "
         "sets it in each pod)"),
        ({"JOB_COMPLETION_INDEX": "0"}, "Error: --shard auto: give the number of shards with --shards N "
         "or FLEET_SHARDS"),
        ({"JOB_COMPLETION_INDEX": "4", "FLEET_SHARDS": "4"}, "Error: --shard auto: JOB_COMPLETION_INDEX "
         "'4': expected 0 to 3"),
    ],
)  # fmt: skip
def test_a_missing_or_bad_variable_is_a_one_line_error(
    config: Path, env: dict[str, str], message: str
) -> None:
    """Without JOB_COMPLETION_INDEX, without a shard count, or with an index out of range, `fleet run
    --shard auto` exits 1 with one line naming the variable, and starts nothing."""
    done = fleet("run", config, "--shard", "auto", "--duration", 1, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [message]


def test_shards_without_auto_is_a_usage_error(config: Path) -> None:
    """`--shards` with `--shard 1/2` is a usage error naming --shards."""
    done = fleet("run", config, "--shard", "1/2", "--shards", 2, "--duration", 1, env={})
    assert done.returncode == 2
    assert "--shards" in done.stderr
