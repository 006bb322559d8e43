"""The coordinator's decisions as plain classes with typed state, which tests drive without Ray.

The Coordinator actor (``coordinator.py``) only adapts: it turns what Ray tells it (a ping that
answered or raised, a run call that ended) into the events below and carries out the answers.

- :class:`ServerHealth`: when a server actor counts as dead.
- :class:`WorkerRestarts`: what follows a worker's or the evaluator's end, the restart numbers of
  replacements, and when failures to set up end the run (give-up).
- :func:`choose_restore_point`: which state every server actor is rebuilt from, and
  :class:`RestoreAttempts`: when restores that keep failing back off and give up.
- :func:`plan_resize`: which replicas a resize adds and retires.
- :class:`RecoveryLog`: the bounded history ``status`` reports.
"""
from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Optional

from ps_trainer.data.streams import restart_number

EVALUATOR = "evaluator"          # the evaluator's key in the setup-failure counts


def worker_key(task: str, replica: int) -> str:
    """A worker replica's key in the setup-failure counts (replacements keep the replica)."""
    return f"worker {task}/{replica}"


# --------------------------------------------------------------------------- servers

class Ping(enum.Enum):
    """How a ping of an actor ended."""
    ANSWERED = "answered"
    UNAVAILABLE = "unavailable"  # Ray could not reach it: it may be alive (a network drop)
    DIED = "died"                # Ray says the actor is dead


@dataclass
class ServerHealth:
    """A server is dead when a ping says it died, or after `unanswered_limit` pings in a row
    that Ray could not deliver; a ping still pending is a busy or paused server, not a dead one
    (the adapter does not report it)."""
    unanswered_limit: int = 3
    unanswered: dict[int, int] = field(default_factory=dict)   # server index -> in a row

    def observe(self, server: int, ping: Ping) -> bool:
        """Count one ended ping of `server`; True when it is to be taken for dead."""
        if ping is Ping.ANSWERED:
            self.unanswered[server] = 0
            return False
        self.unanswered[server] = self.unanswered.get(server, 0) + 1
        return ping is Ping.DIED or self.unanswered[server] >= self.unanswered_limit

    def reset(self) -> None:
        """New server actors: nothing is owed by them."""
        self.unanswered.clear()


# --------------------------------------------------------------------------- restore point

class RestoreSource(enum.Enum):
    SNAPSHOT = "snapshot"
    CHECKPOINT = "checkpoint"
    INITIAL = "initial"


def choose_restore_point(snapshot_version: Optional[int],
                         checkpoint_version: Optional[int]) -> RestoreSource:
    """The newest consistent state: the snapshot unless a checkpoint of this run is newer, the
    checkpoint without a snapshot (none yet, or lost with its node), else the initial weights.
    A split model is always rebuilt from one of these, never from the survivors' mixed state."""
    if snapshot_version is not None and (checkpoint_version is None
                                         or snapshot_version >= checkpoint_version):
        return RestoreSource.SNAPSHOT
    if checkpoint_version is not None:
        return RestoreSource.CHECKPOINT
    return RestoreSource.INITIAL


class Restore(enum.Enum):
    """What to do about server actors found dead."""
    NOW = "now"                  # restore them now
    WAIT = "wait"                # the last restore failed: back off before the next
    GIVE_UP = "give up"          # restores failed `max_failures` times in a row: end the run


@dataclass
class RestoreAttempts:
    """Restores that keep failing (the new actors die before they answer: a state they cannot
    load, a node that cannot hold them) back off, 1 s, 2 s, 4 s ..., and after `max_failures`
    in a row the run ends as failed instead of rebuilding the same actors until its time is up.
    Any answer from the restored actors ends the streak."""
    max_failures: int = 4
    first_backoff_s: float = 1.0
    failures: int = 0            # restores in a row whose actors died before answering
    pending: bool = False        # a restore whose actors have not answered yet
    next_at: float = 0.0         # no restore before this time (monotonic seconds)
    last_error: str = ""

    def dead(self, now: float, error: str = "") -> Restore:
        """Server actors were found dead at `now` (`error`: why, in one line)."""
        if self.pending:         # the restored actors died before answering: a failed restore
            self.pending = False
            self.failures += 1
            self.last_error = error or self.last_error
            self.next_at = now + self.first_backoff_s * 2 ** (self.failures - 1)
        if self.failures >= self.max_failures:
            return Restore.GIVE_UP
        return Restore.NOW if now >= self.next_at else Restore.WAIT

    def restoring(self) -> None:
        """A restore has started."""
        self.pending = True

    def answered(self) -> None:
        """A restored actor answered: the restore worked."""
        self.pending = False
        self.failures = 0

    def why(self) -> str:
        """The run's error once it gives up, in one line."""
        cause = f": {self.last_error}" if self.last_error else ""
        return (f"the server actors could not be restored ({self.failures} tries in a row "
                f"failed{cause}); the run is stopped")


# --------------------------------------------------------------------------- resize

@dataclass(frozen=True)
class ResizePlan:
    add: tuple[int, ...]         # replica numbers of the new workers, in start order
    retire: int                  # how many of the newest workers to retire


