"""The cluster launcher, for real: `ray up` a local-provider cluster derived from
deploy/cluster-local.yaml (head 127.0.0.1, no workers) over SSH to an sshd started for this test,
`ray submit deploy/train.py`, `ray exec` status and scale while it trains, the metrics endpoint,
`ray rsync-down` of the run folder, then `ray down`.

The test's sshd runs in a PID namespace of its own (`unshare --pid`): `ray stop`, which the
cluster file and `ray down` run on the head, kills every Ray process it can see, and there it sees
only this cluster's. The "node" gets its own home and Ray temp dir (sshd's SetEnv), so nothing of
the machine's own ~/.bashrc, ~/.ray or /tmp/ray is touched. Needs root, sshd, rsync and unshare
(CI installs openssh-server and rsync); otherwise it skips and says which is missing.
"""
from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from support import free_ports, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BUDGET_S = 480          # the whole test, from sshd to ray down

# stdin/stdout <-> 127.0.0.1:PORT: the launcher's ssh reaches the test's sshd on a free port
RELAY = """\
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (sshd, and a PID namespace for the node)"
    for tool, package in ((SSHD, "openssh-server"), ("ssh", "openssh-client"),
                          ("ssh-keygen", "openssh-client"), ("rsync", "rsync"),
                          ("unshare", "util-linux")):
        if not shutil.which(tool) and not os.access(tool, os.X_OK):
            return f"{tool} not installed (apt-get install {package})"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a PID namespace for the node: {probe.stderr.strip()}"
    return ""


class Node:
    """sshd on 127.0.0.1:<free port>, in its own PID namespace, with a key made for the test."""

    def __init__(self, base: Path):
        self.base = base
        self.home, self.tmp = base / "nh", base / "nt"
        self.home.mkdir()
        # the node reaches package indexes the way this machine does (pip's config and PIP_*)
        for config in (Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf"):
            if config.exists():
                target = self.home / config.relative_to(Path.home())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(config, target)
        passed = " ".join(f'{k}="{v}"' for k, v in os.environ.items()
                          if k.startswith("PIP_") and '"' not in v)
        self.port = free_ports(1)[0]
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(base / "host_key")], check=True)
        subprocess.run([*keygen, "-f", str(base / "user_key")], check=True)
        shutil.copy(base / "user_key.pub", base / "authorized_keys")
        (base / "relay.py").write_text(RELAY)
        (base / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {base}/host_key\n"
            f"AuthorizedKeysFile {base}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"StrictModes no\nPidFile {base}/sshd.pid\n"
            f"SetEnv HOME={self.home} RAY_TMPDIR={self.tmp} RAY_USAGE_STATS_ENABLED=0 {passed}\n")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)   # sshd's privilege separation dir
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", SSHD, "-D", "-e",
             "-f", str(base / "sshd_config")],
            stdout=open(base / "sshd.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill the namespace's first process: the kernel then ends every process in it."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for pid in (children.read_text().split() if children.exists() else []):
            os.kill(int(pid), signal.SIGKILL)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def write_token(path: Path) -> None:
    """What `ray get-auth-token --generate` writes (256 random bits, hex), without starting a
    Python that imports Ray for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)


def cluster_config(node: Node, name: str, ports: list[int]) -> dict:
    """deploy/cluster-local.yaml for one head on 127.0.0.1 reached through the test's sshd."""
    cfg = yaml.safe_load((ROOT / "deploy" / "cluster-local.yaml").read_text())
    cfg["cluster_name"] = name
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(node.base / "user_key"),
                   "ssh_proxy_command": f"{sys.executable} {node.base / 'relay.py'} {node.port}"}
    # The venv from this interpreter and its packages (torch, ray): no downloads in a test.
    venv = f"{sys.executable} -m venv --system-site-packages"
    cfg["setup_commands"] = [c.replace("python3 -m venv", venv) for c in cfg["setup_commands"]]
    assert any(venv in c for c in cfg["setup_commands"])
    # pip finds ray installed there and so writes no `ray` command into the venv: write it
    script = ("printf '#!%s\\nimport sys\\nfrom ray.scripts.scripts import main\\n"
              "sys.exit(main())\\n' \"$VIRTUAL_ENV/bin/python\" > \"$VIRTUAL_ENV/bin/ray\" && "
              "chmod +x \"$VIRTUAL_ENV/bin/ray\"")
    ray_pin = [i for i, c in enumerate(cfg["setup_commands"]) if 'pip install "ray[' in c]
    cfg["setup_commands"].insert(ray_pin[0] + 1, script)
    # ... so torch is there already: no need of (nor maybe a route to) PyTorch's wheel index
    for role in ("head", "worker"):
        key = f"{role}_setup_commands"
        cfg[key] = [re.sub(r"(pip install torch==\S+) --index-url \S+", r"\1", c) for c in cfg[key]]
    # Ports of its own, so it cannot meet another Ray on this machine.
    gcs, dashboard, client, agent, metrics, runtime_env = ports
    extra = (f"--port={gcs} --dashboard-host=127.0.0.1 --dashboard-port={dashboard} "
             f"--ray-client-server-port={client} --dashboard-agent-listen-port={agent} "
             f"--metrics-export-port={metrics} --runtime-env-agent-port={runtime_env} "
             "--num-cpus=2")
    starts = [c.replace("--port=6379", extra) for c in cfg["head_start_ray_commands"]]
    assert starts != cfg["head_start_ray_commands"]
    cfg["head_start_ray_commands"] = starts
    return cfg


