"""ParameterClient: a worker's side of the parameter-server protocol (task-agnostic).

    client = ParameterClient(servers, pieces, flat, inflight=2, grad_dtype="float32")
    client.connect()                       # blocking first pull
    while training:
        client.refresh()                   # newer weights (prefetched, or pulled now)
        stats = step()                     # gradients land in flat.grads
        client.push(task, worker_id, stats, norm_stats)

With ``prefetch`` (the default) the next pull is requested as soon as the previous one is
applied, so the round trip overlaps the step, but the weights a step uses are one step older.
Without it, ``refresh`` pulls and waits: the step starts from the newest version, which
includes this worker's own earlier pushes (Ray runs one caller's calls to an actor in order).
That costs a round trip per step and lowers staleness by about one step of every other
worker: the better trade where workers share cores, so that waiting costs no compute.

A shard that arrives whole is adopted, not copied: the model's parameters become views of
the object-store buffer (workers only read weights).
Pushes are fire-and-forget with at most `inflight` outstanding; the oldest is waited for
only when the limit is reached. A model split over several server actors is pushed
all-or-nothing (see ``server.py``): each part but actor 0's is staged, and actor 0 decides for
the whole push once every part is staged.

With ``shared_memory``, a server actor on this worker's node reads float32 pushes from the
worker's own memory (``push_buffers.py``): the gradients live in ``inflight + 1`` shared regions
and a push names its region. A region is written again only after the push that sent it has been
answered: a push waits until fewer than ``inflight`` are outstanding, so the region after it
belongs to a push that has been answered. A CPU model's backward writes straight into the
region (its gradients are bound to it); a GPU model's gradients are copied there.
"""
from __future__ import annotations

import collections
import logging
import math
import random
import time
from typing import Callable, Optional

import numpy as np
import ray
import torch

from ps_trainer.transport.device_copies import HostStaging, StagedWeights, pin_host_memory
from ps_trainer.core.params import FlatModel, Piece, encode_grad, readonly_tensor
from ps_trainer.core.protocol import PushResult, PushStats, with_push_facts
from ps_trainer.transport.push_buffers import PushBuffers

log = logging.getLogger(__name__)


