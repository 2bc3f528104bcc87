"""`fleet validate`, `fleet run` and `fleet report merge` as real subprocesses (`python -m fleet`), each
bounded by a timeout: exit codes, one-line errors without tracebacks, reports, shards, workers, seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.auth import set_password
from fleet.device import Device
from fleet.schema import load_fleet_config
from tests.procs import FleetBroker, Paho, Proc, fleet_argv, free_port, run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
RUN_TIMEOUT = 30.0

# 9 devices in two groups, one with QoS 1 telemetry.
GROUPS = """\
[[groups]]
name = "a"
count = 5
interval = 0.2
jitter = 0

[groups.telemetry.t]
kind = "uniform"
min = 0
max = 1000
decimals = 3

[[groups]]
name = "b"
count = 4
interval = 0.3
qos = { telemetry = 1 }
"""
SIZE = 9
# The fleet on an embedded broker on free ports.
FLEET = "seed = 3\n\n[broker]\nport = 0\nws_port = 0\nsys_interval = 0\n\n" + GROUPS
# The fleet without a [broker] table, for `--broker URL`.
DEVICES_ONLY = "seed = 3\n\n" + GROUPS


def external(url: str, credentials: str = "") -> str:
    """The fleet with a [broker] table that targets `url`."""
    return f'seed = 3\n\n[broker]\nurl = "{url}"\n{credentials}\n' + GROUPS


def fleet(*args: str | Path | float, timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    """Run `python -m fleet ARGS` to completion (bounded); return (exit code, stdout, stderr)."""
    done = run(fleet_argv(*(str(arg) for arg in args)), timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def write(tmp_path: Path, text: str, name: str = "fleet.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_line(code: int, stderr: str) -> str:
    """Check a failed run: non-zero exit, no traceback, and one 'Error: ...' line, last; return it."""
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    return errors[0]


def load(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def assert_consistent(report: dict[str, Any], devices: int) -> None:
    """The fleet totals are the sums of the groups', and they describe a fleet that ran."""
    total, groups = report["fleet"], report["groups"].values()
    for key in ("devices", "connects", "reconnects", "connect_failures", "wills_expected"):
        assert total[key] == sum(group[key] for group in groups), key
    for key in ("published", "acked", "drops", "errors", "commands"):
        summed: dict[str, int] = {}
        for group in groups:
            for name, count in group[key].items():
                summed[name] = summed.get(name, 0) + count
        assert total[key] == summed, key
    assert total["devices"] == devices
    assert total["connects"] >= devices
    assert sum(total["published"].values()) > 0
    assert total["connect_latency_s"]["count"] == total["connects"]
    for qos, acked in total["acked"].items():
        assert acked <= total["published"][qos]


# fleet validate


def test_validate_prints_ok_for_every_shipped_config() -> None:
    """`fleet validate configs/*.toml` exits 0 and prints one ok line per file."""
    code, stdout, stderr = fleet("validate", *CONFIGS)
    assert code == 0, stderr
    for path in CONFIGS:
        assert any(line.startswith(f"{path}: ok") for line in stdout.splitlines()), (path, stdout)
    assert "Traceback" not in stderr


def test_validate_reports_each_bad_file_as_file_path_reason(tmp_path: Path) -> None:
    """Bad files print 'file: field.path: reason' each, good ones 'ok'; exit code 1, no traceback."""
    good = write(tmp_path, FLEET, "good.toml")
    bad_range = write(
        tmp_path,
        '[[groups]]\nname = "a"\ncount = 1\n[[groups]]\nname = "b"\ncount = 1\n'
        '[groups.telemetry.temperature]\nkind = "uniform"\nmin = 30\nmax = 25\n',
        "range.toml",
    )
    unknown = write(tmp_path, '[[groups]]\nname = "a"\ncount = 1\ncolour = "red"\n', "unknown.toml")
    broker_key = write(tmp_path, '[broker]\nportt = 1\n[[groups]]\nname = "a"\ncount = 1\n', "broker.toml")
    not_toml = write(tmp_path, "[[groups]\n", "syntax.toml")
    missing = tmp_path / "missing.toml"
    code, stdout, stderr = fleet("validate", good, bad_range, unknown, broker_key, not_toml, missing)
    assert code == 1
    assert "Traceback" not in stderr
    assert stdout.splitlines() == [f"{good}: ok, {SIZE} devices in 2 groups"]
    lines = stderr.strip().splitlines()
    assert lines[:4] == [
        f"{bad_range}: groups[1].telemetry.temperature.min: must be less than max (30 >= 25)",
        f"{unknown}: groups[0].colour: unknown key",
        f"{broker_key}: broker.portt: unknown key",
        lines[3],
    ]
    assert lines[3].startswith(f"{not_toml}: not valid TOML: ")
    assert lines[4:] == [f"{missing}: no such file"]


