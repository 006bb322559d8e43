"""Which numbers seed a worker's stream: a new number for every replacement and resume, and
restart 0 gives the stream of the runs before restarts were counted."""
from __future__ import annotations

import numpy as np
import pytest

from ps_trainer.data.streams import restart_number, stream_entropy


def test_restart_numbers_differ_for_every_incarnation_and_resume():
    numbers = {restart_number(i, resumed) for i in range(4) for resumed in (None, 0, 1, 4000)}
    assert len(numbers) == 16
    assert restart_number(0) == 0 and restart_number(2) == 2
    assert restart_number(3, resumed_from=4000) == (4001 << 32) + 3
    with pytest.raises(ValueError):
        restart_number(1 << 32)


def test_restart_zero_keeps_the_stream_of_seed_task_and_replica():
    before = np.random.default_rng([7, 2, 1]).random(5)           # how workers were seeded
    np.testing.assert_array_equal(np.random.default_rng(stream_entropy(7, 2, 1, 0)).random(5),
                                  before)
    for restart in (1, restart_number(0, 0), restart_number(1, 0)):
        other = np.random.default_rng(stream_entropy(7, 2, 1, restart)).random(5)
        assert not np.array_equal(other, before)
