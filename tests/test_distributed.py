"""End to end on the session's local Ray: a run of rotation + colorization + segmentation that
the tests watch, scrape and scale (module-scoped), then stop and resume. Faults each get a run
of their own: tests/test_faults.py."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import ray

from ps_trainer.core.checkpoint import CheckpointManager
from ps_trainer.data.streams import restart_number
from ps_trainer.run.launch import load_run_config, resume_from, start_coordinator, start_metrics
from ps_trainer.run.run_folder import RunFolder
from support import stop_run, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TASKS = ("rotation", "colorization", "segmentation")


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory, tiny):
    tmp = tmp_path_factory.mktemp("distributed")
    cfg = load_run_config(None, tiny(tmp, TASKS, extra=[
        "run.name=e2e", "run.max_updates=100000", "run.max_minutes=10", "eval.every_s=3"]))
    hub, port = start_metrics(cfg)
    coordinator = start_coordinator(cfg, None, hub)
    done = coordinator.run.remote()
    state = {"cfg": cfg, "coordinator": coordinator, "done": done, "port": port, "hub": hub}
    yield state
    stop_run(coordinator, done, hub)


def status(run):
    return ray.get(run["coordinator"].status.remote())


def handles(run) -> dict:
    return ray.get(run["coordinator"].handles.remote())


def test_trains_evaluates_and_checkpoints(run):
    folder = RunFolder(run["cfg"].run.out_dir)
    wait_for(lambda: (status(run).version or 0) >= 300, 150, what="300 updates")
    wait_for(lambda: any(r.get("miou") is not None for r in folder.records()), what="an evaluation")
    s = status(run)
    assert all(s.servers[0].applied[t] > 0 for t in TASKS)
    record = folder.records()[-1]
    assert 0.0 <= record["miou"] <= 1.0 and len(record["per_class_iou"]) == 6
    assert set(record["losses"]) == set(TASKS)
    assert CheckpointManager(folder.checkpoints, 3).latest() is not None
    wait_for(lambda: list(folder.previews.glob("step-*.png")) and folder.curves.exists(), 30,
             what="preview and curve PNGs")


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_metrics_endpoint_serves_the_run(run):
    def complete():
        text = scrape(run["port"])
        names = ['ps_updates_applied_total{run="e2e",server="0",task="rotation"}', "ps_staleness_updates_bucket",
                 "ps_apply_seconds_bucket", 'ps_push_bytes_total{run="e2e",task="colorization"',
                 "ps_pull_bytes_total", "ps_worker_step_seconds_bucket", 'ps_task_loss{',
                 'ps_task_weight{', 'ps_workers{run="e2e",task="segmentation"} 1.0', "ps_server_version",
                 "ps_eval_miou{run=\"e2e\"} ", "ps_checkpoint_seconds_bucket"]
        # the worker's timing histograms are observed, not only declared
        timed = all(re.search(name + r'_count\{[^}]*task="rotation"[^}]*\} [1-9]', text)
                    for name in ("ps_worker_pull_seconds", "ps_worker_push_wait_seconds"))
        return timed and all(n in text for n in names)
    wait_for(complete, 30, what="every metric on the endpoint")


DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"
# Series that may stay at zero in a healthy run: nothing rejected, skipped, restarted or pending.
MAY_BE_ZERO = {"ps_updates_rejected_total", "ps_images_skipped_total", "ps_actor_restarts_total",
               "ps_workers_pending"}


def _dashboard_series() -> set[str]:
    """The ps_* series names the Grafana dashboard's panels and variables query."""
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for top in dash["panels"] for p in (top, *top.get("panels", []))]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"]]
    return {n for e in exprs for n in re.findall(r"(?<![A-Za-z0-9_:])(ps_[A-Za-z0-9_:]*)", e)}