# fleet run


def test_run_with_embedded_broker_writes_a_consistent_report(tmp_path: Path) -> None:
    """`fleet run CONFIG --duration 2 --report out.json` on an embedded broker exits 0 with a sound report."""
    config = write(tmp_path, FLEET)
    out = tmp_path / "out.json"
    code, _, stderr = fleet("run", config, "--duration", 2, "--report", out)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    report = load(out)
    assert_consistent(report, SIZE)
    assert report["meta"]["seed"] == 3
    assert report["meta"]["devices"] == SIZE
    assert 1.9 <= report["meta"]["duration_s"] < 10
    assert report["fleet"]["reconnects"] == 0
    assert report["fleet"]["wills_expected"] == 0
    assert report["groups"]["b"]["published"]["1"] > 0
    assert set(report["groups"]) == {"a", "b"}


def test_run_against_nothing_listening_fails_with_one_line(tmp_path: Path) -> None:
    """`--broker mqtt://127.0.0.1:<closed port> --duration 3` exits non-zero with a one-line reason."""
    config = write(tmp_path, FLEET)
    out = tmp_path / "out.json"
    port = free_port()
    code, _, stderr = fleet(
        "run", config, "--broker", f"mqtt://127.0.0.1:{port}", "--duration", 3, "--report", out
    )
    line = error_line(code, stderr)
    assert "connect" in line
    assert f"127.0.0.1:{port}" in line


@pytest.fixture
def password_broker(tmp_path: Path, start_fleet_broker: Callable[..., FleetBroker]) -> FleetBroker:
    """`fleet broker` with a password file (alice / secret), so anonymous clients are refused."""
    passwords = tmp_path / "passwords"
    set_password(passwords, "alice", "secret")
    return start_fleet_broker("--port", 0, "--ws-port", 0, "--password-file", passwords)


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        ("", "not authorized (CONNACK return code 5)"),
        ('username = "alice"\npassword = "wrong"\n', "bad user name or password (CONNACK return code 4)"),
    ],
    ids=["anonymous", "wrong-password"],
)
def test_run_against_a_broker_that_refuses_fails_with_refused(
    tmp_path: Path, password_broker: FleetBroker, credentials: str, reason: str
) -> None:
    """A broker refusing the devices' CONNECT makes `fleet run` fail with one line: refused, and why."""
    url = f"mqtt://127.0.0.1:{password_broker.port}"
    config = write(tmp_path, external(url, credentials))
    code, _, stderr = fleet("run", config, "--duration", 3, timeout=RUN_TIMEOUT)
    line = error_line(code, stderr)
    assert "refused" in line
    assert reason in line


def test_run_with_the_right_password_connects(tmp_path: Path, password_broker: FleetBroker) -> None:
    """With the password file's credentials in [broker], the same fleet connects and exits 0."""
    url = f"mqtt://127.0.0.1:{password_broker.port}"
    config = write(tmp_path, external(url, 'username = "alice"\npassword = "secret"\n'))
    out = tmp_path / "out.json"
    code, _, stderr = fleet("run", config, "--duration", 1, "--report", out)
    assert code == 0, stderr
    assert_consistent(load(out), SIZE)


def test_run_with_a_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    """`fleet run` naming a config that does not exist exits non-zero with 'file: no such file'."""
    missing = tmp_path / "absent.toml"
    code, stdout, stderr = fleet("run", missing, "--duration", 1)
    assert error_line(code, stderr) == f"Error: {missing}: no such file"
    assert stdout == ""


