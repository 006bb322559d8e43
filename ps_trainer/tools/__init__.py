"""Command-line tools: the CLI, the benchmarks, chaos testing, trunk export."""
