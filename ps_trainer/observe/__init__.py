"""Watching a run: Prometheus metrics, the progress line, curves and mask previews."""
