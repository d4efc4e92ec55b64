"""The planner's parameter, gradient and optimizer-state bytes equal what the trainer really allocates (CPU,
gloo, 4 ranks): megatron-core's buffers with their padding, and Adam's two moments of each rank's shard."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from megatron_llm.config.model import ModelConfig
from megatron_llm.launch.local import run_workers
from megatron_llm.planner.layout import Layout
from megatron_llm.planner.memory import padded_vocab, state_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Odd sizes on purpose: parameter starts are padded to 64 elements and buckets to lcm(DP, 128); with h = 60 no
# weight but fc1 is a multiple of 64 elements, so almost every parameter start is padded, and the optimizer shard
# boundaries of the two DP ranks fall inside parameters.
SHAPE = dict(num_layers=4, hidden_size=60, num_attention_heads=6, num_query_groups=2, ffn_hidden_size=200)
VOCAB = 500


def _run(tmp_path: Path, tp: int, pp: int, extra=()) -> list:
    out = tmp_path / f"tp{tp}pp{pp}"
    out.mkdir()
    argv = ["--device", "cpu", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", "1", "--eval-interval", "0",
            "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp), *extra]
    for k, v in SHAPE.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    env_backup = dict(os.environ)
    os.environ.update(PLANNER_MEMORY_OUT=str(out), PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]),
                      OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    try:
        code = run_workers("planner_memory_worker", argv, 4, cpu=True)
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    assert code == 0
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]


def _check(recs, tp: int, pp: int, distributed_optimizer: bool) -> None:
    m = ModelConfig(**SHAPE)
    layout = Layout(tp=tp, pp=pp, dp=4 // (tp * pp), micro_batch_size=1,
                    distributed_optimizer=distributed_optimizer)
    vocab = padded_vocab(VOCAB, tp)
    for rec in recs:
        assert rec["padded_vocab"] == vocab
        want = state_bytes(m, layout, vocab, rec["pp_rank"], rec["dp_rank"], dtype="fp32")
        got = (rec["params"], rec["grads"], rec["optimizer"])
        assert got == (want.params, want.grads, want.optimizer), (rec, want)


def test_state_bytes_match_the_trainer_pp2_dp2_distributed_optimizer(tmp_path):
    _check(_run(tmp_path, tp=1, pp=2), tp=1, pp=2, distributed_optimizer=True)