def test_run_with_an_invalid_config_names_the_field(tmp_path: Path) -> None:
    """`fleet run` on an invalid config exits non-zero with 'file: field.path: reason' and starts nothing."""
    config = write(tmp_path, FLEET.replace("interval = 0.3", "interval = 0"))
    code, _, stderr = fleet("run", config, "--duration", 1)
    assert error_line(code, stderr).startswith(f"Error: {config}: groups[1].interval: ")
    assert "listening" not in stderr


@pytest.mark.parametrize("shard", ["3/2", "0/2", "1", "a/b"])
def test_run_with_a_bad_shard_is_a_usage_error(tmp_path: Path, shard: str) -> None:
    """A --shard that is not I/N with 1 <= I <= N is a usage error naming --shard."""
    config = write(tmp_path, FLEET)
    code, _, stderr = fleet("run", config, "--shard", shard, "--duration", 1)
    assert code == 2
    assert "--shard" in stderr
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def shard_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real reports, from runs side by side: shards 1/2 and 2/2 of FLEET, then for the refusals shard 2/2
    with --seed 4, shard 2/2 of a config with one more device, shard 2/3, and a `fleet stress` report.
    What each run printed on stdout, without a terminal, is beside its report (`.stdout`)."""
    tmp = tmp_path_factory.mktemp("shards")
    config = write(tmp, FLEET)
    bigger = write(tmp, FLEET.replace("count = 4", "count = 5"), "bigger.toml")
    runs = {
        "1/2": ("run", config, "--shard", "1/2"),
        "2/2": ("run", config, "--shard", "2/2"),
        "seed 4": ("run", config, "--shard", "2/2", "--seed", 4),
        "bigger": ("run", bigger, "--shard", "2/2"),
        "2/3": ("run", config, "--shard", "2/3"),
        "stress": ("stress", config, "--scenario", "clean"),
    }
    paths = {name: tmp / f"{name.replace('/', '-of-').replace(' ', '-')}.json" for name in runs}
    started = [
        Proc(fleet_argv(*args, "--duration", 1.5, "--report", paths[name])) for name, args in runs.items()
    ]
    try:
        for proc, path in zip(started, paths.values(), strict=True):
            assert proc.wait(RUN_TIMEOUT) == 0, proc.describe()
            path.with_suffix(".stdout").write_text(proc.stdout.text)
    finally:
        for proc in started:
            proc.stop()
    return paths


def test_tables_keep_each_row_on_one_line_without_a_terminal(shard_reports: dict[str, Path]) -> None:
    """Piped, without COLUMNS, the stress and run tables are as wide as they need: no cell wraps."""
    stress = shard_reports["stress"].with_suffix(".stdout").read_text().splitlines()
    for session in ("QoS 0, clean session", "QoS 1, clean session"):
        assert any(line.lstrip("│ ").startswith(session) for line in stress), "\n".join(stress)
    assert any("connections died on their own; their wills count neither way)" in line for line in stress), (
        "\n".join(stress)
    )
    summary = shard_reports["1/2"].with_suffix(".stdout").read_text().splitlines()
    assert summary[0].strip() == "fleet run"
    for row in ("published QoS 0 / 1 / 2", "connect ms p50 / p99", "reconnect ms p50 / p99"):
        assert any(line.lstrip("│ ").startswith(row) for line in summary), "\n".join(summary)


def test_shard_reports_merge_into_the_whole_fleet(tmp_path: Path, shard_reports: dict[str, Path]) -> None:
    """`--shard 1/2` and `--shard 2/2` run disjoint parts; `fleet report merge A B -o M` counts the fleet."""
    paths = [shard_reports["1/2"], shard_reports["2/2"]]
    first, second = (load(path) for path in paths)
    assert [first["meta"]["shard"], second["meta"]["shard"]] == ["1/2", "2/2"]
    assert first["fleet"]["devices"] + second["fleet"]["devices"] == SIZE
    assert abs(first["fleet"]["devices"] - second["fleet"]["devices"]) <= 1
    assert_consistent(first, first["fleet"]["devices"])

    merged_path = tmp_path / "merged.json"
    code, _, stderr = fleet("report", "merge", paths[0], paths[1], "-o", merged_path)
    assert code == 0, stderr
    merged = load(merged_path)
    assert_consistent(merged, SIZE)
    for key in ("connects", "wills_expected"):
        assert merged["fleet"][key] == first["fleet"][key] + second["fleet"][key]
    assert merged["fleet"]["connect_latency_s"]["count"] == SIZE
    assert [meta["shard"] for meta in merged["meta"]["merged"]] == ["1/2", "2/2"]


def refused_merge(tmp_path: Path, *paths: Path) -> str:
    """Run `fleet report merge PATHS -o OUT`; check that it failed with one line and wrote nothing."""
    out = tmp_path / "merged.json"
    code, stdout, stderr = fleet("report", "merge", *paths, "-o", out)
    assert not out.exists()
    assert stdout == ""
    return error_line(code, stderr)


def test_report_merge_refuses_the_same_file_twice(tmp_path: Path, shard_reports: dict[str, Path]) -> None:
    """`fleet report merge A B A` would count A twice: one line naming A, no report."""
    first, second = shard_reports["1/2"], shard_reports["2/2"]
    assert refused_merge(tmp_path, first, second, first) == (
        f"Error: {first}: given twice (also as {first}): it would count twice"
    )


def test_report_merge_refuses_a_shard_given_twice(tmp_path: Path, shard_reports: dict[str, Path]) -> None:
    """A copy of shard 1/2's report under another name is the same shard: one line naming the copy."""
    first, second = shard_reports["1/2"], shard_reports["2/2"]
    copy = tmp_path / "copy.json"
    copy.write_text(first.read_text())
    assert refused_merge(tmp_path, first, second, copy) == (
        f"Error: {copy}: shard 1/2 is also in {first}: it would count twice"
    )