@pytest.fixture
def launcher():
    reason = _missing()
    if reason:
        pytest.skip(f"no launcher test: {reason}")
    base = Path(tempfile.mkdtemp(prefix="psl"))   # short: Ray's socket paths must fit 107 bytes
    node = None
    env = dict(os.environ, HOME=str(base / "lh"), RAY_TMPDIR=str(base / "lt"),
               RAY_USAGE_STATS_ENABLED="0")
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PS_TRAINER_DIR"):
        env.pop(key, None)
    try:
        node = Node(base)
        write_token(base / "lh/.ray/auth_token")   # ~/.ray/auth_token, shipped to the head
        name = f"pstest-{os.getpid()}"
        path = base / "cluster.yaml"
        path.write_text(yaml.safe_dump(cluster_config(node, name, free_ports(6))))
        yield {"env": env, "config": str(path), "node": node, "base": base}
    finally:
        if node is not None:
            if (base / "cluster.yaml").exists():
                ray(env, "down", "-y", str(base / "cluster.yaml"), timeout_s=120)
            node.stop()
        leftovers = _end_leftovers(base)
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"Ray or sshd left running: {leftovers}"


def _end_leftovers(base: Path, grace_s: float = 20.0) -> list[str]:
    """Wait for this test's processes to end (ssh keeps its shared connection, and with it the
    relay, for a few seconds), kill what remains; returns what was a Ray or sshd process."""
    deadline = time.monotonic() + grace_s
    while (left := _processes_under(base)) and time.monotonic() < deadline:
        time.sleep(1)
    for line in left:
        try:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [p for p in left if "relay.py" not in p]


def _processes_under(base: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmd and "pytest" not in cmd:
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def ray(env, *args, timeout_s=120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([RAY, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        return subprocess.CompletedProcess(err.cmd, 124, out or "", f"timed out: {err}")


def test_ray_up_submit_exec_and_down_on_a_local_provider(launcher, tiny):
    start = time.monotonic()
    env, config, node = launcher["env"], launcher["config"], launcher["node"]
    left = lambda: max(10.0, BUDGET_S - (time.monotonic() - start))  # noqa: E731

    up = ray(env, "up", "-y", "--no-config-cache", config, timeout_s=left())
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    checkout = node.home / "ps-trainer"
    assert (checkout / "deploy" / "train.py").exists() and (node.home / ".ray/auth_token").exists()

    # the head imports the checkout it was given, from the venv the setup made
    where = ray(env, "exec", config, "python -c 'import ps_trainer, sys; "
                "print(ps_trainer.__file__, sys.prefix)'", timeout_s=60)
    assert where.returncode == 0, where.stdout + where.stderr
    assert f"{checkout}/ps_trainer/__init__.py {node.home}/ps-trainer-venv" in where.stdout

    metrics_port = free_ports(1)[0]
    overrides = tiny(Path("runs"), ("rotation", "segmentation"), extra=[
        "run.name=launcher", "run.max_minutes=1.5", "run.max_updates=1000000",
        "eval.every_s=5", f"metrics.port={metrics_port}", "tasks.colorization.workers=0",
        "tasks.self_training.workers=0"])
    args = ["--config", "configs/quickstart.yaml"]
    for item in overrides:
        args += ["--set", item]
    # `ray submit` joins the script's arguments into one shell command: quote them
    # (to a file: ssh's shared connection outlives `ray submit` and would hold a pipe open)
    log = launcher["base"] / "submit.log"
    submit = subprocess.Popen([RAY, "submit", config, "deploy/train.py", "--",
                               *map(shlex.quote, args)], env=env, cwd=ROOT,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        def status():
            out = ray(env, "exec", config, "ps-trainer status", timeout_s=60)
            match = re.search(r"^\{.*^\}", out.stdout, re.S | re.M)
            return json.loads(match.group(0)) if out.returncode == 0 and match else None
        # both workers answering (a loaded machine may start one well before the other)
        first = wait_for(lambda: (s := status()) and (s["version"] or 0) > 0
                         and s["workers"].get("rotation") and s["workers"].get("segmentation")
                         and s, 120, "`ray exec ps-trainer status` to show a training run")
        assert {t: n for t, n in first["workers"].items() if n} == {"rotation": 1, "segmentation": 1}
        scaled = ray(env, "exec", config, "ps-trainer scale --task rotation --workers 2",
                     timeout_s=60)
        assert "rotation: 2 workers" in scaled.stdout, scaled.stdout + scaled.stderr
        assert status()["workers"]["rotation"] == 2

        def scrape():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                              timeout=5).read().decode()
            except OSError:
                return None
        text = wait_for(lambda: (t := scrape()) and 'ps_workers{run="launcher",task="rotation"} 2.0'
                        in t and t, 30, "the head's metrics endpoint")
        assert re.search(r'ps_server_version\{run="launcher",server="0"\} [1-9]', text)

        submit.wait(timeout=left())
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()
    output = log.read_text(errors="replace")
    assert submit.returncode == 0, output[-4000:]
    assert "final mIoU:" in output

    # the run folder is on the head, under the checkout; copy it back as the README says
    local = launcher["base"] / "copy"
    down = ray(env, "rsync-down", config, "~/ps-trainer/runs/run/", f"{local}/", timeout_s=60)
    assert down.returncode == 0, down.stdout + down.stderr
    records = [json.loads(ln) for ln in (local / "metrics.jsonl").read_text().splitlines()]
    assert records[-1].get("final") is True and records[-1]["miou"] is not None
    assert list((local / "checkpoints").glob("step-*.pt")) and (local / "config.yaml").exists()

    stop = ray(env, "down", "-y", config, timeout_s=left())
    assert stop.returncode == 0, stop.stdout[-3000:] + stop.stderr[-3000:]
    assert not [p for p in _processes_under(launcher["base"]) if "raylet" in p or "gcs" in p]
