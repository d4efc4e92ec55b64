"""Communication settings chosen for the hardware found, each with its reason; the user's settings always win.

Decides, for one run (device, world size, TP/PP/DP) and the node it runs on (parallel/topology.py):
- rank order: megatron-core's default 'tp-dp-pp' or 'tp-pp-dp' (Megatron-LM's --use-tp-pp-dp-mapping); TP is
  the fastest-varying dimension in both, so a TP group is TP consecutive ranks: inside one node, on NVLink, when
  TP divides the GPUs per node;
- megatron-core's overlap switches (gradient reduce, parameter gather, pipeline p2p) and the DDP bucket size;
- environment: CUDA_DEVICE_MAX_CONNECTIONS, NCCL_IB_HCA, NCCL_SOCKET_IFNAME (only where NCCL's or Megatron-LM's
  documentation gives a reason; NCCL's own detection is left alone otherwise).

A config field that is not None was given by the user (flag or recipe) and is kept; an environment variable
already set is kept. CPU (gloo) runs keep every overlap off: gloo has no stream to overlap on, and the trainer's
CPU path is what the equivalence tests pin down. Torch-free: used by `train`, `submit` (comm_env.sh) and `topo`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, MutableMapping, Optional

# megatron-core's rank orders (parallel_state.initialize_model_parallel(order=...)).
ORDER_DEFAULT = "tp-cp-ep-dp-pp"
ORDER_TP_PP_DP = "tp-cp-ep-pp-dp"
BUCKET_MIN_ELEMENTS = 40_000_000  # megatron-core's DistributedDataParallel default: max(40M, 1M x DP)
BUCKET_PER_DP_RANK = 1_000_000
AUTO_ENV_MARK = "MEGATRON_LLM_COMM_AUTO"  # names of the variables comm tuning set (not the user's)


@dataclass
class Decision:
    name: str  # a train flag (--overlap-grad-reduce) or an environment variable (NCCL_IB_HCA)
    value: Any  # None: leave unset
    reason: str
    source: str  # "user" (flag/recipe/environment given) | "auto"
    kind: str  # "flag" | "env" | "note"
    field: Optional[str] = None  # config field (flags)

    def line(self) -> str:
        shown = {True: "on", False: "off", None: "(unset)"}.get(self.value, self.value) \
            if isinstance(self.value, (bool, type(None))) else self.value
        who = "your setting" if self.source == "user" else "auto"
        return f"{self.name}={shown} [{who}]: {self.reason}"


@dataclass(frozen=True)
class RunShape:
    device: str  # cuda | cpu
    world_size: int
    tp: int
    pp: int
    vp: Optional[int]  # layers per virtual stage (None: no interleaving)
    distributed_optimizer: bool
    gpus_per_node: int

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)


def shape_from_config(cfg, world_size: int, device: str, gpus_per_node: Optional[int] = None) -> RunShape:
    p = cfg.parallel
    return RunShape(device=device, world_size=world_size, tp=p.tensor_model_parallel_size,
                    pp=p.pipeline_model_parallel_size, vp=p.num_layers_per_virtual_pipeline_stage,
                    distributed_optimizer=p.use_distributed_optimizer,
                    gpus_per_node=gpus_per_node or min(world_size, cfg.launch.nproc_per_node or 1))


def _flag(name: str, field: str, user_value, auto_value, reason: str) -> Decision:
    if user_value is not None:
        return Decision(name, user_value, "given on the command line or in the recipe", "user", "flag", field)
    return Decision(name, auto_value, reason, "auto", "flag", field)


def decide_flags(shape: RunShape, user: Mapping[str, Any]) -> List[Decision]:
    """Train-flag decisions. user: config field -> value given (None: not given)."""
    gpu = shape.device == "cuda"
    dp, out = shape.dp, []
    # Rank order.
    if not gpu:
        order, why = False, "CPU run: no NVLink domains to keep; megatron-core's default order"
    elif shape.pp > 1 and dp > 1:
        order, why = True, ("PP > 1 and DP > 1: tp-pp-dp keeps each TP group on consecutive ranks (one NVLink "
                            "domain), puts pipeline neighbours next (their sends are on every micro-batch's critical "
                            "path) and data parallel outermost (its traffic is once a step and overlapped)")
    else:
        order, why = False, "PP = 1 or DP = 1: both orders give the same groups; megatron-core's default"
    out.append(_flag("--use-tp-pp-dp-mapping", "use_tp_pp_dp_mapping", user.get("use_tp_pp_dp_mapping"), order, why))

    # Overlap of the data-parallel gradient reduce (and the distributed optimizer's gather) with compute.
    if not gpu:
        ov, why = False, "CPU (gloo) run: no CUDA streams to overlap on; kept off unless asked"
    elif dp == 1:
        ov, why = False, "DP = 1: no gradient reduce to overlap"
    else:
        ov, why = True, (f"GPU run with DP = {dp}: the reduce-scatter of each bucket runs under the backward of "
                         f"the remaining layers (megatron-core overlap_grad_reduce)")
    d_ov = _flag("--overlap-grad-reduce", "overlap_grad_reduce", user.get("overlap_grad_reduce"), ov, why)
    out.append(d_ov)
    ov_on = bool(d_ov.value)
    if not shape.distributed_optimizer:
        pg, why = False, "needs the distributed optimizer (the parameters are not sharded)"
    elif not ov_on:
        pg, why = False, "needs --overlap-grad-reduce (megatron-core overlaps the gather with the same buckets)"
    else:
        pg, why = True, "distributed optimizer with DP > 1: each bucket's all-gather runs under the next forward"
    out.append(_flag("--overlap-param-gather", "overlap_param_gather", user.get("overlap_param_gather"), pg, why))

    # Pipeline p2p overlap (megatron-core supports it for the interleaved schedule).
    if not gpu:
        p2p, why = False, "CPU (gloo) run: kept off"
    elif shape.pp > 1 and shape.vp:
        p2p, why = True, "interleaved schedule: sends and receives of the next chunk run under this chunk's compute"
    else:
        p2p, why = False, "only the interleaved schedule (--num-layers-per-virtual-pipeline-stage) overlaps p2p"
    out.append(_flag("--overlap-p2p-communication", "overlap_p2p_communication",
                     user.get("overlap_p2p_communication"), p2p, why))

    # Bucket size: only meaningful with overlap (without it megatron-core reduces one bucket at the end).
    if ov_on:
        size = max(BUCKET_MIN_ELEMENTS, BUCKET_PER_DP_RANK * dp)
        why = (f"max(40M, 1M x DP = {BUCKET_PER_DP_RANK * dp:,}) elements: large enough that each rank's "
               f"ring share stays efficient as DP grows, small enough to start reducing early (megatron-core's rule)")
    else:
        size, why = None, "no overlap: the gradients are reduced as one buffer after the backward"
    out.append(_flag("--ddp-bucket-size", "ddp_bucket_size", user.get("ddp_bucket_size"), size, why))

    if gpu and shape.tp > shape.gpus_per_node:
        out.append(Decision("tensor parallel", shape.tp, f"TP = {shape.tp} exceeds the {shape.gpus_per_node} GPUs of "
                            f"a node: TP collectives will cross the inter-node network (slow); use TP <= "
                            f"{shape.gpus_per_node}", "auto", "note"))
    elif gpu and shape.tp > 1 and shape.gpus_per_node % shape.tp:
        out.append(Decision("tensor parallel", shape.tp, f"TP = {shape.tp} does not divide the {shape.gpus_per_node}"
                            f" GPUs per node: some TP groups straddle two nodes", "auto", "note"))
    return out


def decide_env(shape: RunShape, node, environ: Mapping[str, str]) -> List[Decision]:
    """Environment decisions for this node (node: topology.NodeTopology or None when not discovered)."""
    out: List[Decision] = []

    launched = set(filter(None, environ.get(AUTO_ENV_MARK, "").split(",")))

    def env(name: str, value: Optional[str], reason: str) -> None:
        if name in launched:  # set by comm_env at launch (this module's own choice, made on the node)
            out.append(Decision(name, environ[name], "chosen at launch for this node (comm_env)", "auto", "env"))
        elif name in environ:
            out.append(Decision(name, environ[name], "already set in the environment", "user", "env"))
        else:
            out.append(Decision(name, value, reason, "auto", "env"))

    if shape.device != "cuda":
        return out
    if shape.tp > 1:
        env("CUDA_DEVICE_MAX_CONNECTIONS", "1",
            "TP > 1 (sequence parallel / TP communication): one hardware queue keeps kernels in issue order so a "
            "TP collective is scheduled before the GEMM that waits on it (Megatron-LM requires this for sequence "
            "parallelism)")
    else:
        env("CUDA_DEVICE_MAX_CONNECTIONS", None, "TP = 1: no TP collective ordering to enforce; CUDA's default")
    if node is None:
        return out
    active = [h for h in node.hcas if h.usable]
    near = sorted({g.nearest_hca for g in node.gpus if g.nearest_hca},
                  key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    near_active = [n for n in near if any(h.name == n for h in active)] if active else near
    if not node.hcas:
        env("NCCL_IB_HCA", None, "no InfiniBand/RoCE HCA found (/sys/class/infiniband): NCCL uses sockets")
    elif near_active and len({h.name for h in active} if active else near) > len(near_active):
        env("NCCL_IB_HCA", "=" + ",".join(near_active),
            f"{len({h.name for h in active})} HCAs active, {len(near_active)} of them next to a GPU on PCIe "
            f"(nvidia-smi topo -m); the others serve storage/management. NCCL_IB_HCA with '=' names exactly the "
            f"devices to use (NCCL docs, Environment Variables)")
    elif len(active) < len(node.hcas):
        env("NCCL_IB_HCA", "=" + ",".join(f"{h.name}:{h.port}" for h in active),
            f"{len(node.hcas) - len(active)} HCA port(s) not ACTIVE: list only the active ones so NCCL does not "
            f"try them (NCCL docs, NCCL_IB_HCA)")
    else:
        env("NCCL_IB_HCA", None, f"all {len(active)} HCA ports active: NCCL's own detection uses them all")
    candidates = [i for i in node.interfaces if i.kind != "loopback" and i.operstate == "up"
                  and not i.name.startswith(("docker", "virbr", "veth"))]
    if len(candidates) > 1 and node.default_interface:
        env("NCCL_SOCKET_IFNAME", "=" + node.default_interface,
            f"{len(candidates)} interfaces up; {node.default_interface} carries the default route, the one the other "
            f"nodes reach (NCCL docs: NCCL_SOCKET_IFNAME picks the bootstrap / socket interface)")
    else:
        env("NCCL_SOCKET_IFNAME", None, "one usable interface: NCCL's default choice is it")
    return out


def decide(cfg, world_size: int, device: str, node=None, environ: Optional[Mapping[str, str]] = None,
           gpus_per_node: Optional[int] = None) -> List[Decision]:
    import os

    p = cfg.parallel
    user = {f: getattr(p, f) for f in ("use_tp_pp_dp_mapping", "overlap_grad_reduce", "overlap_param_gather",
                                       "overlap_p2p_communication", "ddp_bucket_size")}
    shape = shape_from_config(cfg, world_size, device, gpus_per_node)
    return decide_flags(shape, user) + decide_env(shape, node, os.environ if environ is None else environ)


def apply(cfg, decisions: List[Decision], environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Write the decisions into the config (fields the user left None) and the environment (unset names)."""
    import os

    environ = os.environ if environ is None else environ
    for d in decisions:
        if d.kind == "flag" and d.source == "auto":
            setattr(cfg.parallel, d.field, d.value)
        elif d.kind == "env" and d.source == "auto" and d.value is not None and d.name not in environ:
            environ[d.name] = str(d.value)
            marked = set(filter(None, environ.get(AUTO_ENV_MARK, "").split(",")))
            environ[AUTO_ENV_MARK] = ",".join(sorted(marked | {d.name}))


