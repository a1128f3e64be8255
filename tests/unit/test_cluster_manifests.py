"""The cluster manifests under cluster/ are valid and hold the GPU profiles they are shipped for.

- the Ray cluster launcher YAML against Ray's own schema (`ray/autoscaler/ray-schema.json` of the
  installed Ray) and the checks `ray up` runs before it contacts the cloud;
- the KubeRay RayCluster / RayJob against our schema (cluster/kuberay/schema), and against the real
  KubeRay CRDs when KUBERAY_CRD_DIR points at `ray.io_rayclusters.yaml` / `ray.io_rayjobs.yaml`;
- cross-checks: each manifest's node shape holds the config it runs, the entrypoint's config loads,
  versions agree, token authentication is on.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from referencing import Registry, Resource

from rrm_ray.config import JobConfig
from rrm_ray.placement import missing_resources, placement_layout, unplaceable
from rrm_ray.validation import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay"
SCHEMA_DIR = KUBERAY / "schema"
MANIFESTS = {"RayCluster": KUBERAY / "raycluster.yaml", "RayJob": KUBERAY / "rayjob.yaml"}
IMAGE_ROOT = "/home/ray/rrm-ray"  # where cluster/docker/Dockerfile puts the repository


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    """Every violation as 'path: message', so a failure names the field."""
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


# -- Ray cluster launcher ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_schema() -> jsonschema.protocols.Validator:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_launcher_matches_rays_schema(ray_schema):
    assert _errors(ray_schema, _load(LAUNCHER)) == []


def test_launcher_passes_the_checks_of_ray_up():
    """`ray up` merges the provider defaults, then validates; both run offline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(_load(LAUNCHER)))
    validate_config(full)
    assert full["available_node_types"]["head"]["max_workers"] == 0


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(max_workers=-1), "max_workers: -1 is less than the minimum of 0"),
        (lambda c: c["available_node_types"]["gpu_8x"]["resources"].update(GPU="8"), "'8' is not of type"),
        (lambda c: c["available_node_types"]["gpu_8x"].update(min_worker=1), "'min_worker' was unexpected"),
        (lambda c: c.pop("provider"), "'provider' is a required property"),
        (lambda c: c.update(setup_command=["pip install x"]), "'setup_command' was unexpected"),
    ],
)
def test_launcher_schema_rejects_mistakes(ray_schema, mutate, expected):
    broken = _load(LAUNCHER)
    mutate(broken)
    assert any(expected in e for e in _errors(ray_schema, broken)), _errors(ray_schema, broken)


def test_launcher_holds_the_2x8_profile_with_token_auth():
    launcher = _load(LAUNCHER)
    cfg = load_config(REPO / "configs" / "grpo_gpu_2x8.yaml")
    gpu = launcher["available_node_types"]["gpu_8x"]
    assert gpu["resources"]["GPU"] == cfg.cluster.gpus_per_node
    # The driver checks a job against the nodes that exist when it starts: they must already be up.
    assert cfg.cluster.num_nodes <= gpu["min_workers"] <= gpu["max_workers"] <= launcher["max_workers"]
    nodes = [launcher["available_node_types"]["head"]["resources"]] + [
        gpu["resources"]
    ] * cfg.cluster.num_nodes
    _assert_fits(cfg, nodes)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(launcher[key])
        assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_TOKEN_PATH" in start, key
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # The checkout is synced from the directory `ray up` runs in: the repository root.
    assert launcher["file_mounts"]["~/rrm-ray"] == "." and (REPO / "pyproject.toml").is_file()
    setup = launcher["setup_commands"]
    lock = next(i for i, c in enumerate(setup) if "requirements/lock-gpu.txt" in c)  # the GPU pins first
    assert any("rrm-ray[gpu]" in c and "--no-deps" in c for c in setup[lock + 1 :])
    # /shared holds checkpoints and models the jobs load: writable by the cluster's user, not by others
    (shared,) = [c for c in launcher["initialization_commands"] if c.rstrip().endswith(" /shared")]
    mode = re.search(r"-m (\d+)", shared)[1]
    assert int(mode[-1]) & 2 == 0, shared
    assert "--port 5000" in " ".join(launcher["head_start_ray_commands"])  # the config's tracking.uri
    assert cfg.tracking.uri == "http://127.0.0.1:5000"


def _assert_fits(cfg: JobConfig, nodes: list[dict[str, float]]) -> None:
    totals: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            totals[key] = totals.get(key, 0) + value
    specs = placement_layout(cfg).groups
    assert missing_resources(specs, totals) == []
    assert unplaceable(specs, nodes) == []


# -- KubeRay ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuberay_schemas() -> dict[str, jsonschema.protocols.Validator]:
    docs = {p.stem: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    registry: Registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs.values()
    )
    out = {}
    for kind, stem in (("RayCluster", "raycluster"), ("RayJob", "rayjob")):
        jsonschema.Draft202012Validator.check_schema(docs[stem])
        out[kind] = jsonschema.Draft202012Validator(docs[stem], registry=registry)
    return out


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kuberay_manifest_matches_our_schema(kuberay_schemas, kind):
    manifest = _load(MANIFESTS[kind])
    assert manifest["kind"] == kind
    assert _errors(kuberay_schemas[kind], manifest) == []


def _workers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest["spec"]
    return spec.get("rayClusterSpec", spec)["workerGroupSpecs"]


