"""ops.vocab_parallel_cross_entropy against megatron-core's vocab_parallel_cross_entropy (one rank) and against a
full-vocabulary log-softmax (two gloo ranks, padded vocabulary), forward and gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_llm import ops
from megatron_llm.launch.local import free_port
from megatron_llm.ops import cross_entropy, reference

from ops_helpers import TOL, backend, compare  # noqa: F401  (fixture)


@pytest.fixture
def single_rank_megatron_ce(monkeypatch):
    """megatron-core's function at TP 1: a one-process gloo group stands in for its tensor-parallel group."""
    from megatron.core.tensor_parallel import cross_entropy as mce

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    monkeypatch.setattr(mce, "get_tensor_model_parallel_group", lambda: dist.group.WORLD)
    monkeypatch.setattr(mce, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(mce, "get_tensor_model_parallel_world_size", lambda: 1)
    yield mce.vocab_parallel_cross_entropy
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_megatron_core_at_tp1(backend, single_rank_megatron_ce, dtype, smoothing):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 3, 97, generator=g)).to(dtype)
    target = torch.randint(0, 97, (5, 3), generator=g)
    compare(lambda z: ops.vocab_parallel_cross_entropy(z, target, tp_group=dist.group.WORLD,
                                                       label_smoothing=smoothing),
            lambda z: single_rank_megatron_ce(z, target, smoothing), [logits], dtype)


def test_padded_vocabulary_never_counts(backend, monkeypatch):
    logits = torch.randn(4, 2, 64)
    target = torch.randint(0, 50, (4, 2))
    expected = torch.nn.functional.cross_entropy(logits[..., :50].reshape(-1, 50), target.reshape(-1),
                                                 reduction="none").view(4, 2)
    z = logits.clone().requires_grad_(True)
    loss = ops.vocab_parallel_cross_entropy(z, target, vocab_size=50)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert torch.count_nonzero(z.grad[..., 50:]) == 0
    bigger = logits.clone()
    bigger[..., 50:] = 1e4  # padding logits, however large, change nothing
    torch.testing.assert_close(ops.vocab_parallel_cross_entropy(bigger, target, vocab_size=50), expected)


def test_torch_fallback_works_in_row_chunks(monkeypatch):
    monkeypatch.setenv("MEGATRON_LLM_NO_EXT", "1")
    monkeypatch.setattr(cross_entropy, "_CHUNK_ELEMENTS", 40)  # 40 // 13 = 3 rows a chunk over 14 rows
    logits = torch.randn(7, 2, 13)
    target = torch.randint(0, 13, (7, 2))
    compare(lambda z: ops.vocab_parallel_cross_entropy(z, target, label_smoothing=0.2),
            lambda z: reference.cross_entropy(z, target, 0.2), [logits], torch.float32)


def _tp2_worker(rank, port, use_ext, results):
    os.environ["MEGATRON_LLM_NO_EXT"] = "0" if use_ext else "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(5)
    full = torch.randn(6, 2, 2 * 24, generator=g, dtype=torch.float64)
    target = torch.randint(0, 40, (6, 2), generator=g)  # real vocabulary 40, padded to 48: rank 1 holds 8 pad columns
    shard = full[..., rank * 24:(rank + 1) * 24].clone().requires_grad_(True)
    loss = ops.vocab_parallel_cross_entropy(shard, target, tp_group=dist.group.WORLD, label_smoothing=0.1,
                                            vocab_size=40)
    loss.backward(torch.arange(12, dtype=torch.float32).view(6, 2))
    results[rank] = (loss.detach(), shard.grad)
    dist.destroy_process_group()


@pytest.mark.parametrize("use_ext", [False, True])
def test_two_shards_equal_the_full_vocabulary(use_ext):
    results = mp.Manager().dict()
    mp.spawn(_tp2_worker, args=(free_port(), use_ext, results), nprocs=2, join=True)
    g = torch.Generator().manual_seed(5)
    full = torch.randn(6, 2, 48, generator=g, dtype=torch.float64).requires_grad_(True)
    target = torch.randint(0, 40, (6, 2), generator=g)
    expected = reference.cross_entropy(full, target, 0.1, vocab_size=40)
    expected.backward(torch.arange(12, dtype=torch.float64).view(6, 2))
    for rank in range(2):
        loss, grad = results[rank]
        torch.testing.assert_close(loss.double(), expected.detach(), **TOL[torch.float64])
        torch.testing.assert_close(grad, full.grad[..., rank * 24:(rank + 1) * 24], **TOL[torch.float64])
