"""The metrics hub merges actor snapshots and serves them on one Prometheus endpoint."""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ps_trainer.observe.metrics import (METRIC_NAMES, CoordinatorMetrics, EvaluatorMetrics, MetricsHub,
                                        RateMeter, Reporter, ServerMetrics, WorkerMetrics)


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples
            if not s.name.endswith("_created")} | {"__text__": text}


def test_hub_serves_merged_snapshots_from_several_sources():
    hub = MetricsHub("r1")
    port = hub.serve("127.0.0.1", 0)
    try:
        server, w0, w1 = ServerMetrics(0), WorkerMetrics("rotation", 0), WorkerMetrics("rotation", 1)
        server.applied("rotation").inc(7)
        server.rejected("rotation", "stale").inc(2)
        server.staleness("rotation").observe(3)
        w0.push_bytes.inc(100)
        w1.push_bytes.inc(50)
        for source, m in (("server/0", server), ("worker/rotation/0", w0), ("worker/rotation/1", w1)):
            Reporter(source, m.registry, hub.report, every_s=60).now()
        text = scrape(port)["__text__"]
        assert 'ps_updates_applied_total{run="r1",server="0",task="rotation"} 7.0' in text
        assert 'ps_updates_rejected_total{reason="stale",run="r1",server="0",task="rotation"} 2.0' in text
        assert 'ps_push_bytes_total{run="r1",task="rotation",worker="0"} 100.0' in text
        assert 'ps_push_bytes_total{run="r1",task="rotation",worker="1"} 50.0' in text
        assert 'ps_staleness_updates_bucket{le="4.0",run="r1",server="0",task="rotation"} 1.0' in text
        # a replaced actor reports under the same source: its series are replaced, not duplicated
        w0b = WorkerMetrics("rotation", 0)
        w0b.push_bytes.inc(5)
        Reporter("worker/rotation/0", w0b.registry, hub.report, every_s=60).now()
        text = scrape(port)["__text__"]
        assert 'ps_push_bytes_total{run="r1",task="rotation",worker="0"} 5.0' in text
        assert text.count('ps_push_bytes_total{run="r1",task="rotation",worker="0"}') == 1
        # every series carries the run's name, unlabelled ones included
        samples = [line for line in text.splitlines() if line.startswith("ps_")]
        assert samples and all('run="r1"' in line for line in samples)
    finally:
        hub.close()


def test_rate_meter_sets_the_rate_over_each_window():
    gauge = ServerMetrics(0).updates_per_s
    meter = RateMeter(gauge, window_s=2.0)
    meter.update(100, now=10.0)
    meter.update(110, now=11.0)            # inside the window: unchanged
    assert gauge._value.get() == 0.0
    meter.update(130, now=12.5)            # 30 updates in 2.5 s
    assert gauge._value.get() == 12.0
    meter.update(130, now=15.0)            # no updates: falls to 0
    assert gauge._value.get() == 0.0


def test_every_declared_name_is_defined_once_and_follows_conventions():
    defined = set()
    for metrics in (ServerMetrics(0), WorkerMetrics("t", 0), EvaluatorMetrics(), CoordinatorMetrics()):
        for family in metrics.registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            assert name not in defined
            defined.add(name)
    assert defined == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert name.startswith("ps_")


def test_reporter_rate_limits_and_survives_a_failing_hub():
    sent = []
    reporter = Reporter("x", ServerMetrics(0).registry, lambda s, f: sent.append(s), every_s=3600)
    reporter.maybe()
    reporter.maybe()
    assert sent == ["x"]

    def broken(source, families):
        raise ConnectionError("hub is gone")

    Reporter("y", ServerMetrics(1).registry, broken, every_s=0).maybe()   # must not raise
