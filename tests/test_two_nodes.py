"""A two-node local cluster: the server on one node, the workers (and the driver) on the other,
so every pull and push crosses the object-transfer path between nodes."""
from __future__ import annotations

import json
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
