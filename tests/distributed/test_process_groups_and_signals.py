"""--distributed-timeout-minutes reaches every process group; the health exchange reports the max memory over ranks; a stop signal
saves before (instead of) evaluating."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from trainrun import MODEL, VOCAB, make_dataset, signal_after

RANK_SCRIPT = r"""
import json, os, torch
from megatron_llm.config.arguments import build_config
from megatron_llm.training.initialize import initialize, shutdown
import megatron_llm.training.health as health
from megatron.core import parallel_state as ps
cfg = build_config({"device": "cpu", "distributed_timeout_minutes": 3.5, "tokenizer_type": "NullTokenizer",
                    "vocab_size": 64, "mock_data": True, "pipeline_model_parallel_size": 2, "num_layers": 2})
info = initialize(cfg)
def minutes(group):
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds() / 60
groups = {"world": torch.distributed.distributed_c10d._get_default_group(), "dp": ps.get_data_parallel_group(),
          "tp": ps.get_tensor_model_parallel_group(), "pp": ps.get_pipeline_model_parallel_group()}
health.memory_gb = lambda device: 10.0 * info.rank + 1.5  # this rank's "peak memory"
report = health.HealthMonitor(cfg, info).exchange(False)
print(json.dumps({"timeouts": {k: minutes(g) for k, g in groups.items()}, "max": report.mem_gb_max}))
shutdown()
"""


def test_timeout_reaches_every_group_and_memory_max_over_ranks():
    from megatron_llm.launch.local import free_port

    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["timeouts"] == {"world": 3.5, "dp": 3.5, "tp": 3.5, "pp": 3.5}
        assert r["max"] == 11.5  # rank 1's figure, seen by both ranks


def test_timeout_must_be_positive():
    from megatron_llm.config.arguments import ConfigError, build_config, validate

    cfg = build_config({"distributed_timeout_minutes": 0, "vocab_size": 64, "mock_data": True})
    with pytest.raises(ConfigError, match="--distributed-timeout-minutes"):
        validate(cfg, 1)


def test_stop_signal_saves_and_does_not_evaluate(tmp_path):
    """With an evaluation due at every iteration, the iteration a SIGUSR1 stops at is saved and not evaluated."""
    from megatron_llm.exit_codes import EXIT_CODE_REQUEUE

    data = make_dataset(str(tmp_path / "zipf"))
    ckpt = tmp_path / "ckpt"
    args = [sys.executable, "-m", "megatron_llm.cli", "train", "--device", "cpu", "--nproc-per-node", "2",
            "--pipeline-model-parallel-size", "2", *MODEL, "--tokenizer-type", "NullTokenizer", "--vocab-size",
            str(VOCAB), "--data-path", data, "--split", "90,10,0", "--train-iters", "3000", "--eval-interval", "1",
            "--eval-iters", "2", "--micro-batch-size", "2", "--global-batch-size", "4", "--save", str(ckpt),
            "--tensorboard-dir", str(tmp_path / "tb")]
    returncode, out = signal_after(args, tmp_path, 4, signal.SIGUSR1)
    assert returncode == EXIT_CODE_REQUEUE, out[-3000:]
    saved = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    evaluated = [int(n) for n in re.findall(r"validation loss at iteration (\d+)", out)]
    assert evaluated and max(evaluated) == saved - 1, (evaluated, saved)
    assert f"saved checkpoint at iteration {saved}" in out