def wire_norm(arrays) -> float:
    """L2 norm of the gradient exactly as it travels (float16 overflow shows up as Inf)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(readonly_tensor(a), dtype=torch.float32))
                         ** 2 for a in arrays))


class _ServerLink:
    """The pieces one server actor owns that this client reads and writes, and its version."""

    def __init__(self, handle, pieces: list[Piece]):
        self.handle = handle
        self.pieces = pieces
        self.keys = tuple(p.key for p in pieces)
        self.by_key = {p.key: p for p in pieces}
        self.version = -1                     # the version the model computes with
        self.received = -1                    # the newest version pulled (maybe not yet in use)
        self.incarnation = 0                  # the servers' incarnation of `version`
        self.received_incarnation = 0         # ... and of `received`
        self.buffer: Optional[int] = None     # the server's id of our shared push buffer


class ParameterClient:
    def __init__(self, servers: list, pieces: tuple[Piece, ...], flat: FlatModel, inflight: int,
                 grad_dtype: str = "float32", report_norm: bool = False, prefetch: bool = True,
                 shared_memory: bool = False,
                 on_result: Optional[Callable[[PushResult], None]] = None,
                 on_timing: Optional[Callable[[str, float], None]] = None):
        self.pieces = pieces
        self.flat = flat
        self.inflight = inflight
        self.prefetch = prefetch
        self.grad_dtype = grad_dtype
        self.report_norm = report_norm       # the server trusts it (server.verify_gradients off)
        self.on_result = on_result or (lambda result: None)
        self.on_timing = on_timing or (lambda what, seconds: None)   # ("pull" | "wait", s)
        self.links = self._links(servers)
        self._pending: collections.deque = collections.deque()
        self._prefetch: Optional[list] = None
        self._device = next(iter(flat.params.values())).device
        shards = sorted({p.shard for p in pieces})
        # A GPU model's weights arrive through pinned memory into a second device buffer
        # (device_copies.py); a CPU model adopts the object store's arrays without a copy.
        self._staging = (StagedWeights({s: flat.params[s] for s in shards}, flat.bind)
                         if self._device.type == "cuda" else None)
        self._uncommitted = False              # a version staged during the step, not yet used
        self._host = HostStaging()             # a GPU push's host copy, when not in a region
        self._bound = False                    # CPU gradients live in the shared regions
        self._buffers = self._push_buffers() if shared_memory else None
        self._attached = False                 # asked the current servers to map the buffers
        self._region = 0
        self.reset_counters()

    def _push_buffers(self) -> Optional[PushBuffers]:
        """Shared gradient regions, each starting as the gradients so far; CPU gradients are
        bound to the first. None where pushes cannot use them (they use the object store)."""
        if self.grad_dtype != "float32":
            return None                        # converted pushes travel as objects
        shards = sorted({p.shard for p in self.pieces})
        try:
            buffers = PushBuffers({s: self.flat.grads[s].numel() for s in shards},
                                  self.inflight + 1)
        except OSError as err:
            log.info("pushes go through the object store: %s", err)
            return None
        for region in buffers.views:
            for shard, view in region.items():
                view.copy_(self.flat.grads[shard])
        self._bound = all(self.flat.grads[s].device.type == "cpu" for s in shards)
        if self._bound:
            self._bindings = [self.flat.grad_binding(views) for views in buffers.views]
            self.flat.bind_grads(self._bindings[0])
        else:             # GPU gradients are copied into the regions: make that one DMA
            pin_host_memory(buffers.whole)
        return buffers

    @property
    def shared_links(self) -> int:
        """How many server actors read this client's pushes from shared memory."""
        return sum(link.buffer is not None for link in self.links)

    def reset_counters(self) -> None:
        """Zero the running totals callers read (plain numbers: nothing accumulates)."""
        self.pulled_bytes = 0
        self.pushed_bytes = 0
        self.pull_seconds = 0.0
        self.wait_seconds = 0.0
        self.push_seconds = 0.0              # encoding and handing the push to Ray

    def _links(self, servers: list) -> list[_ServerLink]:
        """One link per actor holding some of the pieces; actor 0 always (it decides every
        push of a split model), first."""
        links = []
        for index, handle in enumerate(servers):
            pieces = [p for p in self.pieces if p.server == index]
            if pieces or index == 0:
                links.append(_ServerLink(handle, pieces))
        return links

    def reconnect(self, servers: list) -> None:
        """Use replacement server actors: in-flight pushes are abandoned, weights re-pulled."""
        self.links = self._links(servers)
        self._pending.clear()
        self._prefetch = None
        self._attached = False
        self._uncommitted = False
        if self._staging is not None:
            self._staging.discard()

    def connect(self) -> None:
        """Pull the current weights (blocking), then start prefetching if the client does."""
        self._apply(ray.get(self._request()))
        if self.prefetch:
            self._prefetch = self._request()

    # ------------------------------------------------------------------ pull

    def _request(self) -> list:
        return [link.handle.pull.remote(link.keys, link.version) for link in self.links]

    def refresh(self) -> bool:
        """Use the newest weights at hand before a step: a version staged during the last step,
        else the prefetched pull if every server has answered (without prefetch: pull now and
        wait); True if weights changed."""
        if self._uncommitted:
            self._commit()
            return True
        if not self.prefetch:
            return self._apply(ray.get(self._request()))
        if self._prefetch is None:
            self.connect()
            return True
        if not self._answered():
            return False
        changed = self._apply(ray.get(self._prefetch))
        self._prefetch = self._request()
        return changed

    def stage_arrived(self) -> None:
        """While a GPU step computes: if the prefetched pull has arrived, copy it towards the
        device now (pinned memory, a copy stream) and ask for the next; the next
        :meth:`refresh` puts it in use. Nothing to do for a CPU model (it adopts at refresh)."""
        if self._staging is None or self._prefetch is None or self._uncommitted:
            return
        if self._answered():
            self._uncommitted = self._apply(ray.get(self._prefetch), commit=False)
            self._prefetch = self._request()

    def _answered(self) -> bool:
        ready, _ = ray.wait(self._prefetch, num_returns=len(self._prefetch), timeout=0)
        return len(ready) == len(self._prefetch)

    def _apply(self, answers: list, commit: bool = True) -> bool:
        start = time.perf_counter()
        changed = False
        for link, (version, refs, incarnation) in zip(self.links, answers):
            if refs:
                arrays = ray.get(list(refs.values()))      # zero-copy views of the object store
                for key, array in zip(refs, arrays):
                    self._take(link.by_key[key], array)
                    self.pulled_bytes += array.nbytes
                changed = True
            link.received, link.received_incarnation = version, incarnation
        if commit:
            self._commit()
        if changed:
            self._timed("pull", start)
        return changed

    def _take(self, piece: Piece, array: np.ndarray) -> None:
        if self._staging is not None:
            self._staging.stage(piece.shard, array, piece.start)
        elif self.flat.can_adopt(piece.shard, array, piece.start):
            self.flat.adopt(piece.shard, array)        # a whole shard: no copy at all
        else:
            self.flat.load(piece.shard, array, piece.start)

    def _commit(self) -> None:
        """The received versions become the ones the model computes with (and pushes count
        their staleness from)."""
        if self._staging is not None:
            self._staging.commit()
        for link in self.links:
            link.version, link.incarnation = link.received, link.received_incarnation
        self._uncommitted = False

    # ------------------------------------------------------------------ push

    def push(self, task: str, worker_id: int, stats: PushStats,
             norm_stats: Optional[dict[str, np.ndarray]] = None,
             shards: tuple[str, ...] = ()) -> None:
        """Send this step's gradients of `shards` (default: every shard the pieces cover)
        to every server that owns some of them, without waiting for the answer."""
        if len(self._pending) >= self.inflight:
            start = time.perf_counter()
            self.on_result(ray.get(self._pending.popleft()))
            self._timed("wait", start)
        if self._buffers is not None and not self._attached:
            self._attach()
        start = time.perf_counter()
        wanted = shards or tuple({p.shard for p in self.pieces})
        region = self._region
        grads = self._host_grads(wanted, region)
        # One copy of the stats per push: the incarnation of the weights the step used (the
        # servers fence off a push of another) and, when asked, the norm as sent.
        stats = with_push_facts(stats, self.links[0].incarnation,
                                wire_norm(grads.values()) if self.report_norm else stats.grad_norm)
        chunks = []
        for link in self.links:
            pieces = [p for p in link.pieces if p.shard in grads]
            self.pushed_bytes += sum(grads[p.shard][p.start: p.stop].nbytes for p in pieces)
            if link.buffer is not None:
                chunk = {p.key: self._buffers.ref(link.buffer, region, p.shard, p.start, p.stop)
                         for p in pieces}
            else:
                chunk = {p.key: grads[p.shard][p.start: p.stop] for p in pieces}
            chunks.append(chunk)
        first = self.links[0]
        if len(self.links) == 1:
            ref = first.handle.push.remote(task, worker_id, first.version, chunks[0], stats,
                                           norm_stats)
        else:
            # The oldest weights this step used: the push's staleness counts from them.
            base = min(link.version for link in self.links)
            push_id = random.getrandbits(63)
            staged = [link.handle.stage.remote(push_id, task, base, chunk, stats)
                      for link, chunk in zip(self.links[1:], chunks[1:])]
            ref = first.handle.push_first.remote(push_id, task, worker_id, base, chunks[0],
                                                 stats, norm_stats, *staged)
        self._pending.append(ref)
        if self._buffers is not None:     # the next step writes the next region (see above)
            self._region = (region + 1) % self._buffers.regions
            if self._bound:
                self.flat.bind_grads(self._bindings[self._region])
        self.push_seconds += time.perf_counter() - start

    def _host_grads(self, shards: tuple[str, ...], region: int) -> dict[str, np.ndarray]:
        """This step's gradients as the host arrays that travel, each made with at most one
        copy: a CPU model's are its gradient buffers (bound to the region with shared memory);
        a GPU model's are copied once, into the region or a pinned buffer, converted to
        grad_dtype on the device first."""
        if self._device.type != "cuda":
            return {s: encode_grad(self.flat.grads[s], self.grad_dtype) for s in shards}
        if self._buffers is not None:                  # float32 into the shared region
            views = self._buffers.views[region]
            for shard in shards:
                views[shard].copy_(self.flat.grads[shard], non_blocking=True)
            HostStaging.wait(self._device)
            return {s: views[s].numpy() for s in shards}
        device_grads = {s: encode_grad(self.flat.grads[s], self.grad_dtype, on_device=True)
                        for s in shards}
        host = {s: self._host.to_host(s, g) for s, g in device_grads.items()}
        HostStaging.wait(self._device)
        return {s: t.numpy() for s, t in host.items()}

    def _attach(self) -> None:
        """Ask every server actor to map the push buffers (those on another node decline)."""
        node = ray.get_runtime_context().get_node_id()
        answers = ray.get([link.handle.attach_push_buffer.remote(node, self._buffers.describe())
                           for link in self.links])
        for link, buffer_id in zip(self.links, answers):
            link.buffer = buffer_id
        self._attached = True

    def _timed(self, what: str, start: float) -> None:
        seconds = time.perf_counter() - start
        if what == "pull":
            self.pull_seconds += seconds
        else:
            self.wait_seconds += seconds
        self.on_timing(what, seconds)

    def drain(self) -> None:
        """Wait for every outstanding push (abandoning them if a server is gone)."""
        try:
            while self._pending:
                self.on_result(ray.get(self._pending.popleft()))
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
            self._pending.clear()
