"""The parts that need no Ray: shard names, flat parameters, the store and its update rule,
optimizer kernels, loss balancing, protocol messages, the schedule, checkpoint files and
compute slots."""
