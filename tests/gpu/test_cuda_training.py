"""On a CUDA machine the same trainer runs with NCCL and no emulation (run on the H100; skipped without CUDA)."""

import os
import sys

import pytest
import torch

from megatron_llm.launch.local import free_port
from megatron_llm.training.callbacks import TrainCallback

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Inspect(TrainCallback):
    def on_train_start(self, ctx):
        import torch.distributed as dist

        self.backend = dist.get_backend()
        self.emulation_imported = "megatron_llm.parallel.cpu_emulation" in sys.modules
        self.current_device_is_torchs = torch.cuda.current_device.__module__.startswith("torch.cuda")
        self.param_devices = {p.device.type for m in ctx.model for p in m.parameters()}
        x = torch.empty(2, device="cuda")
        self.cuda_alloc = x.device.type


def test_cuda_run_uses_nccl_and_no_emulation(monkeypatch, tmp_path):
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.training.pretrain import pretrain

    port = free_port()
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    args, values = parse_run_args([
        "--device", "cuda", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1024",
        "--num-layers", "2", "--hidden-size", "128", "--num-attention-heads", "4", "--num-query-groups", "2",
        "--seq-length", "128", "--max-position-embeddings", "128", "--micro-batch-size", "2", "--train-iters", "5",
        "--eval-interval", "0", "--bf16", "--tensorboard-dir", str(tmp_path / "tb")])
    probe = Inspect()
    summary = pretrain(build_config(values, args.recipe), callbacks=[probe])
    assert probe.backend == "nccl"
    assert not probe.emulation_imported
    assert probe.current_device_is_torchs
    assert probe.param_devices == {"cuda"} and probe.cuda_alloc == "cuda"
    losses = summary["lm_loss"]
    assert sorted(losses) == [1, 2, 3, 4, 5] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
