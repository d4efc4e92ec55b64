"""Predictions for published training-throughput tables, each row converted to the source's FLOPs convention.

- Narayanan et al. 2021 (arXiv 2104.04473) Table 1: GPT, A100, seq 2048, vocab 51,200, full recomputation,
  interleaved 1F1B, no communication overlap, no distributed optimizer (it predates both). Its TFLOP/s use eq. 3,
  96 B s l h^2 (1 + s/6h + V/16lh): hardware FLOPs with the recomputation pass and full attention, which is
  perf.flops.hardware_flops_per_iteration(recompute="full", gated_mlp=False) exactly (tested there).
- Megatron-LM README, Megatron-Core r0.8.0 H100 weak-scaling table: GPT, seq 4096, vocab 131,072, DP/TP/PP
  overlap, distributed optimizer, TE (TP communication overlap, flash attention); model FLOPs with full attention
  and no recompute term: perf.flops.flops_per_iteration(gated_mlp=False).
Neither table states the micro-batch size (nor, for the H100 one, recomputation or interleaving): the planner
chooses them as it would for a user, with the table's TP, PP and DP fixed. FFN = 4h (GeLU) in both.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from typing import Iterable, List, Optional

from megatron_llm.config.model import ModelConfig
from megatron_llm.perf import flops as F
from megatron_llm.planner.hardware import gpu_spec
from megatron_llm.planner.layout import Layout
from megatron_llm.planner.predict import Prediction, Problem, predict
from megatron_llm.planner.search import MICRO_BATCH_SIZES, _divisors


@dataclass
class Row:
    name: str
    config: str
    measured: float  # TFLOP/s per GPU as published
    predicted: float  # same convention
    layout: Layout

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured


def best_fixed(pb: Problem, tp: int, pp: int, recompute: Iterable[str], distributed_optimizer: bool,
               overlap: bool, sequence_parallel: bool, tp_comm_overlap: bool) -> Optional[Prediction]:
    """The fastest layout that fits with TP, PP (and so DP) fixed: micro-batch, interleaving, recompute free."""
    m, dp = pb.model, pb.num_gpus // (tp * pp)
    best = None
    for mbs in MICRO_BATCH_SIZES:
        if pb.global_batch_size % (mbs * dp):
            continue
        n_mb = pb.global_batch_size // (mbs * dp)
        vps = [None] + ([v for v in _divisors(m.num_layers // pp) if v < m.num_layers // pp]
                        if pp > 1 and n_mb % pp == 0 else [])
        for vp in vps:
            for rc in recompute:
                lay = Layout(tp, pp, dp, mbs, vp, sequence_parallel and tp > 1, rc, distributed_optimizer,
                             overlap and dp > 1, overlap and dp > 1 and distributed_optimizer, tp_comm_overlap)
                p = predict(pb, lay)
                if p.fits and (best is None or p.time.total_s < best.time.total_s):
                    best = p
    return best


def narayanan2021(path: str) -> List[Row]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            h, L, a = int(r["hidden_size"]), int(r["num_layers"]), int(r["attention_heads"])
            n, tp, pp = int(r["num_gpus"]), int(r["tensor_parallel_size"]), int(r["pipeline_parallel_size"])
            gbs = int(r["global_batch_size"])
            m = ModelConfig(num_layers=L, hidden_size=h, num_attention_heads=a, ffn_hidden_size=4 * h,
                            untie_embeddings_and_output_weights=False, vocab_size=51200)
            pb = Problem(m, 2048, gbs, 51200, n, 8, gpu_spec("A100 SXM4 80GB", "fp16"), gated_mlp=False,
                         flash_attention=False, dtype="fp16")
            p = best_fixed(pb, tp, pp, ("full",), distributed_optimizer=False, overlap=False,
                           sequence_parallel=False, tp_comm_overlap=False)
            hw = F.hardware_flops_per_iteration(m, 2048, 51200, gbs, "full", gated_mlp=False)
            rows.append(Row(f"{r['params_billion']}B", f"h {h}, L {L}, a {a}, TP {tp}, PP {pp}, {n} GPUs, B {gbs}",
                            float(r["achieved_teraflops_per_gpu"]), hw / p.time.total_s / n / 1e12, p.layout))
    return rows


def megatron_h100(path: str) -> List[Row]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            h, L, a = int(r["hidden_size"]), int(r["num_layers"]), int(r["attention_heads"])
            n, tp, pp = int(r["num_gpus"]), int(r["tensor_mp_size"]), int(r["pipeline_mp_size"])
            gbs = int(r["batch_size"])
            m = ModelConfig(num_layers=L, hidden_size=h, num_attention_heads=a, ffn_hidden_size=4 * h,
                            max_position_embeddings=4096)
            pb = Problem(m, 4096, gbs, 131072, n, 8, gpu_spec("H100 SXM"), gated_mlp=False, flash_attention=True)
            p = best_fixed(pb, tp, pp, ("none", "selective", "full"), distributed_optimizer=True, overlap=True,
                           sequence_parallel=True, tp_comm_overlap=True)
            rows.append(Row(r["model_size"], f"h {h}, L {L}, a {a}, TP {tp}, PP {pp}, {n} GPUs, B {gbs}",
                            float(r["per_gpu_teraflops"]), p.tflops_per_gpu, p.layout))
    return rows


def median_abs_error(rows: List[Row]) -> float:
    return statistics.median(abs(r.error) for r in rows)


def markdown(rows: List[Row]) -> str:
    out = ["| model | configuration | measured TFLOP/s | predicted | error | planner's MBS / VP / recompute |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        lay = r.layout
        out.append(f"| {r.name} | {r.config} | {r.measured:.1f} | {r.predicted:.1f} | {100 * r.error:+.1f}% | "
                   f"{lay.micro_batch_size} / {lay.vp_layers or '-'} / {lay.recompute} |")
    out.append(f"\nmedian absolute error: {100 * median_abs_error(rows):.1f}%")
    return "\n".join(out)
