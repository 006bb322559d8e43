"""Shared-memory push buffers between real processes: a worker process writes, this process
(the server's side) maps and reads; killed workers' buffers are let go."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from ps_trainer.transport.push_buffers import SUPPORTED, AttachedBuffers, BufferRef, PushBuffers

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="shared-memory pushes need Linux")

# A worker process: two shards, three regions; region s of shard "b" holds s + 1; prints what the
# server needs to attach, then waits until its stdin closes.
WORKER = """
import json, sys
from ps_trainer.transport.push_buffers import PushBuffers
buffers = PushBuffers({"a": 3, "b": 5}, regions=3)
for region, views in enumerate(buffers.views):
    views["a"].fill_(-1.0)
    views["b"].fill_(region + 1.0)
print(json.dumps(buffers.describe()), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def worker_process():
    started = []

    def start():
        proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        return proc, json.loads(proc.stdout.readline())

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_the_server_reads_what_another_process_wrote(worker_process):
    proc, described = worker_process()
    attached = AttachedBuffers()
    buffer_id = attached.attach(**described)
    assert described["pid"] == proc.pid and described["region_values"] == 8
    # Shard "b" starts after the 3 values of "a": values 1..4 of it in region 2.
    np.testing.assert_array_equal(attached.view(BufferRef(buffer_id, 2, 3 + 1, 3)), [3.0] * 3)
    np.testing.assert_array_equal(attached.view(BufferRef(buffer_id, 0, 0, 3)), [-1.0] * 3)
    # The same worker asking again (a reconnect) keeps its one mapping.
    assert attached.attach(**described) == buffer_id and len(attached) == 1


def test_bad_references_and_sizes_are_errors(worker_process):
    _, described = worker_process()
    attached = AttachedBuffers()
    buffer_id = attached.attach(**described)
    with pytest.raises(ValueError, match="values per region"):
        attached.view(BufferRef(buffer_id, 0, 6, 3))       # past the end of a region
    with pytest.raises(KeyError, match="not attached"):
        attached.view(BufferRef(buffer_id + 1, 0, 0, 1))
    with pytest.raises(OSError, match="announced"):
        attached.attach(**{**described, "nbytes": described["nbytes"] * 2})


def test_buffers_of_killed_workers_are_let_go(worker_process):
    killed, described = worker_process()
    attached = AttachedBuffers()
    first = attached.attach(**described)
    assert attached.view(BufferRef(first, 1, 3, 5))[0] == 2.0
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    # Mapped memory outlives the process (a push in flight still reads it) ...
    assert attached.view(BufferRef(first, 1, 3, 5))[0] == 2.0
    # ... until the next worker attaches: the dead one's mapping goes (a view still held,
    # e.g. by a push being applied, stays readable until it is dropped).
    kept = attached.view(BufferRef(first, 1, 3, 5))
    _, other = worker_process()
    second = attached.attach(**other)
    assert len(attached) == 1 and second != first and kept[0] == 2.0
    with pytest.raises(KeyError):
        attached.view(BufferRef(first, 0, 0, 1))


def test_a_process_that_is_gone_cannot_be_attached(worker_process):
    proc, described = worker_process()
    proc.kill()
    proc.wait()
    with pytest.raises(OSError):
        AttachedBuffers().attach(**described)


def test_slots_are_separate_views_of_one_file():
    buffers = PushBuffers({"trunk": 4, "head": 2}, regions=2)
    buffers.views[1]["head"].fill_(7.0)
    assert float(buffers.views[0]["head"].sum()) == 0.0
    assert buffers.ref(9, 1, "head", 1, 2) == BufferRef(9, 1, 5, 1)
    assert buffers.nbytes == 2 * 6 * 4
