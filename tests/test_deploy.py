"""The cluster deployment files in deploy/: launcher configs, entry point, Prometheus, Grafana."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CLUSTERS = ["cluster-local.yaml", "cluster-aws.yaml"]
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def _cluster(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _home(path: str) -> str:
    """A node path as the launcher writes it: $HOME/... and "$HOME/..." -> ~/..."""
    path = path.strip('"\'')
    return "~" + path[len("$HOME"):] if path.startswith("$HOME") else path


def _checkout(cfg: dict) -> str:
    """The node path the project checkout is mounted at (local side '.')."""
    mounts = [node for node, local in cfg["file_mounts"].items() if local.rstrip("/") == "."]
    assert len(mounts) == 1, f"expected one file_mounts entry for the checkout ('.'): {mounts}"
    return _home(mounts[0]).rstrip("/")


def _setup(cfg: dict, role: str) -> list[str]:
    """The setup commands a head or worker node runs, in order (as the launcher merges them)."""
    return list(cfg.get("setup_commands", [])) + list(cfg.get(f"{role}_setup_commands", []))


def _start(cfg: dict, role: str) -> list[str]:
    return list(cfg[f"{role}_start_ray_commands"])


# --------------------------------------------------------------------------- cluster launcher

@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_config_matches_ray_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    try:
        schema = json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("this ray does not ship ray/autoscaler/ray-schema.json")
    jsonschema.validate(_cluster(name), schema)


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_config_passes_the_launchers_own_checks(name):
    """What `ray up` does first: fill in the provider defaults, then validate."""
    pytest.importorskip("jsonschema")
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:
        pytest.skip("ray's autoscaler internals moved")
    validate_config(prepare_config(_cluster(name)))


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_config_has_what_the_launcher_needs(name):
    cfg = _cluster(name)
    assert cfg["cluster_name"]
    assert cfg["provider"]["type"] in ("local", "aws")
    assert cfg["auth"]["ssh_user"]
    head = " ".join(_start(cfg, "head"))
    workers = " ".join(_start(cfg, "worker"))
    assert "ray start --head" in head and "--port=6379" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers
    for local in cfg["file_mounts"].values():
        assert not Path(local).is_absolute() or local.startswith("~"), local


def test_local_cluster_lists_its_hosts():
    provider = _cluster("cluster-local.yaml")["provider"]
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    assert isinstance(provider["worker_ips"], list) and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]


def test_aws_cluster_has_a_cpu_head_and_gpu_workers():
    cfg = _cluster("cluster-aws.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]
           and t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker node type"
    for t in gpu:
        assert t["resources"].get("CPU", 0) >= 1  # the task workers ask for CPUs too
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"]
        assert t["node_config"]["InstanceType"]
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]
    # the autoscaler on the head launches the worker instances through boto3
    assert any("boto3" in c for c in _setup(cfg, "head"))


@pytest.mark.parametrize("name", CLUSTERS)
@pytest.mark.parametrize("role", ["head", "worker"])
def test_token_auth_is_on_wherever_ray_starts(name, role):
    cfg = _cluster(name)
    starts = [c for c in _start(cfg, role) if "ray start" in c]
    assert starts
    for cmd in starts:
        before = cmd[:cmd.index("ray start")]
        assert re.search(r"\bexport\b[^;&|]*\bRAY_AUTH_MODE=token\b", before), cmd
        match = re.search(r"\bRAY_AUTH_TOKEN_PATH=(\S+?);?(\s|$)", before)
        assert match, f"no RAY_AUTH_TOKEN_PATH before ray start: {cmd}"
        token = _home(match.group(1))
        assert token in {_home(k) for k in cfg["file_mounts"]}, \
            f"the token file {token} is not shipped with file_mounts"
        assert cfg["file_mounts"][token] == "~/.ray/auth_token"  # what get-auth-token writes


@pytest.mark.parametrize("name", CLUSTERS)
def test_drivers_on_the_nodes_use_the_token_and_no_secret_is_in_the_file(name):
    cfg = _cluster(name)
    text = (DEPLOY / name).read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
    assert not re.search(r"\bRAY_AUTH_TOKEN=", text), "pass the token as a file, not inline"
    # `ray submit` / `ray exec` run in a login shell that reads ~/.bashrc
    env = [c for c in _setup(cfg, "head") if "~/.bashrc" in c]
    assert env and "export RAY_AUTH_MODE=token" in env[0] and "RAY_AUTH_TOKEN_PATH" in env[0]
    assert any(re.search(r"chmod 600 ~/\.ray/auth_token", c) for c in _setup(cfg, "head"))


@pytest.mark.parametrize("name", CLUSTERS)
@pytest.mark.parametrize("role", ["head", "worker"])
def test_setup_installs_the_project_after_torch(name, role):
    cfg = _cluster(name)
    checkout = _checkout(cfg)
    commands = _setup(cfg, role)
    project = [i for i, c in enumerate(commands) if re.search(r"pip install -e (\S+)", c)
               and _home(re.search(r"pip install -e (\S+)", c).group(1)).startswith(checkout + "[")]
    assert project, f"no `pip install -e {checkout}[cluster]` in the {role} setup"
    assert "[cluster]" in commands[project[0]]
    torch = [i for i, c in enumerate(commands) if re.search(r"pip install .*\btorch\b", c)]
    assert torch and torch[0] < project[0], "install torch before the project"
    assert any(re.search(r'pip install "ray\[default\]==\d', c) for c in commands), \
        "pin the cluster's Ray version"


@pytest.mark.parametrize("name", CLUSTERS)
@pytest.mark.parametrize("role", ["head", "worker"])
def test_setup_makes_and_activates_its_own_python_before_installing(name, role):
    """Stock images: a venv made by setup, activated in ~/.bashrc (every later command, `ray
    submit`'s `python` included, sources it) before the first pip install."""
    commands = _setup(_cluster(name), role)
    make = [i for i, c in enumerate(commands) if re.search(r"python3 -m venv (\S+)", c)]
    assert make, "no `python3 -m venv` in the setup"
    venv = _home(re.search(r"python3 -m venv (\S+)", commands[make[0]]).group(1))
    activate = [i for i, c in enumerate(commands) if "~/.bashrc" in c and "/bin/activate" in c]
    assert activate, "the venv is not activated in ~/.bashrc"
    assert _home(re.search(r"\. \"?(\$HOME/[^/\"]+)", commands[activate[0]]).group(1)) == venv
    pips = [i for i, c in enumerate(commands) if "pip install" in c]
    assert pips and make[0] < activate[0] < min(pips)
    assert not any(re.search(r"\bsudo\b[^;|&]*\bpip\b", c) for c in commands)


@pytest.mark.parametrize("name", CLUSTERS)
def test_one_torch_and_one_ray_for_head_and_workers(name):
    cfg = _cluster(name)
    versions = {}
    for role in ("head", "worker"):
        text = " ".join(_setup(cfg, role))
        torch = set(re.findall(r"pip install torch==([\w.]+)", text))
        ray = set(re.findall(r'pip install "ray\[default\]==([\w.]+)"', text))
        assert len(torch) == 1 and len(ray) == 1, (role, torch, ray)
        versions[role] = (torch.pop(), ray.pop())
    assert versions["head"] == versions["worker"]
    import ray
    assert versions["head"][1] == ray.__version__, "the cluster files pin another Ray than the tests'"
    # CPU wheel on the head, the CUDA build (cuXY index) on GPU workers
    assert "whl/cpu" in " ".join(_setup(cfg, "head"))
    assert re.search(r"whl/cu\d+", " ".join(cfg["worker_setup_commands"]))


def test_aws_nodes_use_a_premade_security_group():
    """Ray's own group opens SSH to 0.0.0.0/0 and IpPermissions can only add to it."""
    cfg = _cluster("cluster-aws.yaml")
    assert "security_group" not in cfg["provider"]
    for name, node in cfg["available_node_types"].items():
        assert node["node_config"].get("SecurityGroupIds"), name
        assert node["node_config"].get("SubnetIds"), name
    text = (DEPLOY / "cluster-aws.yaml").read_text()
    assert "authorize-security-group-ingress" in text and "0.0.0.0/0" in text


@pytest.mark.parametrize("name", CLUSTERS)
def test_ray_starts_in_the_checkout_that_train_py_changes_into(name):
    """The driver (deploy/train.py) and the actors must share a working directory, or a
    relative run.out_dir splits the run folder between two places."""
    cfg = _cluster(name)
    checkout = _checkout(cfg)
    assert Path(checkout).name != "ps_trainer", "the mount would shadow the installed package"
    env = " ".join(c for c in _setup(cfg, "head") if "~/.bashrc" in c)
    match = re.search(r"PS_TRAINER_DIR=(\S+?)'", env)
    assert match and _home(match.group(1)) == checkout
    for role in ("head", "worker"):
        for cmd in (c for c in _start(cfg, role) if "ray start" in c):
            assert f"cd {checkout} &&" in cmd, cmd


# --------------------------------------------------------------------------- train.py

def _env_without_project():
    env = dict(os.environ)
    env.pop("PS_TRAINER_DIR", None)
    return env


def test_train_py_help_shows_the_train_options():
    out = subprocess.run([sys.executable, "deploy/train.py", "--help"], cwd=ROOT,
                         env=_env_without_project(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--config", "--resume", "--set", "--mode", "--address"):
        assert flag in out.stdout
    assert "usage: ps-trainer train" in out.stdout


def test_train_py_rejects_a_missing_project_dir(tmp_path):
    env = dict(_env_without_project(), PS_TRAINER_DIR=str(tmp_path / "missing"))
    out = subprocess.run([sys.executable, "deploy/train.py", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "PS_TRAINER_DIR" in out.stderr


def test_train_py_joins_the_cluster_from_the_project_dir(tmp_path, monkeypatch):
    import ps_trainer.tools.cli

    spec = importlib.util.spec_from_file_location("deploy_train", DEPLOY / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = {}

    def fake_main(argv):
        seen["argv"], seen["cwd"] = list(argv), os.getcwd()
        return 0

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(ps_trainer.tools.cli, "main", fake_main)
    monkeypatch.setenv("PS_TRAINER_DIR", str(tmp_path))
    assert module.main(["--config", "configs/quickstart.yaml"]) == 0
    assert seen["argv"] == ["train", "--address", "auto", "--config", "configs/quickstart.yaml"]
    assert Path(seen["cwd"]).resolve() == tmp_path.resolve()


# --------------------------------------------------------------------------- prometheus

def test_prometheus_scrapes_the_trainer_endpoint():
    from ps_trainer.config import MetricsConfig

    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["ps_trainer"]
    assert job.get("scrape_interval", cfg.get("global", {}).get("scrape_interval")) == "5s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.rsplit(":", 1)[1] == str(MetricsConfig().port) for t in targets)
    assert "0.0.0.0" in (DEPLOY / "prometheus.yml").read_text()  # the note on metrics.host


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheus_config():
    out = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- grafana

def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def _panels(dash: dict):
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def _expressions(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return [e for e in exprs if e]


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![A-Za-z0-9_:])(ps_[A-Za-z0-9_:]*)", without_strings))


def _exposed_names() -> set[str]:
    """Every series name the trainer's endpoint exposes (counters with _total, histograms with
    _bucket/_sum/_count), from the metric classes themselves."""
    from ps_trainer.observe import metrics as m

    registries = [m.ServerMetrics(0).registry, m.WorkerMetrics("t", 0).registry,
                  m.EvaluatorMetrics().registry, m.CoordinatorMetrics().registry]
    names = set()
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in HIST_SUFFIXES)
            else:
                names.add(family.name)
    return names


def test_dashboard_is_an_importable_grafana_dashboard():
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 45
    assert dash["title"] and dash["uid"]
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dash):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].strip()
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_dashboard_uses_only_the_trainers_metric_names():
    from ps_trainer.observe.metrics import METRIC_NAMES

    exposed = _exposed_names()
    exprs = _expressions(_dashboard())
    assert exprs
    for expr in exprs:
        names = _metric_names(expr)
        assert names, f"no ps_ metric in {expr!r}"
        for name in names:
            base = name
            for suffix in HIST_SUFFIXES:
                if name.endswith(suffix):
                    base = name[:-len(suffix)]
            assert base in METRIC_NAMES, f"{name!r} in {expr!r} is not in METRIC_NAMES"
            # histograms only through their series, counters with _total
            assert name in exposed, f"{name!r} in {expr!r} is not a series the endpoint exposes"


def test_dashboard_covers_the_run():
    used = set().union(*map(_metric_names, _expressions(_dashboard())))
    wanted = {"ps_updates_applied_total", "ps_updates_rejected_total",
              "ps_staleness_updates_bucket", "ps_apply_seconds_bucket", "ps_pull_bytes_total",
              "ps_push_bytes_total", "ps_worker_step_seconds_bucket", "ps_task_loss",
              "ps_task_weight", "ps_workers", "ps_server_version", "ps_eval_miou",
              "ps_eval_best_miou", "ps_actor_restarts_total", "ps_learning_rate"}
    assert wanted <= used, sorted(wanted - used)
    assert any(n.startswith("ps_checkpoint_seconds") for n in used)
    exprs = " ".join(_expressions(_dashboard()))
    assert "histogram_quantile" in exprs and "rate(ps_updates_applied_total" in exprs


def test_dashboard_selects_by_run():
    """Every query is filtered by the run variable and keeps runs apart when it aggregates."""
    dash = _dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "label_values(ps_server_version, run)" in variables["run"]["query"]["query"]
    for expr in _expressions(dash):
        if expr.startswith("label_values(ps_server_version, run)"):
            continue
        selectors = re.findall(r"(?<![A-Za-z0-9_:])ps_[A-Za-z0-9_:]*(\{[^}]*\})?", expr)
        assert selectors and all('run=~"$run"' in sel for sel in selectors), expr
        for by in re.findall(r"\bby \(([^)]*)\)", expr):
            assert "run" in [x.strip() for x in by.split(",")], expr
        assert not re.search(r"\b(sum|max|min|avg)\(", expr), f"aggregate by run: {expr}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_parses_every_dashboard_expression(tmp_path):
    exprs = [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- README section

def test_readme_refers_to_existing_files_and_commands():
    from ps_trainer.tools.cli import _parser

    text = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"\bdeploy/[\w.-]+", text)):
        assert (ROOT / path).exists(), path
    for path in set(re.findall(r"\bconfigs/[\w./-]+\.yaml", text)):
        assert (ROOT / path).exists(), path
    commands = set(_parser()._subparsers._group_actions[0].choices)
    for command in re.findall(r"ps-trainer (\w+)", text):
        assert command in commands, command
