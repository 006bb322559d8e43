"""A two-node local cluster: the server on one node, the workers (and the driver) on the other,
so every pull and push crosses the object-transfer path between nodes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_server_and_workers_on_different_nodes(tmp_path):
    # Run the script's source with -c from tmp_path: running it as a file would put tests/ first
    # on sys.path, where tests/workers would shadow the workers package.
    source = Path(__file__).with_name("two_node_run.py").read_text()
    out = subprocess.run([sys.executable, "-c", source, str(tmp_path / "run")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=420)
    lines = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["nodes"]["server"] != result["nodes"]["head"]
    assert result["version"] >= 60
    assert all(n > 0 for n in result["applied"].values())
    assert result["miou"] is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_namespaces(tmp_path):
    """Two network namespaces joined by a veth pair (10.231.77.1 and .2): the test's own
    network, so that cutting the link between them touches nothing else. Skipped where
    namespaces cannot be made (not root, no CAP_NET_ADMIN)."""
    tag = f"ps{os.getpid() % 100000}"
    head, other = f"{tag}h", f"{tag}o"
    try:
        _ip("netns", "add", head)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot make a network namespace here: {getattr(err, 'stderr', err)}")
    made = [head]
    try:
        _ip("netns", "add", other)
        made.append(other)
        _ip("link", "add", f"{tag}vh", "type", "veth", "peer", "name", f"{tag}vo")
        for ns, dev, addr in ((head, f"{tag}vh", "10.231.77.1"), (other, f"{tag}vo", "10.231.77.2")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield head, other, f"{tag}vo"
    finally:
        # End what ran inside (never `ray stop`: it would end the suite's own Ray too).
        for ns in made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass             # it ended by itself meanwhile
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_brief_cut_of_the_link_between_nodes_is_not_taken_for_a_death(two_namespaces,
                                                                         tmp_path):
    """Two Ray nodes in network namespaces of the test's own: the workers and the driver on one,
    the server actor on the other. The link between them is cut (the veth taken down) for
    8 s while the run trains (a ping of the server fails meanwhile), then restored: the calls
    in flight wait it out, the server is not restored (no rollback), no worker is replaced,
    and training goes on past the cut with the same server actor."""
    head, other, other_device = two_namespaces
    # No token: the cluster is reachable only inside the test's own namespaces.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    temp = f"/tmp/rns{os.getpid() % 100000}"

    def in_ns(ns, *cmd, timeout=120):
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    started = in_ns(head, "ray", "start", "--head", "--node-ip-address=10.231.77.1",
                    "--port=6379", "--num-cpus=2", '--resources={"workers_here": 1}',
                    "--include-dashboard=false", f"--temp-dir={temp}")
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    joined = in_ns(other, "ray", "start", "--address=10.231.77.1:6379",
                   "--node-ip-address=10.231.77.2", "--num-cpus=1",
                   '--resources={"server_here": 1}')
    assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
    source = Path(__file__).with_name("netns_run.py").read_text()
    out = in_ns(head, sys.executable, "-c", source, "10.231.77.1:6379", str(tmp_path / "run"),
                other, other_device, timeout=600)
    lines = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["server_node"] != result["driver_node"]        # the cut lay between them
    assert not result["reachable_during_cut"]                     # and it was cut
    assert result["same_server_answers"]
    assert result["server_node_after"] == result["server_node"]  # the same actor, not a new one
    assert not result["restores"] and result["restarts"]["server"] == 0
    assert result["restarts"]["worker"] == 0
    assert result["after"] >= result["before"] + 60
    assert result["final_version"] >= result["after"] and result["miou"] is not None
