"""Moving weights and gradients: the parameter-server actor, its client, shared push
buffers and pinned host copies."""
