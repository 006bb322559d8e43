"""The small messages that cross actor boundaries besides the numpy arrays themselves."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

# PushResult.reason values; also the `reason` label of the rejected-updates metric.
APPLIED = "applied"        # the update was applied
QUEUED = "queued"          # accepted into the task's sync group; applied when the group fills
STALE = "stale"            # staleness above server.max_staleness_updates: dropped
NONFINITE = "nonfinite"    # NaN or Inf in the gradient or the reported loss: rejected
OVERFLOW = "overflow"      # a worker's fp16 step overflowed its loss scale: never pushed
RETRIED = "retried"        # a server did not answer in time: the step's calls were retried
STALE_GROUP = "stale_group"  # queued in a sync group whose oldest push went stale: dropped
FENCED = "fenced"          # computed on weights of server actors since restored (an earlier
                           # incarnation): rejected, whatever its version says
REJECT_REASONS = (STALE, NONFINITE, STALE_GROUP, FENCED)


class SetupError(RuntimeError):
    """An actor could not set itself up (its data, its model, its run folder): raised by its
    first call rather than its constructor, so that it reaches the coordinator as an error with
    its cause (a threaded actor whose constructor raises is aborted by Ray, SIGABRT and a C++
    stack trace). A replacement would most likely meet it again."""

    @classmethod
    def of(cls, who: str, err: Exception) -> "SetupError":
        """`who` could not start because of `err`, in one line (a message of several lines is
        joined with "; ")."""
        text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        return cls(f"{who} could not start: {type(err).__name__}: {text}")


class RunGivenUp(RuntimeError):
    """The driver gave the run up (its coordinator kept dying without progress); the message
    is one line for the user and says how to go on."""


@dataclass(frozen=True)
class PushStats:
    """What a worker reports with each push."""
    loss: float                       # the task loss (before balancing weights)
    shared_grad_norm: float           # norm of the task's gradient on the trunk's last shared layer
    step_time_s: float = 0.0          # batch + forward + backward time
    samples: int = 0                  # examples in the batch
    grad_norm: Optional[float] = None  # L2 norm of the gradient as sent (set by ParameterClient)
    # The incarnation of the server actors whose weights the step used (set by ParameterClient):
    # every restore of the servers starts a new one, and its versions may repeat an old one's.
    incarnation: int = 0


def with_push_facts(stats: PushStats, incarnation: int, grad_norm: Optional[float]) -> PushStats:
    """`stats` as pushed: with the servers' incarnation the step used and the norm as sent."""
    return replace(stats, incarnation=incarnation, grad_norm=grad_norm)


@dataclass(frozen=True)
class PushResult:
    reason: str                       # one of APPLIED, QUEUED, STALE, NONFINITE
    version: int                      # server version after handling the push
    staleness: int

    @property
    def accepted(self) -> bool:
        return self.reason in (APPLIED, QUEUED)


@dataclass(frozen=True)
class PushDecision:
    """What happens to one push, decided once for the whole model (by the server actor that
    holds part 0 when the model is split) and carried out by every actor holding a part."""
    reason: str                       # one of APPLIED, QUEUED, STALE, NONFINITE
    version: int                      # the version the push was decided at
    staleness: int
    grad_scale: float = 1.0           # clipping (the whole push's norm): scales the gradient
    step_factor: float = 1.0          # balancing weight x staleness factor: scales the step
    reset_group: bool = False         # the task's sync group went stale: empty it first

    @property
    def accepted(self) -> bool:
        return self.reason in (APPLIED, QUEUED)

    @property
    def result(self) -> PushResult:
        return PushResult(self.reason, self.version + (self.reason == APPLIED), self.staleness)


# --------------------------------------------------------------------------- status replies

@dataclass(frozen=True)
class ServerStatus:
    """A server actor's answer to ``status()``."""
    index: int                        # the actor's place in the plan (0 decides split pushes)
    node: str                         # Ray node id
    version: int                      # updates applied
    lr: float                         # the current learning rate
    applied: dict                     # task -> pushes applied
    rejected: dict                    # "task/reason" -> pushes rejected
    staleness: float                  # moving average of the staleness of decided pushes
    losses: dict                      # task -> moving average of its reported loss
    weights: dict                     # task -> balancing weight
    lost_parts: int                   # decided parts of split pushes never staged here (a bug)
    staged: int                       # staged parts held now
    push_buffers: int = 0             # same-node workers' shared push buffers mapped now

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WorkerStatus:
    """A task worker's answer to ``status()`` (and what its ``run()`` returns)."""
    task: str
    replica: int
    steps: int                        # steps computed and pushed
    node: str                         # Ray node id
    results: dict                     # push result reason -> count
    skipped_images: int               # unreadable images its sampler skipped
    restart: int = 0                  # which of its replica's actors (data/streams.py)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CoordinatorStatus:
    """The coordinator's answer to ``status()``: the run as a whole (``ps-trainer status``)."""
    version: Optional[int]            # server version; while servers are restored, the last seen
    servers: list                     # [ServerStatus], empty while a server is unreachable
    workers: dict                     # task -> workers running (answered a ping)
    pending_workers: dict             # task -> workers asked for but not running yet
    miou: Optional[float]             # of the newest evaluation
    latest_eval: Optional[dict]       # the newest metrics.jsonl record
    restarts: dict                    # role -> actors replaced
    recovery_s: list                  # seconds of the last server recoveries
    restores: list                    # the last server restores: {from, to, source, seconds, at_s}
    snapshot_version: Optional[int]   # version of the newest consistent server snapshot
    elapsed_s: float
    done: bool

    def to_dict(self) -> dict:
        """Plain data for JSON (the server statuses included)."""
        return asdict(self)