def test_report_merge_refuses_a_merged_report_with_one_of_its_shards(
    tmp_path: Path, shard_reports: dict[str, Path]
) -> None:
    """A merged report counts its shards: merging it with one of them again is refused, naming the shard."""
    first, second = shard_reports["1/2"], shard_reports["2/2"]
    merged = tmp_path / "both.json"
    assert fleet("report", "merge", first, second, "-o", merged)[0] == 0
    assert refused_merge(tmp_path, merged, second) == (
        f"Error: {second}: shard 2/2 is also in {merged}: it would count twice"
    )


def test_report_merge_refuses_a_stress_report(tmp_path: Path, shard_reports: dict[str, Path]) -> None:
    """A `fleet stress` report is not a shard of a run: one line naming it, not KeyError('groups')."""
    stress = shard_reports["stress"]
    assert refused_merge(tmp_path, shard_reports["1/2"], stress) == (
        f"Error: {stress}: a `fleet stress` report; only `fleet run` reports merge"
    )


def test_report_merge_of_a_shard_cut_short_is_incomplete_and_fails(
    tmp_path: Path, shard_reports: dict[str, Path]
) -> None:
    """A shard cut short (complete: false) makes the merged report complete: false, and merge exits 1."""
    first, second = shard_reports["1/2"], shard_reports["2/2"]
    cut = tmp_path / "cut.json"
    data = load(second)
    data["meta"]["complete"] = False
    cut.write_text(json.dumps(data))
    out = tmp_path / "merged.json"
    code, _, stderr = fleet("report", "merge", first, cut, "-o", out)
    assert error_line(code, stderr) == (
        "Error: shard 2/2 was cut short: the merged report says complete: false"
    )
    assert load(out)["meta"]["complete"] is False


def test_report_merge_reads_a_directory_of_shard_reports(
    tmp_path: Path, shard_reports: dict[str, Path]
) -> None:
    """`fleet report merge DIR` merges the *.json reports in DIR, as if each were named."""
    folder = tmp_path / "reports"
    folder.mkdir()
    for name in ("1/2", "2/2"):
        (folder / shard_reports[name].name).write_text(shard_reports[name].read_text())
    out = tmp_path / "merged.json"
    code, _, stderr = fleet("report", "merge", folder, "-o", out)
    assert code == 0, stderr
    assert [meta["shard"] for meta in load(out)["meta"]["merged"]] == ["1/2", "2/2"]