def report(decisions: List[Decision], prefix: str = "[megatron-llm comm]") -> str:
    return "\n".join(f"{prefix} {d.line()}" for d in decisions)


def tune_rank(cfg, environ: Optional[MutableMapping[str, str]] = None) -> List[Decision]:
    """In a training rank, before CUDA and the process groups start: fill the settings the user left open for
    this device and layout, set CUDA_DEVICE_MAX_CONNECTIONS; rank 0 prints every decision with its reason."""
    import os

    from megatron_llm.parallel.device import resolve_device  # torch, lazily: only ranks get here

    environ = os.environ if environ is None else environ
    world = int(environ.get("WORLD_SIZE", "1"))
    per_node = re.match(r"\d+", environ.get("LOCAL_WORLD_SIZE") or environ.get("SLURM_NTASKS_PER_NODE") or "")
    decisions = decide(cfg, world, resolve_device(cfg.launch.device), environ=environ,
                       gpus_per_node=int(per_node.group()) if per_node else world)
    apply(cfg, decisions, environ)
    if int(environ.get("RANK", "0")) == 0:
        print(report(decisions), flush=True)
    return decisions


def rank_groups(world_size: int, tp: int, pp: int, tp_pp_dp: bool) -> Dict[str, List[List[int]]]:
    """The TP, PP and DP groups megatron-core forms for an order (TP fastest; then PP, DP for tp-pp-dp, or DP,
    PP for the default). Pure arithmetic, for checks before launch (and tested against megatron-core)."""
    dp = world_size // (tp * pp)
    sizes = {"tp": tp, "pp": pp, "dp": dp}
    order = ["tp", "pp", "dp"] if tp_pp_dp else ["tp", "dp", "pp"]
    stride = {}
    s = 1
    for name in order:
        stride[name] = s
        s *= sizes[name]

    def coords(rank):
        return {n: (rank // stride[n]) % sizes[n] for n in order}

    groups: Dict[str, List[List[int]]] = {}
    for name in order:
        seen: Dict[tuple, List[int]] = {}
        for r in range(world_size):
            c = coords(r)
            key = tuple(c[n] for n in order if n != name)
            seen.setdefault(key, []).append(r)
        groups[name] = sorted(seen.values())
    return groups


def tp_groups_inside_nodes(world_size: int, tp: int, pp: int, tp_pp_dp: bool, gpus_per_node: int) -> bool:
    return all(len({r // gpus_per_node for r in g}) == 1 for g in rank_groups(world_size, tp, pp, tp_pp_dp)["tp"])
