"""Flat shard buffers: the model's parameters as one contiguous float32 array per shard.

Workers bind their model to flat storage once (:class:`FlatModel`): every parameter becomes
a view into its shard's array and every ``.grad`` a view into a matching gradient array, so
backward writes gradients straight into the buffer that is pushed, and a pull is one copy
per shard. The server holds the same arrays (or contiguous pieces of them when it is split
over several actors, see :func:`plan_pieces`) and updates them in place.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ps_trainer.core.shards import TRUNK_SHARD

TRANSPORT_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@dataclass(frozen=True)
class Placement:
    """One tensor's place inside its shard's flat array."""
    name: str
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ShardLayout:
    """Shard name -> placements, for trainable parameters and for float buffers (norm statistics)."""
    params: dict[str, tuple[Placement, ...]]
    stats: dict[str, tuple[Placement, ...]]

    @classmethod
    def of(cls, model: nn.Module, shard_of: Callable[[str], str]) -> "ShardLayout":
        params = _shapes((n, p) for n, p in model.named_parameters() if p.requires_grad)
        saved = model.state_dict(keep_vars=True)      # persistent buffers only: not constants
        stats = _shapes((n, b) for n, b in model.named_buffers()
                       if b.is_floating_point() and n in saved)
        return cls(_group(params, shard_of), _group(stats, shard_of))

    def size(self, shard: str) -> int:
        return _size(self.params.get(shard, ()))

    def stats_size(self, shard: str) -> int:
        return _size(self.stats.get(shard, ()))

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(self.params)

    def placement(self, name: str) -> tuple[str, Placement]:
        for shard, places in self.params.items():
            for place in places:
                if place.name == name:
                    return shard, place
        raise KeyError(name)


def _shapes(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in named]


def _group(named_shapes, shard_of) -> dict[str, tuple[Placement, ...]]:
    groups: dict[str, list[Placement]] = {}
    offsets: dict[str, int] = {}
    for name, shape in named_shapes:
        shard = shard_of(name)
        offset = offsets.get(shard, 0)
        groups.setdefault(shard, []).append(Placement(name, offset, shape))
        offsets[shard] = offset + int(np.prod(shape, dtype=np.int64))
    return {shard: tuple(places) for shard, places in groups.items()}


def _size(places: tuple[Placement, ...]) -> int:
    return places[-1].offset + places[-1].numel if places else 0


# --------------------------------------------------------------------------- pieces

@dataclass(frozen=True)
class Piece:
    """A contiguous range [start, stop) of one shard, owned by one server actor."""
    key: str
    shard: str
    start: int
    stop: int
    server: int


def plan_pieces(layout: ShardLayout, servers: int) -> tuple[Piece, ...]:
    """Split the shards over `servers` actors: the trunk in equal contiguous ranges (it is
    touched by every push, so splitting it spreads every update), each head whole, on the
    actor with the least parameters so far."""
    if servers == 1:
        return tuple(Piece(s, s, 0, layout.size(s), 0) for s in layout.shards)
    pieces, load = [], [0] * servers
    for shard in layout.shards:
        size = layout.size(shard)
        if shard == TRUNK_SHARD:
            bounds = np.linspace(0, size, servers + 1).astype(np.int64)
            for i in range(servers):
                start, stop = int(bounds[i]), int(bounds[i + 1])
                pieces.append(Piece(f"{shard}@{start}:{stop}", shard, start, stop, i))
                load[i] += stop - start
        else:
            server = int(np.argmin(load))
            pieces.append(Piece(shard, shard, 0, size, server))
            load[server] += size
    return tuple(pieces)


def states_misfit(states: Sequence[Mapping], plan: Sequence[Piece]) -> Optional[str]:
    """Why server states (a snapshot's or a checkpoint's, or their summaries, where each piece is
    its number of values) cannot rebuild the actors of `plan`, or None when they can: one state per actor, each with exactly its pieces at their sizes, all
    at one version (a state mixing two points in time would train on from neither)."""
    actors = 1 + max(p.server for p in plan)
    if len(states) != actors:
        return f"{len(states)} server state(s) for {actors} server actor(s)"
    for i, state in enumerate(states):
        weights = state.get("weights", {})
        wanted = {p.key: p.stop - p.start for p in plan if p.server == i}
        if set(weights) != set(wanted):
            odd = sorted(set(weights) ^ set(wanted))
            return f"server {i}'s state has other pieces ({', '.join(odd[:4])})"
        sizes = {k: _values(weights[k]) for k in wanted}
        if sizes != wanted:
            wrong = sorted(k for k in wanted if sizes[k] != wanted[k])
            return f"server {i}'s pieces {', '.join(wrong[:4])} have other sizes"
    versions = {int(s["version"]) for s in states}
    if len(versions) > 1:
        return f"the actors' states are at versions {sorted(versions)}, not at one"
    return None


def _values(piece) -> int:
    """A piece's number of values: of its array, or the number a state's summary gives."""
    return int(piece) if isinstance(piece, (int, np.integer)) else int(np.asarray(piece).size)


# --------------------------------------------------------------------------- flat model

class FlatModel:
    """Binds a model's parameters, gradients and float buffers to flat per-shard storage.

    ``params[shard]``, ``grads[shard]`` and ``stats[shard]`` are 1-D float32 tensors on the
    model's device; the module's tensors are views into them. Never call
    ``model.zero_grad()`` (it would detach the views); use :meth:`zero_grad`.
    """

    def __init__(self, model: nn.Module, layout: ShardLayout):
        self.model = model
        self.layout = layout
        device = next(model.parameters()).device
        named_params = dict(model.named_parameters())
        named_buffers = dict(model.named_buffers())
        self._modules_params = {shard: [named_params[s.name] for s in places]
                                for shard, places in layout.params.items()}
        self.params, self.grads, self.stats = {}, {}, {}
        for shard, places in layout.params.items():
            flat = torch.empty(layout.size(shard), dtype=torch.float32, device=device)
            grad = torch.zeros_like(flat)
            for place in places:
                p = named_params[place.name]
                view = flat[place.offset: place.offset + place.numel]
                view.copy_(p.detach().reshape(-1))
                p.data = view.view(place.shape)
                p.grad = grad[place.offset: place.offset + place.numel].view(place.shape)
            self.params[shard], self.grads[shard] = flat, grad
        for shard, places in layout.stats.items():
            flat = torch.empty(layout.stats_size(shard), dtype=torch.float32, device=device)
            for place in places:
                view = flat[place.offset: place.offset + place.numel]
                view.copy_(named_buffers[place.name].reshape(-1))
                _set_buffer(model, place.name, view.view(place.shape))
            self.stats[shard] = flat

    def zero_grad(self) -> None:
        for grad in self.grads.values():
            grad.zero_()

    def grad_binding(self, grads: dict[str, torch.Tensor]) -> tuple:
        """What :meth:`bind_grads` needs to make `grads` (flat tensors, shard -> tensor) the
        gradient storage: the views are cut once, so binding costs only the assignments."""
        views = [(param, grad[place.offset: place.offset + place.numel].view(place.shape))
                 for shard, grad in grads.items()
                 for place, param in zip(self.layout.params[shard], self._modules_params[shard])]
        return dict(grads), views

    def bind_grads(self, binding: tuple) -> None:
        """Make a :meth:`grad_binding`'s tensors the gradient storage of their shards (the
        parameters' ``.grad`` become views of them): backward then writes there, e.g. into
        shared memory the server reads. Values are not copied."""
        grads, views = binding
        for param, view in views:
            param.grad = view
        self.grads.update(grads)

    def load(self, shard: str, array: np.ndarray, start: int = 0) -> None:
        """Copy (part of) a shard's weights in: one copy, no intermediate."""
        target = self.params[shard][start: start + array.shape[0]]
        target.copy_(readonly_tensor(array), non_blocking=True)

    def can_adopt(self, shard: str, array: np.ndarray, start: int = 0) -> bool:
        """Whether :meth:`adopt` applies: the whole shard, float32, on the CPU."""
        flat = self.params[shard]
        return (start == 0 and array.dtype == np.float32 and array.shape == tuple(flat.shape)
                and flat.device.type == "cpu")

    def adopt(self, shard: str, array: np.ndarray) -> None:
        """Use `array` itself as the shard's weights, without copying: every parameter becomes
        a view of it. For a worker that only reads its weights (forward and backward), this makes
        a pull free; the array (a read-only view of Ray's object store) stays alive as long as
        the parameters use it. Never use it on weights that are updated in place."""
        self.bind(shard, readonly_tensor(array))

    def bind(self, shard: str, flat: torch.Tensor) -> None:
        """Make `flat` (a 1-D float32 tensor of the shard's size) the shard's weights: every
        parameter becomes a view of it."""
        for place, param in zip(self.layout.params[shard], self._modules_params[shard]):
            param.data = flat[place.offset: place.offset + place.numel].view(place.shape)
        self.params[shard] = flat

    def load_stats(self, shard: str, array: np.ndarray) -> None:
        self.stats[shard].copy_(readonly_tensor(array))

    def param_arrays(self) -> dict[str, np.ndarray]:
        return {shard: flat.detach().cpu().numpy() for shard, flat in self.params.items()}


