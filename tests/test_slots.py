"""ComputeSlots: node-wide turns between worker processes (real processes, real SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ps_trainer.core.compute_slots import ComputeSlots
from support import wait_for

# A process that takes turns `rounds` times and logs entering and leaving to a shared file
# (appends of a few bytes are atomic, so the file is the true order of the events).
_TURNS = textwrap.dedent("""
    import os, sys, time
    from ps_trainer.core.compute_slots import ComputeSlots
    folder, count, rounds, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    slots = ComputeSlots(count, "test", folder)
    log = os.open(os.path.join(folder, "events"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    open(os.path.join(folder, "ready-" + name), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):   # start together
        time.sleep(0.001)
    for _ in range(rounds):
        with slots:
            os.write(log, f"+{name}\\n".encode())
            time.sleep(0.01)
            os.write(log, f"-{name}\\n".encode())
""")
_HOLD = textwrap.dedent("""
    import os, sys, time
    from ps_trainer.core.compute_slots import ComputeSlots
    slots = ComputeSlots(1, "test", sys.argv[1])
    slots.acquire()
    open(os.path.join(sys.argv[1], "held"), "w").close()
    time.sleep(600)
""")


def _spawn(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)])


def _take_turns(folder: Path, count: int, rounds: int, names: str) -> list[str]:
    """Run one process per name, started together; the events they logged, in order."""
    procs = [_spawn(_TURNS, folder, count, rounds, name) for name in names]
    try:
        wait_for(lambda: all((folder / f"ready-{n}").exists() for n in names), what="ready")
        (folder / "go").touch()
        assert all(p.wait(timeout=120) == 0 for p in procs)
    finally:
        for p in procs:
            p.kill()
    return (folder / "events").read_text().split()


def _most_at_once(events: list[str]) -> int:
    inside, most = 0, 0
    for event in events:
        inside += 1 if event.startswith("+") else -1
        most = max(most, inside)
    return most


def test_no_more_than_k_processes_hold_a_slot_and_every_one_gets_turns(tmp_path):
    events = _take_turns(tmp_path, 2, 40, "abcd")
    assert len(events) == 4 * 40 * 2
    assert _most_at_once(events) == 2          # two at a time: never three, and not one by one
    assert {e[1] for e in events} == set("abcd")


def test_one_slot_is_taken_in_turns(tmp_path):
    events = _take_turns(tmp_path, 1, 30, "ab")
    assert _most_at_once(events) == 1
    # A process that lets the slot go waits before asking again: the other one gets turns
    # while both still want them, not only after the first has finished all of its own.
    last_a = max(i for i, e in enumerate(events) if e == "-a")
    first_b = events.index("+b")
    last_b = max(i for i, e in enumerate(events) if e == "-b")
    first_a = events.index("+a")
    assert first_b < last_a and first_a < last_b


def test_a_slot_held_by_a_killed_process_is_free_again(tmp_path):
    holder = _spawn(_HOLD, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "held").exists(), what="the holder's slot")
        slots = ComputeSlots(1, "test", str(tmp_path))
        probe = ComputeSlots(1, "test", str(tmp_path))
        assert not probe.try_acquire()              # held by the other process
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        slots.acquire()                             # the kernel let the lock go with the process
        slots.release()
    finally:
        holder.kill()


def test_no_slots_means_no_limit(tmp_path):
    slots = ComputeSlots(0, "test", str(tmp_path))
    with slots:
        with ComputeSlots(0, "test", str(tmp_path)):
            pass
    assert not list(Path(tmp_path).glob("*.lock"))


def test_a_worker_that_let_a_slot_go_goes_on_at_once_when_another_is_free(tmp_path, monkeypatch):
    import ps_trainer.core.compute_slots as slots_module

    monkeypatch.setattr(slots_module, "_AFTER_RELEASE_S", 30.0)   # long: a pause would show
    slots = ComputeSlots(2, "test", str(tmp_path))
    first = ComputeSlots(1, "test", str(tmp_path))        # opens slot 0 only
    slots.acquire()                                        # slot 0
    slots.release()
    slots.acquire()                                        # nobody waits: slot 1, no pause
    assert first.try_acquire()                             # slot 0 was left free
    first.release()
    slots.close()
    first.close()


def test_cores_counts_the_machine_where_the_platform_has_no_affinity_call(monkeypatch):
    import os

    from ps_trainer.core.compute_slots import slot_count

    assert slot_count(3) == 3
    assert slot_count("cores") == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")          # macOS
    assert slot_count("cores") == os.cpu_count()


def test_lock_files_live_in_a_folder_only_this_user_may_enter(tmp_path):
    import stat

    from ps_trainer.core.compute_slots import private_lock_folder

    folder = private_lock_folder(str(tmp_path))
    assert folder.name == f"ps_trainer-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert private_lock_folder(str(tmp_path)) == folder          # made once, used again
    folder.chmod(0o777)                                          # opened to everyone: refused
    with pytest.raises(PermissionError, match="not a private directory"):
        private_lock_folder(str(tmp_path))
    folder.chmod(0o700)
    folder.rmdir()
    folder.symlink_to(tmp_path)                                  # a link planted in its place
    with pytest.raises(PermissionError, match="not a private directory"):
        private_lock_folder(str(tmp_path))