def test_every_series_the_dashboard_queries_is_recorded(run):
    """Not only declared: each series has samples of this run, histograms have observations,
    and counters and gauges have moved (except the few that stay 0 when all goes well)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = _dashboard_series()
    assert len(wanted) >= 20

    def missing() -> list[str]:
        samples: dict[str, list] = {}
        for family in text_string_to_metric_families(scrape(run["port"])):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        problems = []
        for name in sorted(wanted):
            mine = [s for s in samples.get(name, []) if s.labels.get("run") == "e2e"]
            if not mine:
                problems.append(f"{name}: no sample with run=e2e")
                continue
            if name.endswith(("_bucket", "_sum", "_count")):
                count = name.rsplit("_", 1)[0] + "_count"
                if not any(s.value > 0 for s in samples.get(count, [])):
                    problems.append(f"{name}: no observation")
            elif name not in MAY_BE_ZERO and not any(s.value > 0 for s in mine):
                problems.append(f"{name}: still 0")
        return problems

    try:
        wait_for(lambda: not missing(), 60, what="every dashboard series to be recorded")
    except AssertionError:
        raise AssertionError("; ".join(missing())) from None


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus not installed")
def test_a_real_prometheus_scrapes_the_endpoint(run, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: ps_trainer\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{run['port']}']\n")
    web = _free_port()
    proc = subprocess.Popen(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query():
            q = urllib.parse.quote('ps_server_version{job="ps_trainer"}')
            try:
                body = json.loads(urllib.request.urlopen(
                    f"http://127.0.0.1:{web}/api/v1/query?query={q}", timeout=2).read())
            except OSError:
                return None
            result = body["data"]["result"]
            return float(result[0]["value"][1]) if result else None
        assert wait_for(query, 60, what="Prometheus to scrape ps_server_version") > 0
    finally:
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def applied(run, task) -> int:
    return status(run).servers[0].applied[task]


def test_scale_up_and_down_changes_live_workers(run):
    coordinator = run["coordinator"]
    assert sum(ray.get(coordinator.scale.remote("rotation", 3)).values()) == 3
    workers = handles(run)["workers"]["rotation"]
    assert len(workers) == 3
    wait_for(lambda: all(ray.get(w.status.remote()).steps > 0 for w in workers), 90,
             what="the new rotation workers to push")
    assert status(run).workers["rotation"] == 3 and status(run).pending_workers["rotation"] == 0
    assert ray.get(coordinator.scale.remote("rotation", 1)) == {"running": 1, "pending": 0}
    assert len(handles(run)["workers"]["rotation"]) == 1
    # scale returns at once; each retired worker drains its pushes and is then ended
    for gone in workers[1:]:
        wait_for(lambda: _ended(gone), 60, what="a retired worker to end")
    with pytest.raises(ray.exceptions.RayTaskError, match="unknown task"):
        ray.get(coordinator.scale.remote("jigsaw", 2))


def _ended(actor) -> bool:
    try:
        ray.get(actor.ping.remote(), timeout=30)
        return False
    except ray.exceptions.RayActorError:
        return True


def test_cli_status_and_scale_reach_the_running_coordinator(run):
    address = ray.get_runtime_context().gcs_address
    base = [sys.executable, "-m", "ps_trainer.tools.cli"]
    out = subprocess.run(base + ["status", "--address", address], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)              # the typed status, printed as before
    assert printed["workers"]["segmentation"] == 1
    assert set(printed) == {"version", "servers", "workers", "pending_workers", "miou", "restarts",
                            "recovery_s", "restores", "snapshot_version", "elapsed_s", "done"}
    assert set(printed["servers"][0]) == {"index", "node", "version", "lr", "applied", "rejected",
                                          "staleness", "losses", "weights", "lost_parts", "staged",
                                          "push_buffers"}
    out = subprocess.run(base + ["scale", "--address", address, "--run", "e2e", "--task",
                                 "segmentation", "--workers", "2", "--wait-s", "90"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "segmentation: 2 workers running"
    assert status(run).workers["segmentation"] == 2
    assert ray.get(run["coordinator"].scale.remote("segmentation", 1)) == {"running": 1, "pending": 0}


def test_stop_writes_a_final_evaluation_then_resume_continues(run, tmp_path):
    run["coordinator"].stop.remote()
    summary = ray.get(run["done"], timeout=120)
    assert summary.runtime.done and summary.final["final"] is True
    assert summary.stopped_by == "stopped" and summary.miou == summary.final["miou"] is not None
    final_version = summary.final["step"]

    cfg, checkpoint = resume_from(run["cfg"].run.out_dir,
                                  ["run.name=e2e-resumed", f"run.max_updates={final_version + 60}"])
    assert checkpoint["servers"][0]["version"] == final_version
    coordinator = start_coordinator(cfg, checkpoint)
    try:
        assert ray.get(coordinator.status.remote()).version >= final_version
        # The resumed workers draw new batches, not those of the run's first steps. (Ask the
        # first to answer: with the first run's actors still alive, some wait for CPUs.)
        workers = [w for ws in ray.get(coordinator.handles.remote())["workers"].values()
                   for w in ws]
        answered, _ = ray.wait([w.status.remote() for w in workers], timeout=120)
        assert answered and ray.get(answered[0]).restart == restart_number(0, final_version)
        resumed = ray.get(coordinator.run.remote(), timeout=180)
        assert resumed.stopped_by == "max_updates" and resumed.final["step"] >= final_version + 60
    finally:
        ray.kill(coordinator)