def _cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"].get("rayClusterSpec", manifest["spec"])


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        (
            "RayCluster",
            lambda m: m.update(apiVersion="ray.io/v1alpha1"),
            "apiVersion: 'ray.io/v1' was expected",
        ),
        ("RayCluster", lambda m: m["spec"].pop("headGroupSpec"), "'headGroupSpec' is a required property"),
        (
            "RayCluster",
            lambda m: _cluster_spec(m)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "0 is not of type 'string'",  # KubeRay wants strings: num-cpus: "0"
        ),
        ("RayCluster", lambda m: _workers(m)[0].update(replica=2), "'replica' was unexpected"),
        ("RayCluster", lambda m: _workers(m)[0].pop("groupName"), "'groupName' is a required property"),
        ("RayCluster", lambda m: _workers(m)[0].update(groupName="GPU_8x"), "does not match"),
        (
            "RayCluster",
            lambda m: _workers(m)[0]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
                {"nvidia.com/gpu": "eight"}
            ),
            "'eight' is not valid",
        ),
        (
            "RayCluster",
            lambda m: m["spec"]["authOptions"].update(mode="password"),
            "'password' is not one of",
        ),
        ("RayJob", lambda m: m["spec"].update(submissionMode="K8sMode"), "'K8sMode' is not one of"),
        (
            "RayJob",
            lambda m: m["spec"].update(shutdownAfterJobFinish=True),
            "'shutdownAfterJobFinish' was unexpected",
        ),
        ("RayJob", lambda m: m["spec"].pop("rayClusterSpec"), "is not valid under any of the given schemas"),
        (
            "RayJob",
            lambda m: m["spec"].update(ttlSecondsAfterFinished="600"),
            "'600' is not of type 'integer'",
        ),
    ],
)
def test_kuberay_schema_rejects_mistakes(kuberay_schemas, kind, mutate, expected):
    broken = _load(MANIFESTS[kind])
    mutate(broken)
    errors = _errors(kuberay_schemas[kind], broken)
    assert any(expected in e for e in errors), errors


def _entrypoint_config(manifest: dict[str, Any]) -> JobConfig:
    """`rrm-ray train CONFIG overrides...` of a RayJob, loaded from this checkout."""
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:2] == ["rrm-ray", "train"], argv
    config = Path(argv[2])
    assert config.is_relative_to(IMAGE_ROOT), f"{config} is not inside the image's {IMAGE_ROOT}"
    return load_config(REPO / config.relative_to(IMAGE_ROOT), argv[3:])


def _pod_nodes(manifest: dict[str, Any], replicas_key: str) -> list[dict[str, float]]:
    """Ray resources per pod, as Ray derives them: CPU from num-cpus or the cpu limit, GPU from the limit."""
    cluster = _cluster_spec(manifest)
    groups = [(cluster["headGroupSpec"], 1)] + [(w, w[replicas_key]) for w in cluster["workerGroupSpecs"]]
    nodes = []
    for group, count in groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = float(group.get("rayStartParams", {}).get("num-cpus", limits["cpu"]))
        nodes += [{"CPU": cpus, "GPU": float(limits.get("nvidia.com/gpu", 0))}] * count
    return nodes


def test_rayjob_runs_the_2x8_profile_on_a_cluster_that_holds_it():
    job = _load(MANIFESTS["RayJob"])
    cfg = _entrypoint_config(job)
    assert cfg.cluster.address == "auto" and cfg.cluster.device == "cuda"
    workers = _workers(job)
    assert sum(w["replicas"] for w in workers) == cfg.cluster.num_nodes
    _assert_fits(cfg, _pod_nodes(job, "replicas"))
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_raycluster_scales_between_limits_and_holds_the_2x8_profile():
    cluster = _load(MANIFESTS["RayCluster"])
    cfg = load_config(REPO / "configs" / "grpo_gpu_2x8.yaml")
    for w in _workers(cluster):
        assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"], w["groupName"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    # The driver checks a job against the pods that exist when it starts: the minimum must hold it.
    _assert_fits(cfg, _pod_nodes(cluster, "minReplicas"))


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kuberay_manifests_agree_with_the_image_and_ray_version(kind):
    manifest = _load(MANIFESTS[kind])
    cluster = _cluster_spec(manifest)
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no actors beside the driver
    images = {
        c["image"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for c in group["template"]["spec"]["containers"]
    }
    assert len(images) == 1, images
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert any("--port 5000" in " ".join(c.get("args", [])) for c in head)  # the MLflow sidecar
    dockerfile = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in dockerfile
    assert re.search(rf"^WORKDIR {IMAGE_ROOT}$", dockerfile, re.M)
    assert "pip install --no-cache-dir -r requirements/lock-gpu.txt" in dockerfile
    assert f"rayproject/ray:{ray.__version__}-py311-gpu" == _load(LAUNCHER)["docker"]["image"]


# -- optional: the real KubeRay CRDs ----------------------------------------------------------------

CRD_DIR = os.environ.get("KUBERAY_CRD_DIR")
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def _strict(node: Any) -> Any:
    """An OpenAPI v3 CRD schema as kubectl's strict field validation applies it: objects with listed
    properties reject unknown keys unless marked x-kubernetes-preserve-unknown-fields."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.mark.skipif(not CRD_DIR, reason="set KUBERAY_CRD_DIR to a directory with the KubeRay CRD YAMLs")
@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kuberay_manifest_matches_the_real_crd(kind):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML
    crd = yaml.load((Path(CRD_DIR or ".") / CRD_FILES[kind]).read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is not spelled out in CRDs
    validator = jsonschema.Draft7Validator(schema)
    assert _errors(validator, _load(MANIFESTS[kind])) == []