def load_pieces(flat: FlatModel, states: Sequence[dict], plan: Sequence[Piece],
                shards: Optional[Collection[str]] = None) -> set[str]:
    """Copy saved weights into `flat`: the pieces of `plan` (one state per server actor, as in
    a checkpoint or a snapshot) of the `shards` named, default every shard the model has.
    Returns the shards loaded; a shard whose saved size differs from the model's is a
    ValueError (the weights come from a different model config)."""
    wanted = [p for p in plan if p.shard in flat.params and (shards is None or p.shard in shards)]
    for shard in {p.shard for p in wanted}:
        saved = max(p.stop for p in wanted if p.shard == shard)
        if saved != flat.layout.size(shard):
            raise ValueError(f"shard {shard!r} holds {saved} saved weights where the model has "
                             f"{flat.layout.size(shard)}: they come from a different model config")
    for piece in wanted:
        flat.load(piece.shard, states[piece.server]["weights"][piece.key], piece.start)
    return {p.shard for p in wanted}


def load_norm_stats(flat: FlatModel, states: Sequence[dict], task: str,
                    shards: Optional[Collection[str]] = None) -> None:
    """Copy the norm statistics saved for `task` (actor 0 holds them) into `flat`: those of
    `shards`, default every shard the model has."""
    for shard, array in _saved_norm_stats(states).get(task, {}).items():
        if shard in flat.stats and (shards is None or shard in shards):
            flat.load_stats(shard, array)


def norm_stats_tasks(states: Sequence[dict], shard: str) -> tuple[str, ...]:
    """The tasks whose norm statistics of `shard` are saved in `states`, in the order saved."""
    return tuple(task for task, stats in _saved_norm_stats(states).items() if shard in stats)


def _saved_norm_stats(states: Sequence[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Task -> shard -> statistics; actor 0 keeps them (the last push of each task wins)."""
    return states[0].get("norm_stats", {})


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, buffer_name = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, buffer_name, value)


def readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view of an array that may be read-only (Ray hands out read-only views of its
    object store); callers only read from it. bfloat16 travels as uint16 bits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if array.dtype == np.uint16 else tensor


def encode_grad(grad: torch.Tensor, dtype: str, on_device: bool = False):
    """A gradient as the numpy array that travels: float32 as is (zero-copy on CPU),
    float16 or bfloat16 (as uint16 bits) converted once. With `on_device`, the converted
    tensor where it is (a GPU gradient is then copied to the host once, by the caller)."""
    grad = grad.detach()
    if dtype == "float16":
        grad = grad.to(torch.float16)
    elif dtype == "bfloat16":
        grad = grad.to(torch.bfloat16).view(torch.uint16)
    return grad if on_device else grad.cpu().numpy()
