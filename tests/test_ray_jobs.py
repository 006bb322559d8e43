"""Ray Jobs, for real: a local head started with `ray start --head` (token authentication on,
its own ports and temp dir), `ray job submit --working-dir . -- ps-trainer train ...`, the
progress line in `ray job logs`, and `ray job stop` ending the run with a final checkpoint."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import free_ports, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_ID = "ps-trainer-job-test"


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End `proc` and every process it started in its group (here: one Ray head's daemons)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            continue
        # the group may outlive its leader: give the daemons the same grace, then kill
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


@pytest.fixture
def head():
    """A Ray head of this test only: token auth, dashboard (the job server) on 127.0.0.1."""
    pytest.importorskip("aiohttp", reason="the job server needs ray[default] "
                                          "(pip install -e '.[cluster]')")
    base = Path(tempfile.mkdtemp(prefix="psj"))   # short: Ray's socket paths must fit 107 bytes
    (base / "home").mkdir()
    env = dict(os.environ, HOME=str(base / "home"), RAY_TMPDIR=str(base / "t"),
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(base / "home/.ray/auth_token"),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    state = {"env": env, "base": base, "proc": None}
    try:
        # what `ray get-auth-token --generate` writes to ~/.ray/auth_token: 256 random bits
        token = base / "home/.ray/auth_token"
        token.parent.mkdir()
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        gcs, dashboard, client, agent, metrics, runtime_env = free_ports(6)
        state["address"] = f"http://127.0.0.1:{dashboard}"
        state["proc"] = proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
             "--num-cpus=2", "--disable-usage-stats"],
            env=env, cwd=base, stdout=open(base / "head.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for(lambda: proc.poll() is None and jobs(state, "list").returncode == 0, 120,
                 "the job server")
        yield state
    finally:
        if state["proc"] is not None:
            if state["proc"].poll() is None:
                jobs(state, "stop", JOB_ID, timeout_s=90)
            stop_process_group(state["proc"])
        shutil.rmtree(base, ignore_errors=True)


def jobs(head, command, *args, env=None, timeout_s=60) -> subprocess.CompletedProcess:
    """`ray job <command> --address <this head> <args>`."""
    try:
        return subprocess.run([RAY, "job", command, "--address", head["address"], *args],
                              env=env or head["env"], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, 124, "", str(err))


def test_ray_job_trains_logs_progress_and_stops_with_a_final_checkpoint(head, tiny):
    run_dir = head["base"] / "run"
    overrides = tiny(head["base"], ("rotation", "segmentation"), extra=[
        "run.name=job", f"run.out_dir={run_dir}", "run.max_minutes=5",
        "run.max_updates=1000000", "eval.every_s=3", "tasks.colorization.workers=0"])
    train = ["ps-trainer", "train", "--config", "configs/quickstart.yaml"]
    for item in overrides:
        train += ["--set", item]
    runtime_env = {"excludes": ["runs/", ".git"],
                   "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}}
    out = jobs(head, "submit", "--no-wait", "--submission-id", JOB_ID, "--working-dir", ".",
               "--runtime-env-json", json.dumps(runtime_env), "--", *train)
    assert out.returncode == 0, out.stdout + out.stderr

    seen = {"logs": ""}

    def progress():
        seen["logs"] = logs = jobs(head, "logs", JOB_ID).stdout
        assert "Traceback" not in logs, logs[-3000:]
        state = jobs(head, "status", JOB_ID).stdout.lower()
        assert "failed" not in state and "succeeded" not in state, state + logs[-3000:]
        lines = [ln for ln in logs.splitlines() if "ps_trainer.observe.progress: updates" in ln]
        return lines and int(lines[-1].split("updates ")[1].split()[0]) >= 20
    try:
        wait_for(progress, 300, "a progress line with 20 updates or more in `ray job logs`", 2)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{seen['logs'][-3000:]}") from None
    wait_for(lambda: any(run_dir.glob("checkpoints/step-*.pt")), 60, "a first checkpoint")

    # the job server keeps token authentication on: no token, no answer
    bare = {k: v for k, v in head["env"].items() if not k.startswith("RAY_AUTH")}
    bare["HOME"] = str(head["base"])   # no ~/.ray/auth_token there
    denied = jobs(head, "status", JOB_ID, env=bare)
    assert denied.returncode != 0 and "auth" in (denied.stdout + denied.stderr).lower()

    stopped = jobs(head, "stop", JOB_ID, timeout_s=90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "was stopped" in jobs(head, "status", JOB_ID).stdout
    logs = jobs(head, "logs", JOB_ID).stdout
    assert "interrupted: stopping workers and writing a final checkpoint" in logs, logs[-3000:]
    assert "final mIoU:" in logs, logs[-3000:]
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final.get("final") is True and Path(final["checkpoint"]).exists()
