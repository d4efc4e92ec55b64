"""One candidate training layout, as `train`'s flags name it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class Layout:
    tp: int  # --tensor-model-parallel-size
    pp: int  # --pipeline-model-parallel-size
    dp: int
    micro_batch_size: int  # --micro-batch-size
    vp_layers: Optional[int] = None  # --num-layers-per-virtual-pipeline-stage (None: plain 1F1B)
    sequence_parallel: bool = False  # --sequence-parallel
    recompute: str = "none"  # none | selective | full (--recompute-granularity)
    distributed_optimizer: bool = True  # --use-distributed-optimizer
    overlap_grad_reduce: bool = True  # DP gradient reduce-scatter under the backward pass
    overlap_param_gather: bool = True  # distributed-optimizer all-gather under the next forward
    tp_comm_overlap: bool = False  # TE's userbuffer TP overlap (published H100 runs); our trainer has none

    def virtual_stages(self, num_layers: int) -> int:
        return 1 if self.vp_layers is None else num_layers // (self.pp * self.vp_layers)

    def as_dict(self) -> dict:
        return asdict(self)

    def train_flags(self) -> list:
        """The `train` flags that select this layout."""
        out = ["--tensor-model-parallel-size", str(self.tp), "--pipeline-model-parallel-size", str(self.pp),
               "--micro-batch-size", str(self.micro_batch_size)]
        if self.vp_layers:
            out += ["--num-layers-per-virtual-pipeline-stage", str(self.vp_layers)]
        if self.sequence_parallel:
            out.append("--sequence-parallel")
        if self.recompute != "none":
            out += ["--recompute-granularity", self.recompute]
            if self.recompute == "full":  # every layer, one at a time (Megatron-LM's flags for it)
                out += ["--recompute-method", "uniform", "--recompute-num-layers", "1"]
        if not self.distributed_optimizer:
            out.append("--no-use-distributed-optimizer")
        return out
