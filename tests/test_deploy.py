"""deploy/: the Kubernetes manifests validate offline against the Kubernetes schemas and pass each pod's
index to `fleet run --shard auto` as the code reads it; the Grafana dashboard names real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from fleet.cli import cli
from fleet.schema import load_fleet_config
from fleet.simulator import Shard
from tests.prom import exposed_families

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def the(kind: str) -> dict[str, Any]:
    """The one object of `kind` among the manifests."""
    found = [obj for path in MANIFESTS for obj in objects(path) if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = the("Job")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env() -> dict[str, Any]:
    return {item["name"]: item for item in container()["env"]}


def run_options() -> dict[str, Any]:
    """The container's args as `fleet run` parses them (its options, by name)."""
    args = container()["args"]
    assert args[0] == "run"
    command = cli.get_command(click.Context(cli), "run")
    assert command is not None
    return command.make_context("run", list(args[1:]), resilient_parsing=False).params


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_object_validates_against_the_kubernetes_schemas(path: Path) -> None:
    """Each object of each manifest is valid for Kubernetes 1.37, strictly (no unknown fields)."""
    found = objects(path)
    assert found
    for obj in found:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_the_objects_and_sets_the_image() -> None:
    """kustomization.yaml applies every manifest but the after-the-run reader, and its `images` entry
    names the Job's image, so that the image is the one parameter to set."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"reports-reader.yaml"}
    assert [image["name"] for image in kustomization["images"]] == [container()["image"]]


def test_the_job_runs_one_shard_per_pod() -> None:
    """An Indexed Job with parallelism = completions = FLEET_SHARDS, whose pods take the index from
    the Job controller's annotation, and run `fleet run` with `--shard auto`."""
    spec = the("Job")["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == int(env()["FLEET_SHARDS"]["value"])
    index = env()["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert run_options()["shard"] == "auto"
    assert run_options()["shards"] is None  # the count comes from FLEET_SHARDS


def test_the_indexes_cover_the_configmap_fleet_exactly(tmp_path: Path) -> None:
    """The ConfigMap's fleet config is valid and is what the container reads; the shards of indexes
    0..N-1 (as `--shard auto` maps them) run each of its devices exactly once, and each pod writes
    its own report."""
    data = the("ConfigMap")["data"]
    config_path = Path(run_options()["config_path"])
    mounts = {mount["name"]: mount["mountPath"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in the("Job")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == the("ConfigMap")["metadata"]["name"]
    assert config_path.parent == Path(mounts["config"])
    local = tmp_path / config_path.name
    local.write_text(data[config_path.name])
    config = load_fleet_config(local)
    count = int(env()["FLEET_SHARDS"]["value"])
    shards = [Shard.from_index(str(index), str(count)) for index in range(count)]
    sizes = [sum(1 for device in range(config.size) if device in shard) for shard in shards]
    assert sum(sizes) == config.size == 200_000
    assert set(sizes) == {config.size // count}
    template = str(run_options()["report_path"])
    reports = {template.replace("$(JOB_COMPLETION_INDEX)", str(index)) for index in range(count)}
    assert len(reports) == count
    assert all(Path(report).parent == Path(mounts["reports"]) for report in reports)
    claim = volumes["reports"]["persistentVolumeClaim"]["claimName"]
    assert claim == the("PersistentVolumeClaim")["metadata"]["name"]
    assert "ReadWriteMany" in the("PersistentVolumeClaim")["spec"]["accessModes"]


def test_prometheus_finds_every_pod() -> None:
    """The pods listen for scrapes on all addresses at the port their prometheus.io annotations and
    the headless Service name, and hold the final figures for two 30 s scrape intervals."""
    options = run_options()
    template = the("Job")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == options["metrics_port"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert options["metrics_host"] == "0.0.0.0"
    assert options["metrics_hold"] >= 60
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports["metrics"] == options["metrics_port"]
    service = the("Service")["spec"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert [port["targetPort"] for port in service["ports"]] == ["metrics"]


def test_the_grafana_dashboard_names_only_exposed_metrics() -> None:
    """deploy/grafana-dashboard.json is valid JSON, and every metric its queries name is one the fleet
    or the broker exposes (histograms by their _bucket series)."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    families = exposed_families()
    named = {name for expr in exprs for name in re.findall(r"\b(?:fleet|mqtt_broker)_[a-z_]+", expr)}
    assert named
    for name in named:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in families or families.get(base) == "histogram", name
    assert "sum(fleet_devices_online)" in exprs