def plan_resize(replicas: list[int], workers: int) -> ResizePlan:
    """Reach `workers` workers from those running `replicas` (in start order): new workers take
    the smallest free replica numbers (so a replica's data stream is reused, not a new one
    invented), and the newest workers are retired first."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    used = set(replicas)
    add = []
    for _ in range(workers - len(replicas)):
        replica = min(set(range(len(used) + 1)) - used)
        used.add(replica)
        add.append(replica)
    return ResizePlan(tuple(add), max(0, len(replicas) - workers))


# --------------------------------------------------------------------------- restarts

class Exit(enum.Enum):
    """How an actor's long-running call (a worker's or the evaluator's `run`) ended."""
    RETURNED = "returned"        # it returned: a worker never should, the evaluator only at the end
    UNAVAILABLE = "unavailable"  # Ray could not reach it (it may still be alive)
    DIED = "died"
    SETUP_FAILED = "setup failed"   # it raised a SetupError: its data, model or folder is broken
    FAILED = "failed"            # it raised something else


class Action(enum.Enum):
    REPLACE = "replace"          # kill the actor (it may be alive) and start a replacement
    END_RUN = "end run"          # every peer failed to set up too often: end the run as failed
    NOTHING = "nothing"          # an evaluator that finished the final evaluation


@dataclass
class WorkerRestarts:
    """Restarts of workers and the evaluator, and the give-up rule: when every actor of one role
    (the workers of a task, or the evaluator) has failed to set itself up `setup_attempts` times
    in a row, and none of them is set up, the run ends with that error, for replacements would
    fail the same way for as long as the run lasts. Failures while the run finishes are not
    counted."""
    setup_attempts: int = 3
    resumed_from: Optional[int] = None        # the version a resumed run started from
    setup_failures: dict[str, int] = field(default_factory=dict)   # actor key -> in a row
    started: collections.Counter = field(default_factory=collections.Counter)  # (task, replica)
    counts: dict[str, int] = field(default_factory=lambda: {"worker": 0, "server": 0,
                                                            "evaluator": 0})
    failure: Optional[str] = None             # why the run ends as FAILED
    finishing: bool = False

    def restart_number(self, task: str, replica: int) -> int:
        """The restart number of the next actor of (task, replica): with the version a resumed
        run started from, it numbers the actor's random stream (data/streams.py)."""
        number = restart_number(self.started[(task, replica)], self.resumed_from)
        self.started[(task, replica)] += 1
        return number

    def set_up(self, actor: str) -> None:
        """`actor` has set itself up: its failures in a row are over."""
        self.setup_failures.pop(actor, None)

    def forget(self, actor: str) -> None:
        """`actor` was retired: it counts no more."""
        self.setup_failures.pop(actor, None)

    def given_up(self, actor: str) -> bool:
        return self.setup_failures.get(actor, 0) >= self.setup_attempts

    def ended(self, role: str, actor: str, exit: Exit, peers: list[str],
              error: str = "") -> Action:
        """What follows the end of `actor` (of `role`: "worker" or "evaluator"; `peers`: the
        actors of its role, itself included; `error`: the error's one line)."""
        if role == EVALUATOR and exit is Exit.RETURNED and self.finishing:
            return Action.NOTHING
        if exit is Exit.SETUP_FAILED and not self.finishing:
            count = self.setup_failures[actor] = self.setup_failures.get(actor, 0) + 1
            if all(self.setup_failures.get(peer, 0) >= self.setup_attempts for peer in peers):
                self.failure = f"{error} (failed {count} times in a row; the run is stopped)"
                return Action.END_RUN
        self.counts[role] += 1
        return Action.REPLACE


def final_evaluation_timeout(configured_s: float, last_evaluation_s: Optional[float],
                             slack: float) -> float:
    """The final evaluation's time limit follows the last evaluation's time (a large validation
    set, a CPU evaluator): the larger of eval.final_timeout_s and `slack` times it."""
    return max(configured_s, slack * (last_evaluation_s or 0.0))


def snapshot_fetch_timeout(nbytes: int, base_s: float, slowest_bytes_per_s: float) -> float:
    """How long a restore waits for a snapshot of `nbytes`: as long as starting servers, plus
    the time to move it at the slowest rate we expect (spilled to disk, a busy link), so that
    a large snapshot is waited for rather than dropped for an older checkpoint."""
    return base_s + nbytes / slowest_bytes_per_s


@dataclass
class CoordinatorDeaths:
    """Deaths of the coordinator in a row without progress. Each death resumes the run from a
    state (the driver's snapshot or a checkpoint) at some version; a death after which the run
    resumes from a newer state than the last time starts the count again, so a run that makes
    progress between deaths goes on, and one that keeps dying before it gets anywhere is given
    up after `limit` restarts."""
    limit: int = 3
    in_a_row: int = 0
    resumed_at: Optional[int] = None

    def restart(self, resume_version: Optional[int]) -> bool:
        """A death, after which the run would resume at `resume_version` (None: its start);
        whether to restart it."""
        progressed = resume_version is not None and (self.resumed_at is None
                                                     or resume_version > self.resumed_at)
        self.in_a_row = 1 if progressed else self.in_a_row + 1
        if resume_version is not None:
            self.resumed_at = resume_version
        return self.in_a_row <= self.limit


# --------------------------------------------------------------------------- history

@dataclass
class RecoveryLog:
    """The last server recoveries, bounded: `status` reports them."""
    keep_seconds: int = 10
    keep_restores: int = 100
    recovery_s: list[float] = field(default_factory=list)
    restores: list[dict] = field(default_factory=list)  # {from, to, source, seconds, at_s}

    def restored(self, before: Optional[int], after: int, source: RestoreSource,
                 seconds: float, at_s: float) -> None:
        """A restore from version `before` to `after` took `seconds`, `at_s` into the run."""
        self.recovery_s = (self.recovery_s + [seconds])[-self.keep_seconds:]
        self.restores = (self.restores + [{"from": before, "to": after, "source": source.value,
                                           "seconds": seconds, "at_s": at_s}])[-self.keep_restores:]
