"""The small messages that cross actor boundaries besides the numpy arrays themselves."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

# PushResult.reason values; also the `reason` label of the rejected-updates metric.
APPLIED = "applied"        # the update was applied
QUEUED = "queued"          # accepted into the task's sync group; applied when the group fills
STALE = "stale"            # staleness above server.max_staleness: dropped
NONFINITE = "nonfinite"    # NaN or Inf in the gradient or the reported loss: rejected
REJECT_REASONS = (STALE, NONFINITE)


@dataclass(frozen=True)
class PushStats:
    """What a worker reports with each push."""
    loss: float                       # the task loss (before balancing weights)
    shared_grad_norm: float           # norm of the task's gradient on the trunk's last shared layer
    step_time_s: float = 0.0          # batch + forward + backward time
    samples: int = 0                  # examples in the batch
    grad_norm: Optional[float] = None  # L2 norm of the gradient as sent (set by ParameterClient)


def with_grad_norm(stats: PushStats, norm: float) -> PushStats:
    return replace(stats, grad_norm=norm)


@dataclass(frozen=True)
class PushResult:
    reason: str                       # one of APPLIED, QUEUED, STALE, NONFINITE
    version: int                      # server version after handling the push
    staleness: int

    @property
    def accepted(self) -> bool:
        return self.reason in (APPLIED, QUEUED)
