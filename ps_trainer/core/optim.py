"""The server's optimizer: fused updates of flat float32 tensors, and the LR schedule.

One update of a piece is one pass of PyTorch's fused optimizer kernel over the whole piece
where PyTorch has one (SGD, AdamW), else a handful of in-place vector ops; never a Python
loop over parameters. Incoming gradients may be float32, float16 or bfloat16 and are only
read (they are views of Ray's object store); state and weights stay float32.

- sgd: heavy-ball momentum with L2 weight decay (PyTorch's SGD convention).
- adamw: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019, "AdamW").
- rmsprop: RMSProp (Tieleman & Hinton 2012) with optional momentum and L2 weight decay.

A push acts through two factors (see ParameterStore.push):
- the *step factor* (balancing weight x staleness factor) multiplies the learning rate of the
  update the push makes: weights -= (lr * factor) * update(grad). A factor on the gradient
  would be cancelled by Adam's and RMSProp's second-moment normalisation (a constant scale of
  g scales m and sqrt(v) alike), so weights and staleness would barely act there;
- the *gradient scale* (clipping, and 1/k for a sync group's mean) multiplies the gradient:
  clipping is a gradient operation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ps_trainer.config import RENAMED_VALUES, OptimizerConfig
from ps_trainer.config.registry import Registry
from ps_trainer.core.runtime import streamed_zeros_like


def learning_rate(cfg: OptimizerConfig, update: int, total_updates: int) -> float:
    """LR for the `update`-th update: linear warm-up, then constant / step / cosine decay."""
    if cfg.warmup_updates and update < cfg.warmup_updates:
        return cfg.lr * (update + 1) / cfg.warmup_updates
    since = update - cfg.warmup_updates
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (since // cfg.step_every_updates)
    if cfg.schedule == "cosine":
        span = max(total_updates - cfg.warmup_updates, 1)
        progress = min(since / span, 1.0)
        floor = cfg.lr * cfg.min_lr_ratio
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr


def _fused_kernels_work() -> bool:
    """Whether this PyTorch has the CPU fused SGD and AdamW kernels (2.4 and later)."""
    try:
        w, g, b = torch.zeros(4), torch.ones(4), torch.zeros(4)
        torch._fused_sgd_([w], [g], [b], weight_decay=0.0, momentum=0.9, lr=0.1, dampening=0.0,
                          nesterov=False, maximize=False, is_first_step=False)
        m, v, step = torch.zeros(4), torch.zeros(4), torch.ones(())
        torch._fused_adamw_([w], [g], [m], [v], [], [step], lr=0.1, beta1=0.9, beta2=0.999,
                            weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


FUSED = _fused_kernels_work()


# --------------------------------------------------------------------------- update rules

OPTIMIZERS: Registry = Registry("optimizer")


class UpdateRule:
    """One optimizer's update of a flat piece, registered by `optimizer.name`: the state it
    keeps per piece, the temporaries it needs, its plain kernel and, where PyTorch has one, its
    fused kernel. Kernels read the piece's state and scratch from the :class:`FlatOptimizer`."""
    state_names: tuple[str, ...] = ()
    scratch: int = 0                  # preallocated temporaries per piece
    has_fused: bool = False

    def plain(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        raise NotImplementedError

    def fused(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        raise NotImplementedError


@OPTIMIZERS.register("sgd")
class SGD(UpdateRule):
    state_names = ("momentum",)
    has_fused = True

    def plain(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        cfg, buf = opt.cfg, state["momentum"]
        if cfg.momentum:
            buf.mul_(cfg.momentum).add_(g, alpha=scale)
            if cfg.weight_decay:
                buf.add_(w, alpha=cfg.weight_decay)
            w.add_(buf, alpha=-lr)
        else:
            if cfg.weight_decay:
                w.mul_(1 - lr * cfg.weight_decay)
            w.add_(g, alpha=-lr * scale)

    def fused(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        """One kernel pass. The fused kernel computes buf = m*buf + (1-d)*(g + wd'*w); with
        d = 1 - scale and wd' = wd / scale that is m*buf + scale*g + wd*w, our update, without
        touching g (its grad_scale argument would unscale g in place)."""
        cfg = opt.cfg
        if scale <= 0.0:                     # a zero-weight task: momentum and decay only
            return self.plain(opt, key, w, g, lr, scale, state)
        g = opt.as_float32(key, g)
        if cfg.momentum:
            torch._fused_sgd_([w], [g], [state["momentum"]], weight_decay=cfg.weight_decay / scale,
                              momentum=cfg.momentum, lr=lr, dampening=1.0 - scale, nesterov=False,
                              maximize=False, is_first_step=False)
        else:  # w -= lr*scale*(g + wd/scale*w)
            torch._fused_sgd_([w], [g], [], weight_decay=cfg.weight_decay / scale,
                              momentum=0.0, lr=lr * scale, dampening=0.0, nesterov=False,
                              maximize=False, is_first_step=False)


@OPTIMIZERS.register("adamw")
class AdamW(UpdateRule):
    state_names = ("exp_avg", "exp_avg_sq")
    scratch = 1
    has_fused = True

    def plain(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        cfg, (b1, b2), t = opt.cfg, opt.cfg.betas, opt.steps[key]
        m, v, (denom,) = state["exp_avg"], state["exp_avg_sq"], opt.scratch_buffers[key]
        m.mul_(b1).add_(g, alpha=(1 - b1) * scale)
        v.mul_(b2).addcmul_(g, g, value=(1 - b2) * scale * scale)
        if cfg.weight_decay:
            w.mul_(1 - lr * cfg.weight_decay)
        torch.sqrt(v, out=denom).div_(math.sqrt(1 - b2 ** t)).add_(cfg.eps)
        w.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))

    def fused(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        """One kernel pass (plus one scaled copy into scratch when scale != 1)."""
        cfg, (b1, b2) = opt.cfg, opt.cfg.betas
        if scale != 1.0 or g.dtype != torch.float32:
            g = torch.mul(g, scale, out=opt.scratch_buffers[key][0])
        step = opt.step_tensors.get(key)
        if step is None:         # on the piece's device: the fused kernel reads it there
            step = opt.step_tensors[key] = torch.zeros((), dtype=torch.float32, device=w.device)
        step.fill_(opt.steps[key])
        torch._fused_adamw_([w], [g], [state["exp_avg"]], [state["exp_avg_sq"]], [], [step],
                            lr=lr, beta1=b1, beta2=b2, weight_decay=cfg.weight_decay, eps=cfg.eps,
                            amsgrad=False, maximize=False)


@OPTIMIZERS.register("rmsprop")
class RMSProp(UpdateRule):
    state_names = ("square_avg", "momentum")
    scratch = 2

    def plain(self, opt: "FlatOptimizer", key, w, g, lr, scale, state) -> None:
        cfg, sq, buf = opt.cfg, state["square_avg"], state["momentum"]
        avg, decayed = opt.scratch_buffers[key]
        if cfg.weight_decay:
            # L2 folded into the gradient needs a writable copy (the incoming one is read-only).
            g = decayed.copy_(g).mul_(scale).add_(w, alpha=cfg.weight_decay)
            scale = 1.0
        sq.mul_(cfg.alpha).addcmul_(g, g, value=(1 - cfg.alpha) * scale * scale)
        torch.sqrt(sq, out=avg).add_(cfg.eps)
        if cfg.momentum:
            buf.mul_(cfg.momentum).addcdiv_(g, avg, value=scale)
            w.add_(buf, alpha=-lr)
        else:
            w.addcdiv_(g, avg, value=-lr * scale)


class FlatOptimizer:
    """Optimizer state for named flat pieces; :meth:`step` applies one update to one piece.
    State lives on the device of the piece it belongs to."""

    def __init__(self, cfg: OptimizerConfig, fused: bool = FUSED):
        self.cfg = cfg
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps: dict[str, int] = {}
        self.scratch_buffers: dict[str, tuple[torch.Tensor, ...]] = {}
        self._rule = OPTIMIZERS.get(cfg.name)()
        self._update = self._rule.fused if fused and self._rule.has_fused else self._rule.plain
        self.step_tensors: dict[str, torch.Tensor] = {}  # fused AdamW's step count, on device
        self._widened: dict[str, torch.Tensor] = {}   # fused SGD's float32 copy of fp16/bf16 grads

    def add_piece(self, key: str, like: torch.Tensor) -> None:
        self.state[key] = {n: streamed_zeros_like(like) for n in self._rule.state_names}
        self.steps[key] = 0
        # Preallocated temporaries so an update allocates nothing.
        self.scratch_buffers[key] = tuple(streamed_zeros_like(like)
                                          for _ in range(self._rule.scratch))

    def step(self, key: str, weights: torch.Tensor, grad: torch.Tensor, lr: float,
             scale: float) -> None:
        """weights -= lr-sized update(scale * grad), in place; `lr` already carries the push's
        step factor and `scale` is the gradient scale. `grad` is only read."""
        self.steps[key] += 1
        self._update(self, key, weights, grad, lr, scale, self.state[key])

    def as_float32(self, key: str, g: torch.Tensor) -> torch.Tensor:
        """float16/bfloat16 gradients widened into a buffer of the piece's (one pass); the
        buffer is made on first use, so float32 transport costs no memory for it."""
        if g.dtype == torch.float32:
            return g
        if key not in self._widened:
            self._widened[key] = torch.empty(g.shape, dtype=torch.float32, device=g.device)
        return self._widened[key].copy_(g)

    def state_dict(self, copy: bool = True) -> dict:
        """The state as numpy arrays: copies (safe to keep while updates continue), or views
        when the caller serialises them before the next update (a Ray actor's return value)."""
        return {"name": self.cfg.name, "steps": dict(self.steps),
                "state": {k: {n: _numpy(t, copy) for n, t in v.items()}
                          for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints of earlier versions name the optimizer by its old spelling ("adam").
        saved = RENAMED_VALUES[("optimizer", "name")].get(state["name"], state["name"])
        if saved != self.cfg.name:
            raise ValueError(f"checkpoint optimizer is {saved!r}, config asks for "
                             f"{self.cfg.name!r}")
        for key, arrays in state["state"].items():
            if key not in self.state:
                raise KeyError(f"checkpoint has optimizer state for unknown piece {key!r}")
            for name, array in arrays.items():
                self.state[key][name].copy_(torch.as_tensor(np.asarray(array, np.float32)))
            self.steps[key] = int(state["steps"][key])


def _numpy(t: torch.Tensor, copy: bool) -> np.ndarray:
    array = t.detach().cpu().numpy()
    return array.copy() if copy else array
