"""The names of the parameter groups (*shards*) the server holds, in one place.

A shard is the parameters trained together and shipped as one flat float32 array: the trunk,
and one ``head/<head>`` per head (a head's lasso mix goes with it). A task's pushes carry the
trunk and the head it trains (:func:`shards_of_head`). Which server *actor* holds which piece
of which shard is the plan's business (``params.plan_pieces``), not the name's.
"""
from __future__ import annotations

TRUNK_SHARD = "trunk"
HEAD_PREFIX = "head/"


def head_shard(head: str) -> str:
    """The shard of a head's parameters (and of its lasso)."""
    return HEAD_PREFIX + head


def shards_of_head(head: str) -> tuple[str, str]:
    """The shards a task that trains `head` pushes gradients for."""
    return (TRUNK_SHARD, head_shard(head))
