"""Enumerate the layouts `train` can run for a problem, drop those that do not fit, rank by predicted step time."""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence

from megatron_llm.planner.layout import Layout
from megatron_llm.planner.predict import Prediction, Problem, predict

MICRO_BATCH_SIZES = (1, 2, 4, 8, 16)


def trainer_options() -> dict:
    """Which layout options the trainer's flags offer (a flag exists only when its feature does): recompute
    only once --recompute-granularity exists in config/."""
    from megatron_llm.config.training import RunConfig

    names = {f.name for section in RunConfig.SECTIONS
             for f in dataclasses.fields(RunConfig.__dataclass_fields__[section].default_factory())}
    return {"recompute": ("none", "selective", "full") if "recompute_granularity" in names else ("none",)}


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(pb: Problem, recompute: Sequence[str] = ("none", "selective", "full"),
                      tp: Optional[int] = None, pp: Optional[int] = None) -> Iterator[Layout]:
    m = pb.model
    tps = [tp] if tp else [t for t in _divisors(pb.gpus_per_node) if t & (t - 1) == 0]
    for t in tps:
        if m.num_attention_heads % t or m.num_query_groups % t or m.ffn_hidden_size % t:
            continue
        for p in ([pp] if pp else _divisors(m.num_layers)):
            if pb.num_gpus % (t * p):
                continue
            dp = pb.num_gpus // (t * p)
            for mbs in MICRO_BATCH_SIZES:
                if pb.global_batch_size % (mbs * dp):
                    continue
                n_mb = pb.global_batch_size // (mbs * dp)
                vps: List[Optional[int]] = [None]
                if p > 1 and n_mb % p == 0:
                    vps += [v for v in _divisors(m.num_layers // p) if v < m.num_layers // p]
                for vp in vps:
                    for sp in ((True, False) if t > 1 else (False,)):
                        for rc in recompute:
                            for dist in (True, False):
                                yield Layout(t, p, dp, mbs, vp, sp, rc, dist,
                                             overlap_grad_reduce=dp > 1, overlap_param_gather=dp > 1 and dist)


def search(pb: Problem, recompute: Sequence[str] = ("none", "selective", "full"), tp: Optional[int] = None,
           pp: Optional[int] = None) -> List[Prediction]:
    """Every layout that fits, fastest first (ties: less memory)."""
    preds = [predict(pb, lay) for lay in candidate_layouts(pb, recompute, tp, pp)]
    fit = [p for p in preds if p.fits]
    return sorted(fit, key=lambda p: (p.time.total_s, p.memory.total_gb))
