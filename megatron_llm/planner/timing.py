"""Step time of a layout: compute, exposed TP / PP / DP communication and pipeline bubble.

Sources (formulas in docs/planner.md):
- compute: matmul FLOPs of perf/flops.py (recomputation included) at the GPU's achievable GEMM rate; memory-bound
  element-wise work (norms, activations, RoPE, residuals, softmax / cross-entropy) at HBM bandwidth;
- tensor parallelism (Shoeybi et al. 2019; Korthikanti et al. 2022): per layer two all-reduces forward and two
  backward (one more pair per recomputed forward); with sequence parallelism an all-gather + reduce-scatter pair
  moves the same bytes;
- collectives as rings (NCCL's busbw): all-reduce 2(n-1)/n x bytes / busbw, all-gather and reduce-scatter
  (n-1)/n x bytes / busbw, plus a per-step latency;
- pipeline (Narayanan et al. 2021, section 2.2): bubble (p-1)/v micro-batch times; a point-to-point send of one
  micro-batch's boundary activations per stage boundary, forward and backward;
- data parallelism: gradient reduce-scatter (fp32) + parameter all-gather (distributed optimizer) or all-reduce;
  with overlap only what does not fit under the last micro-batch's backward (grads) / first forward (params)
  is exposed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_llm.config.model import ModelConfig
from megatron_llm.perf import flops as F
from megatron_llm.planner.hardware import GpuSpec
from megatron_llm.planner.layout import Layout
from megatron_llm.planner.memory import chunk_param_numels

# Per-collective latency (ring start-up), s, and per-layer per-micro-batch host overhead (kernel launches), s.
NVLINK_LATENCY_S = 15e-6
NIC_LATENCY_S = 30e-6
LAYER_OVERHEAD_S = 60e-6
# Per model-chunk per micro-batch pipeline schedule cost (p2p hand-shake, stream syncs, launch gaps), s.
CHUNK_OVERHEAD_S = 250e-6
# Element-wise HBM traffic per token and layer, forward + backward, in units of (hidden, ffn) 2-byte elements
# (norms, residual adds, RoPE, activation, their gradients); fitted once, see docs/planner.md.
ELEMENTWISE_H = 40
ELEMENTWISE_F = 12
# Materialised softmax scores (no flash attention): bytes per score element, forward + backward.
SOFTMAX_BYTES = 16
# Share of TP communication left exposed when the TP collectives overlap with GEMMs (TE userbuffers).
TP_OVERLAP_EXPOSED = 0.3


@dataclass(frozen=True)
class StepTime:
    compute_s: float
    tp_comm_s: float
    pp_comm_s: float
    dp_comm_s: float
    bubble_s: float
    optimizer_s: float

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.tp_comm_s + self.pp_comm_s + self.dp_comm_s + self.bubble_s
                + self.optimizer_s)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["step_time_s"] = self.total_s
        return d


def _ring(bytes_: float, n: int, busbw_gbps: float, latency: float, kind: str) -> float:
    """Time of one ring collective over n ranks moving a buffer of bytes_ (NCCL busbw convention)."""
    if n <= 1 or bytes_ <= 0:
        return 0.0
    factor = 2 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n
    steps = 2 * (n - 1) if kind == "all_reduce" else n - 1
    return bytes_ * factor / (busbw_gbps * 1e9) + latency * min(steps, 2 * max(1, n.bit_length()))


def _layer_compute_s(m: ModelConfig, layout: Layout, seq: int, gpu: GpuSpec, gated_mlp: bool,
                     flash_attention: bool) -> float:
    """One layer, one micro-batch, forward + backward (+ recompute), on one GPU."""
    tokens = seq * layout.micro_batch_size
    lf = F.layer_forward_flops(m, seq, gated_mlp, "full")
    t = layout.tp
    gemm = (lf.qkv + lf.attention_output + lf.mlp) / t
    core = lf.attention_core / t
    passes = 3.0  # forward + backward (2x)
    gemm_passes = passes + (1 if layout.recompute == "full" else 0)
    core_passes = passes + (1 if layout.recompute in ("full", "selective") else 0)
    gemm_rate = gpu.peak_tflops * 1e12 * gpu.gemm_efficiency
    time = gemm * gemm_passes * tokens / gemm_rate
    if flash_attention:
        # A causal flash kernel skips the masked half; the FLOPs we count (full) stay the convention.
        time += core * core_passes / 2 * tokens / (gpu.peak_tflops * 1e12 * gpu.attention_efficiency)
        softmax = 0.0
    else:
        time += core * core_passes * tokens / gemm_rate
        softmax = SOFTMAX_BYTES * m.num_attention_heads / t * seq * tokens * (core_passes / 3)
    h_split = t if layout.sequence_parallel else 1
    elementwise = 2 * tokens * (ELEMENTWISE_H * m.hidden_size / h_split + ELEMENTWISE_F * m.ffn_hidden_size / t)
    elementwise *= gemm_passes / 3
    time += (elementwise + softmax) / (gpu.hbm_gbps * 1e9)
    return time + LAYER_OVERHEAD_S * gemm_passes / 3


def _logits_compute_s(m: ModelConfig, layout: Layout, seq: int, vocab: int, gpu: GpuSpec) -> float:
    tokens = seq * layout.micro_batch_size
    gemm = 3 * F.logits_flops(m, vocab) / layout.tp * tokens / (gpu.peak_tflops * 1e12 * gpu.gemm_efficiency)
    xent = 4 * 4 * tokens * vocab / layout.tp  # fp32 logits: write, read, softmax write, grad read/write
    return gemm + xent / (gpu.hbm_gbps * 1e9)


def _link(gpu: GpuSpec, inside_node: bool) -> tuple:
    return (gpu.nvlink_busbw_gbps, NVLINK_LATENCY_S) if inside_node else (gpu.nic_gbps_per_gpu, NIC_LATENCY_S)


def step_time(m: ModelConfig, layout: Layout, seq: int, global_batch: int, vocab: int, gpu: GpuSpec,
              gpus_per_node: int, gated_mlp: bool = True, flash_attention: bool = True) -> StepTime:
    v = layout.virtual_stages(m.num_layers)
    mb = global_batch // (layout.micro_batch_size * layout.dp)
    layers_per_stage = m.num_layers // layout.pp
    t = layout.tp
    layer = _layer_compute_s(m, layout, seq, gpu, gated_mlp, flash_attention)

    # Tensor parallel: 4 collectives of s b h 2-byte activations per layer (fwd + bwd), 2 more per recompute.
    tp_bw, tp_lat = _link(gpu, t <= gpus_per_node)
    act_bytes = 2 * seq * layout.micro_batch_size * m.hidden_size
    n_coll = 4 + (2 if layout.recompute == "full" else 0)
    tp_layer = n_coll * _ring(act_bytes, t, tp_bw, tp_lat, "all_reduce")
    if layout.tp_comm_overlap:
        tp_layer *= TP_OVERLAP_EXPOSED

    logits = _logits_compute_s(m, layout, seq, vocab, gpu)
    # The last stage also computes the logits; the slowest stage sets the pace of the pipeline.
    stage_mb = layers_per_stage * (layer + tp_layer) + logits
    compute_mb = layers_per_stage * layer + logits

    # Pipeline point-to-point: forward activation and backward gradient per stage boundary per micro-batch.
    # Stages sit on different nodes once TP x PP exceeds a node (rank order tp-pp-dp).
    pp_bytes = act_bytes / (t if layout.sequence_parallel or t > 1 else 1)  # scatter-gather over TP ranks
    pp_inside = t * layout.pp <= gpus_per_node
    pp_bw, pp_lat = _link(gpu, pp_inside)
    p2p = 2 * (pp_bytes / (pp_bw * 1e9) + pp_lat) + CHUNK_OVERHEAD_S if layout.pp > 1 else 0.0
    pp_comm = p2p * v * (mb + layout.pp - 1) if layout.pp > 1 else 0.0

    bubble = (layout.pp - 1) / v * stage_mb if layout.pp > 1 else 0.0

    # Data parallel over the GPUs holding the same shard: inside a node only when TP x PP x DP fits in one.
    numels = sum(sum(chunk_param_numels(m, layout, vocab, 0, c, gated_mlp)) for c in range(v))
    dp_inside = t * layout.pp * layout.dp <= gpus_per_node
    # Beyond a node the ring runs over the HCAs; with several DP ranks per node each GPU still moves its share
    # over its own rail (one HCA per GPU), so the per-GPU figure is the bound.
    dp_bw, dp_lat = _link(gpu, dp_inside)
    if layout.distributed_optimizer:
        dp = (_ring(4 * numels, layout.dp, dp_bw, dp_lat, "reduce_scatter")
              + _ring(2 * numels, layout.dp, dp_bw, dp_lat, "all_gather"))
    else:
        dp = _ring(4 * numels, layout.dp, dp_bw, dp_lat, "all_reduce")
    if layout.overlap_grad_reduce and layout.dp > 1:
        # The reduce runs under the backward of the last micro-batch (per chunk); the gather under the first
        # forward. At least one bucket's worth (the last) stays exposed.
        window = compute_mb * v * (2 / 3 if not layout.overlap_param_gather else 1.0)
        dp = max(dp - window, dp * 0.1)

    # Optimizer: Adam over this rank's shard, memory-bound (read/write main weights, two moments, grad; write
    # the 16-bit weights), ~ 36 bytes per element.
    shard = numels / (layout.dp if layout.distributed_optimizer else 1)
    optimizer = 36 * shard / (gpu.hbm_gbps * 1e9) + 2e-3

    return StepTime(compute_s=mb * compute_mb, tp_comm_s=mb * layers_per_stage * tp_layer, pp_comm_s=pp_comm,
                    dp_comm_s=dp, bubble_s=bubble, optimizer_s=optimizer)
