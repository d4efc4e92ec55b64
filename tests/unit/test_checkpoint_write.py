"""checkpointing.write, synchronous: megatron-core's writers hand their results back through a plain in-process
queue (no spawned manager process that imports torch, ~2 s a rank), and the checkpoint reads back exactly."""

from __future__ import annotations

from megatron_process import run


def test_sync_save_starts_no_manager_and_reads_back(tmp_path):
    run(f"""
    import multiprocessing, os
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron_llm.training import checkpointing

    torch.manual_seed(0)
    tensors = {{f"w{{i}}": torch.randn(33 + i, 7) for i in range(6)}}
    root = {str(tmp_path)!r}
    for it in (1, 2):  # a second save through the same (restored) megatron-core state
        sd = {{k: ShardedTensor.from_rank_offsets(k, v * it) for k, v in tensors.items()}}
        final = checkpointing.write(root, it, dict(sd, iteration=it))
        assert filesystem_async._results_queue is None, "megatron-core started its manager queue"
        assert multiprocessing.active_children() == [], multiprocessing.active_children()
    assert sorted(os.listdir(root)) == ["iter_0000001", "iter_0000002", checkpointing.TRACKER]
    want = {{k: ShardedTensor.from_rank_offsets(k, torch.empty_like(v)) for k, v in tensors.items()}}
    got = dist_checkpointing.load(want, final)
    for k, v in tensors.items():
        assert torch.equal(got[k], v * 2), k
    assert dist_checkpointing.load_common_state_dict(final)["iteration"] == 2
    """)