def test_report_merge_refuses_missing_shards_unless_partial(
    tmp_path: Path, shard_reports: dict[str, Path]
) -> None:
    """Shard 1/2 alone is half a fleet: refused with one line naming 2/2; --partial merges it and says so."""
    first = shard_reports["1/2"]
    assert refused_merge(tmp_path, first) == (
        f"Error: {first}: shard 2/2 of its run is missing: "
        "give every shard, or --partial to merge what is here"
    )
    out = tmp_path / "partial.json"
    code, _, stderr = fleet("report", "merge", "--partial", first, "-o", out)
    assert code == 0, stderr
    assert load(out)["meta"]["missing"] == ["2/2"]


def test_report_merge_refuses_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    """JSON that is no report, and a file that is no JSON, are each refused with one line naming the file."""
    other = write(tmp_path, '{"name": "not a report"}\n', "other.json")
    assert refused_merge(tmp_path, other) == f'Error: {other}: not a fleet run report: it has no "groups"'
    toml = write(tmp_path, FLEET, "fleet.toml")
    assert refused_merge(tmp_path, toml).startswith(f"Error: {toml}: not a fleet run report: ")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("seed 4", "the seed differs from {first}'s (4 here, 3 there): only the shards of one run merge"),
        ("bigger", "the fleet config differs from {first}'s ("),
        ("2/3", "shard 2/3 is of 3 shards, {first}'s of 2: only the shards of one run merge"),
    ],
    ids=["seed", "config", "shard-count"],
)
def test_report_merge_refuses_shards_of_another_run(
    tmp_path: Path, shard_reports: dict[str, Path], name: str, reason: str
) -> None:
    """A shard run with another seed, config or shard count is not part of the run: one line naming it."""
    first, other = shard_reports["1/2"], shard_reports[name]
    line = refused_merge(tmp_path, first, other)
    assert line.startswith(f"Error: {other}: " + reason.format(first=first)), line


def test_workers_run_the_whole_fleet(tmp_path: Path) -> None:
    """`fleet run --workers 2` spreads the fleet over two processes and reports every device."""
    config = write(tmp_path, FLEET)
    out = tmp_path / "out.json"
    code, _, stderr = fleet("run", config, "--workers", 2, "--duration", 2, "--report", out)
    assert code == 0, stderr
    report = load(out)
    assert_consistent(report, SIZE)
    assert report["meta"]["workers"] == 2
    assert report["fleet"]["connects"] == SIZE


def test_seed_option_changes_device_values(
    tmp_path: Path, start_fleet_broker: Callable[..., FleetBroker], paho_client: Callable[..., Paho]
) -> None:
    """`--seed 11` overrides the config's seed: the devices send the values seed 11 gives, not seed 3's."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
    observer = paho_client("seed-observer")
    observer.connect(broker.port)
    assert observer.subscribe("fleet/+/telemetry", 1) == [1]
    config = write(tmp_path, DEVICES_ONLY)
    url = f"mqtt://127.0.0.1:{broker.port}"
    out = tmp_path / "out.json"
    code, _, stderr = fleet("run", config, "--broker", url, "--seed", 11, "--duration", 1.5, "--report", out)
    assert code == 0, stderr
    assert load(out)["meta"]["seed"] == 11

    group = load_fleet_config(config).groups[0]  # "a": a uniform metric, no jitter
    expected: dict[str, Any] = {}
    with_config_seed: dict[str, Any] = {}
    for index in range(group.count):
        for seed, into in ((11, expected), (3, with_config_seed)):
            device = Device(group, index, seed)
            device.next_delay()  # as the simulator does before each message
            into[device.id] = json.loads(device.telemetry(0.0))["values"]
    assert expected != with_config_seed
    seen: dict[str, Any] = {}
    while set(seen) < set(expected):  # each message() waits a bounded time
        body = json.loads(observer.message().payload)
        if body["seq"] == 0 and body["device"] in expected:
            seen[body["device"]] = body["values"]
    assert seen == expected
