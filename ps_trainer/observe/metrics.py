"""Prometheus metrics: one endpoint for the whole run.

Each actor records into its own private registry (an in-process counter increment, no I/O on
the hot path) and a :class:`Reporter` ships a snapshot of it to the :class:`MetricsHub` every
``metrics.report_every_s``. The hub keeps the latest snapshot per source and serves them merged
on ``metrics.host:metrics.port``, every series labelled with the run's name (``run``), so runs
that share a Prometheus stay apart. A replaced actor reports under the same source name, so its
series continue (Prometheus treats the counter restart as a reset).

Names follow Prometheus conventions (``_total``, ``_seconds``, ``_bytes``); the list is in
:data:`METRIC_NAMES` and the Grafana dashboard in ``deploy/`` reads them.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric

log = logging.getLogger(__name__)

STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """Recorded by each parameter-server actor (label ``server``: its index)."""

    def __init__(self, server: int):
        self.registry = r = CollectorRegistry(auto_describe=True)
        s = str(server)
        self.applied = _bind(Counter("ps_updates_applied_total", "Updates applied, by task",
                                     ["server", "task"], registry=r), s)
        self.rejected = _bind(Counter("ps_updates_rejected_total",
                                      "Pushes rejected, by task and reason (stale, nonfinite)",
                                      ["server", "task", "reason"], registry=r), s)
        self.received = _bind(Counter("ps_pushes_received_total", "Pushes received, by task",
                                      ["server", "task"], registry=r), s)
        self.push_bytes = _bind(Counter("ps_server_push_bytes_total",
                                        "Gradient bytes received", ["server", "task"], registry=r), s)
        self.staleness = _bind(Histogram("ps_staleness_updates",
                                         "Staleness of pushes (server versions behind)",
                                         ["server", "task"], buckets=STALENESS_BUCKETS,
                                         registry=r), s)
        self.apply_seconds = Histogram("ps_apply_seconds", "Time to check, weight and apply a push",
                                       ["server"], buckets=FAST_BUCKETS, registry=r).labels(s)
        self.publish_seconds = Histogram("ps_publish_seconds", "Time to publish a weight version",
                                         ["server"], buckets=FAST_BUCKETS, registry=r).labels(s)
        self.version = Gauge("ps_server_version", "Server version (updates applied)",
                             ["server"], registry=r).labels(s)
        self.lr = Gauge("ps_learning_rate", "Current learning rate", ["server"], registry=r).labels(s)
        self.updates_per_s = Gauge("ps_updates_per_second",
                                   "Updates applied per second (all tasks), over the last report "
                                   "interval", ["server"], registry=r).labels(s)
        self.task_weight = _bind(Gauge("ps_task_weight", "Balancing weight per task",
                                       ["server", "task"], registry=r), s)
        self.task_loss = _bind(Gauge("ps_task_loss", "Latest reported loss per task (EMA)",
                                     ["server", "task"], registry=r), s)


def worker_source(task: str, replica: int) -> str:
    """The hub's name for the metrics of worker `replica` of `task` (replacements share it)."""
    return f"worker/{task}/{replica}"


class WorkerMetrics:
    """Recorded by each task worker (labels ``task``, ``worker``)."""

    def __init__(self, task: str, replica: int):
        self.registry = r = CollectorRegistry(auto_describe=True)
        labels = (task, str(replica))
        names = ["task", "worker"]
        self.step_seconds = Histogram("ps_worker_step_seconds", "Batch + forward + backward time",
                                      names, buckets=FAST_BUCKETS + SLOW_BUCKETS[6:],
                                      registry=r).labels(*labels)
        self.pull_seconds = Histogram("ps_worker_pull_seconds", "Time to fetch and load new weights",
                                      names, buckets=FAST_BUCKETS, registry=r).labels(*labels)
        self.wait_seconds = Histogram("ps_worker_push_wait_seconds",
                                      "Time blocked on the in-flight push limit",
                                      names, buckets=FAST_BUCKETS, registry=r).labels(*labels)
        self.pull_bytes = Counter("ps_pull_bytes_total", "Weight bytes pulled", names,
                                  registry=r).labels(*labels)
        self.push_bytes = Counter("ps_push_bytes_total", "Gradient bytes pushed", names,
                                  registry=r).labels(*labels)
        self.steps = Counter("ps_worker_steps_total", "Steps computed", names,
                             registry=r).labels(*labels)
        self.images_skipped = Counter("ps_images_skipped_total", "Unusable images skipped",
                                      names, registry=r).labels(*labels)


class EvaluatorMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.miou = Gauge("ps_eval_miou", "Latest validation mIoU", registry=r)
        self.best_miou = Gauge("ps_eval_best_miou", "Best validation mIoU so far", registry=r)
        self.evaluations = Counter("ps_evaluations_total", "Evaluations run", registry=r)
        self.eval_seconds = Histogram("ps_eval_seconds", "Time to score the validation split",
                                      buckets=SLOW_BUCKETS, registry=r)
        self.checkpoint_seconds = Histogram("ps_checkpoint_seconds", "Time to write a checkpoint",
                                            buckets=SLOW_BUCKETS, registry=r)
        self.checkpoint_bytes = Gauge("ps_checkpoint_bytes", "Size of the latest checkpoint",
                                      registry=r)


class CoordinatorMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.workers = Gauge("ps_workers", "Workers running per task (their actor has answered)",
                             ["task"], registry=r)
        self.workers_pending = Gauge("ps_workers_pending", "Workers asked for but not running yet "
                                     "(not placed by Ray, or starting), per task", ["task"],
                                     registry=r)
        self.restarts = Counter("ps_actor_restarts_total", "Actors replaced after dying, by role",
                                ["role"], registry=r)


METRIC_NAMES = (
    "ps_updates_applied_total", "ps_updates_rejected_total", "ps_pushes_received_total",
    "ps_server_push_bytes_total", "ps_staleness_updates", "ps_apply_seconds", "ps_publish_seconds",
    "ps_server_version", "ps_learning_rate", "ps_task_weight", "ps_task_loss",
    "ps_worker_step_seconds", "ps_worker_pull_seconds", "ps_worker_push_wait_seconds",
    "ps_pull_bytes_total", "ps_push_bytes_total", "ps_worker_steps_total",
    "ps_images_skipped_total", "ps_eval_miou", "ps_eval_best_miou", "ps_evaluations_total",
    "ps_eval_seconds", "ps_checkpoint_seconds", "ps_checkpoint_bytes", "ps_workers",
    "ps_workers_pending", "ps_actor_restarts_total", "ps_updates_per_second",
)


class RateMeter:
    """Sets `gauge` to the growth rate of a count (e.g. the server version), measured over
    windows of at least `window_s`; call :meth:`update` with the current count as often as you
    like (one clock read when the window is not over)."""

    def __init__(self, gauge, window_s: float):
        self._gauge = gauge
        self._window_s = window_s
        self._start: Optional[tuple[float, float]] = None   # (time, count) at the window start

    def update(self, count: float, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        if self._start is None:
            self._start = (now, count)
            return
        then, before = self._start
        if now - then >= self._window_s:
            self._gauge.set((count - before) / (now - then))
            self._start = (now, count)


def _bind(metric, server: str) -> Callable[..., Any]:
    """metric.labels(server, *rest) with the server actor fixed, cached per label set."""
    cache: dict[tuple, Any] = {}

    def labels(*rest: str):
        child = cache.get(rest)
        if child is None:
            child = cache[rest] = metric.labels(server, *rest)
        return child

    return labels


# --------------------------------------------------------------------------- hub

class MetricsHub:
    """Keeps the latest snapshot per source; a prometheus collector that serves them merged,
    with the label ``run=<run>`` added to every sample."""

    def __init__(self, run: str = ""):
        self._run = run
        self._snapshots: dict[str, list[Metric]] = {}
        self._lock = threading.Lock()
        self._server = None
        self.port: Optional[int] = None

    def report(self, source: str, families: list[Metric]) -> None:
        with self._lock:
            self._snapshots[source] = families

    def forget(self, source: str) -> None:
        with self._lock:
            self._snapshots.pop(source, None)

    def collect(self):
        with self._lock:
            snapshots = list(self._snapshots.values())
        merged: dict[str, Metric] = {}
        for families in snapshots:
            for family in families:
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation,
                                                          family.type, family.unit)
                target.samples.extend(s._replace(labels={**s.labels, "run": self._run})
                                      for s in family.samples)
        return list(merged.values())

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (useful with port 0)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server, _ = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_port)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Reporter:
    """Ships a registry's snapshot to the hub at most every `every_s` (call :meth:`maybe` often)."""

    def __init__(self, source: str, registry: CollectorRegistry, send: Callable[[str, list], Any],
                 every_s: float):
        self.source = source
        self.registry = registry
        self._send = send
        self.every_s = every_s
        self._next = 0.0

    @classmethod
    def to_hub(cls, source: str, registry: CollectorRegistry, hub: Any,
               every_s: float) -> "Reporter":
        """A reporter whose snapshots go to the MetricsHub actor `hub` (nowhere without one)."""
        if hub is None:
            return cls(source, registry, lambda *snapshot: None, every_s)
        return cls(source, registry, lambda source, fams: hub.report.remote(source, fams), every_s)

    def maybe(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            self.now()

    def now(self) -> None:
        try:
            self._send(self.source, list(self.registry.collect()))
        except Exception as err:  # metrics must never stop training
            log.debug("metrics report from %s failed: %s", self.source, err)
