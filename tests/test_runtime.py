"""Process-level helpers: memory for the server's streamed vectors."""
from __future__ import annotations

import mmap
from pathlib import Path

import pytest
import torch

from ps_trainer.core.runtime import huge_page_zeros, streamed_zeros_like

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_eligible(tensor: torch.Tensor) -> bool:
    """Whether the kernel may back the mapping that holds `tensor` with huge pages (the
    THPeligible flag of its entry in /proc/self/smaps)."""
    address, entry = tensor.data_ptr(), None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, stop = (int(x, 16) for x in head.split("-"))
            entry = start <= address < stop
        elif entry and line.startswith("THPeligible:"):
            return line.split()[1] == "1"
    raise AssertionError("no mapping holds the tensor")


def test_streamed_zeros_are_writable_float32_zeros():
    for numel in (10, 3_000_000):                       # under and over one huge page
        t = huge_page_zeros(numel)
        assert t.dtype == torch.float32 and t.shape == (numel,) and float(t.abs().sum()) == 0
        t.add_(1.5)
        assert float(t.sum()) == 1.5 * numel
    like = torch.ones(3_000_000)
    assert torch.equal(streamed_zeros_like(like), torch.zeros_like(like))
    assert streamed_zeros_like(torch.ones(4, 4)).shape == (4, 4)       # not flat: plain zeros


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE") or not THP.exists()
                    or "[never]" in THP.read_text(), reason="no transparent huge pages here")
def test_streamed_vectors_may_use_huge_pages_where_plain_tensors_may_not():
    big = huge_page_zeros(3_000_000)
    big.fill_(1.0)
    assert thp_eligible(big)
    if "[madvise]" in THP.read_text():   # only what asks for huge pages gets them
        # The same kind of mapping without the advice (not torch.ones: in a long process the
        # allocator may hand out memory a library has already advised).
        plain = torch.frombuffer(mmap.mmap(-1, 12_000_000, flags=mmap.MAP_PRIVATE),
                                 dtype=torch.float32)
        plain.fill_(1.0)
        assert not thp_eligible(plain)


def test_auto_prefetches_on_a_gpu_worker_only():
    from ps_trainer.core.runtime import prefetches

    assert prefetches("auto", torch.device("cpu")) is False
    assert prefetches("auto", torch.device("cuda")) is True
    assert prefetches(True, torch.device("cpu")) is True
    assert prefetches(False, torch.device("cuda")) is False
