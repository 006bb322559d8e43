"""deploy/kuberay/: the RayJob (and the RayCluster it makes), the run-folder volume and the
PodMonitor. The pod templates and the claim are checked against Kubernetes' published schemas
(the kubernetes-validate package ships them); the KubeRay and Prometheus Operator fields are
checked structurally and against the trainer's own config."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
IMAGE_ROOT = "/home/ray/ps-trainer"   # where the Dockerfile puts the checkout


def _load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def _cluster() -> dict:
    return _load("rayjob.yaml")["spec"]["rayClusterSpec"]


def _groups() -> dict:
    return {g["groupName"]: g for g in _cluster()["workerGroupSpecs"]}


def _templates() -> dict:
    templates = {"head": _cluster()["headGroupSpec"]["template"]}
    templates.update({name: g["template"] for name, g in _groups().items()})
    return templates


def _train_args() -> list[str]:
    words = shlex.split(_load("rayjob.yaml")["spec"]["entrypoint"])
    assert words[:2] == ["ps-trainer", "train"], words[:2]
    return words[2:]


def _run_config():
    """The config the job trains with, read from this checkout (the image's copy of it)."""
    from ps_trainer.tools.cli import _parser
    from ps_trainer.run.launch import load_run_config

    args = _parser().parse_args(["train", *_train_args()])
    assert args.config.startswith(IMAGE_ROOT + "/")
    return load_run_config(str(ROOT / args.config[len(IMAGE_ROOT) + 1:]), args.overrides)


def test_kinds_and_api_versions():
    assert {(d["apiVersion"], d["kind"]) for d in map(_load, ("rayjob.yaml", "pvc.yaml",
            "podmonitor.yaml"))} == {("ray.io/v1", "RayJob"), ("v1", "PersistentVolumeClaim"),
                                     ("monitoring.coreos.com/v1", "PodMonitor")}


@pytest.mark.parametrize("role", ["head", "cpu", "gpu"])
def test_pod_templates_match_the_kubernetes_schema(role):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    template = _templates()[role]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"ps-trainer-{role}", **template.get("metadata", {})},
           "spec": template["spec"]}
    kv.validate(pod, kv.latest_version(), strict=True)


def test_volume_claim_matches_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kv.validate(_load("pvc.yaml"), kv.latest_version(), strict=True)


def test_rayjob_has_what_kuberay_needs():
    spec = _load("rayjob.yaml")["spec"]
    assert spec["entrypoint"].strip() and spec["submissionMode"] in ("K8sJobMode", "HTTPMode",
                                                                     "SidecarMode")
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60  # final checkpoint
    cluster = spec["rayClusterSpec"]
    import ray
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265   # the job server
    for group in [head, *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), \
            "rayStartParams values must be strings"
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_a_cpu_and_a_gpu_worker_group():
    groups = _groups()
    gpu = {n for n, g in groups.items()
           if int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                  .get("nvidia.com/gpu", 0)) >= 1}
    assert gpu and set(groups) - gpu
    for name in gpu:
        assert groups[name]["rayStartParams"].get("num-gpus") == "1"
        assert ":gpu" in groups[name]["template"]["spec"]["containers"][0]["image"]


def test_token_auth_comes_from_a_secret():
    cluster = _cluster()
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["authOptions"]["secretName"]
    text = (KUBERAY / "rayjob.yaml").read_text()
    assert "RAY_AUTH_MODE=disabled" not in text and "auth_token=" in text
    assert not re.search(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?\w{16,}", text), "no token in the file"


def test_head_runs_the_server_and_writes_the_run_folder_to_the_volume():
    cfg = _run_config()
    head = _cluster()["headGroupSpec"]
    resources = yaml.safe_load(yaml.safe_load(head["rayStartParams"]["resources"]))
    assert 0 < cfg.server.resources["ps_server"] * cfg.server.actors <= resources["ps_server"]
    # no task worker fits next to the server and the evaluator on the head
    head_cpus = float(head["rayStartParams"]["num-cpus"])
    spare = head_cpus - cfg.server.num_cpus * cfg.server.actors - cfg.eval.num_cpus
    assert 0 <= spare < min(t.num_cpus for t in cfg.tasks.values() if t.workers)
    spec = head["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    on_volume = [path for path, name in mounts.items() if name in claims
                 and Path(cfg.run.out_dir).is_relative_to(path)]
    assert on_volume, f"run.out_dir {cfg.run.out_dir} is not on a persistent volume"
    assert claims[mounts[on_volume[0]]] == _load("pvc.yaml")["metadata"]["name"]


def test_prometheus_scrapes_the_metrics_port_of_the_head():
    cfg = _run_config()
    assert cfg.metrics.enabled and cfg.metrics.host == "0.0.0.0"
    monitor = _load("podmonitor.yaml")["spec"]
    [endpoint] = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "5s"
    templates = _templates()
    head = templates.pop("head")
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports[endpoint["port"]] == cfg.metrics.port
    wanted = monitor["selector"]["matchLabels"].items()
    assert wanted <= head["metadata"]["labels"].items()
    for template in templates.values():   # the workers serve no metrics endpoint
        assert not wanted <= template["metadata"]["labels"].items()


def test_dockerfile_pins_the_same_ray_and_torch_as_the_cluster_files():
    import ray

    text = (KUBERAY / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in text
    torch = set(re.findall(r"torch==([\w.]+)", text))
    launcher = set(re.findall(r"torch==([\w.]+)", (ROOT / "deploy/cluster-local.yaml").read_text()))
    assert len(torch) == 1 and torch == launcher
    assert f"{IMAGE_ROOT}[cluster]" in text
    images = {c["image"] for t in _templates().values() for c in t["spec"]["containers"]}
    assert {i.rsplit(":", 1)[1] for i in images} == {"cpu", "gpu"}
