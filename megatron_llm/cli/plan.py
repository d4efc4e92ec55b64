"""`megatron-llm plan`: predict memory, step time, TFLOP/s and MFU of training layouts before a GPU-hour is spent.

    megatron-llm plan --recipe llama2-7b --gpus 1024 --gpu-type a800 --gpus-per-node 8 --global-batch-size 1024
    megatron-llm plan ... --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 --micro-batch-size 2 \\
        --sequence-parallel --evaluate --json
    megatron-llm plan --calibrate          # measure this machine's matmul / collective throughput

Takes the model and batch flags of `train` (and its recipes). Torch-free except for --calibrate.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import List, Optional

PROG = "megatron-llm plan"


def _extra(parser) -> None:
    g = parser.add_argument_group("plan")
    g.add_argument("--gpus", type=int, default=None, help="GPUs in the job")
    g.add_argument("--gpu-type", default=None,
                   help="a name of the peak table ('A100 SXM4 80GB', 'H100 SXM', ...) or a100 | a800 | h100 | h200")
    g.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (one NVLink domain; default 8)")
    g.add_argument("--inter-node-gbps", type=float, default=None,
                   help="inter-node bandwidth per node, Gbit/s, all HCAs together (default: one HCA per GPU: "
                        "A100/A800 200, H100/H200 400 Gbit/s each)")
    g.add_argument("--swiglu", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="gated SwiGLU MLP (default, as every preset); --no-swiglu: GPT's GeLU MLP, FFN 4h unless "
                        "--ffn-hidden-size is given")
    g.add_argument("--evaluate", action="store_true", help="evaluate the layout given by the flags only")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--top", type=int, default=10, help="layouts to list (default 10)")
    g.add_argument("--calibrate", action="store_true",
                   help="measure matmul and collective throughput here and store it for predictions")
    g.add_argument("--calibration-file", default=None, help="calibration JSON (default ~/.megatron_llm/calibration.json)")
    from megatron_llm.config.training import RunConfig
    import dataclasses

    if "recompute_granularity" not in {f.name for s in RunConfig.SECTIONS
                                       for f in dataclasses.fields(RunConfig.__dataclass_fields__[s].default_factory())}:
        g.add_argument("--recompute-granularity", choices=("full", "selective"), default=None,
                       help="activation recomputation of the evaluated layout (train has no such flag yet)")


def _fmt_row(p) -> str:
    lay, t, mem = p.layout, p.time, p.memory
    vp = lay.vp_layers or "-"
    return (f"{lay.tp:>3} {'y' if lay.sequence_parallel else 'n':>2} {lay.pp:>3} {vp:>3} {lay.dp:>5} "
            f"{lay.micro_batch_size:>3} {lay.recompute:>9} {'y' if lay.distributed_optimizer else 'n':>4} "
            f"{mem.total_gb:7.1f} {t.total_s:8.3f} {t.compute_s:7.3f} {t.tp_comm_s:6.3f} {t.pp_comm_s:6.3f} "
            f"{t.dp_comm_s:6.3f} {t.bubble_s:6.3f} {p.tflops_per_gpu:7.1f} {100 * p.mfu:5.1f}%")


HEADER = (" TP SP  PP  VP    DP MBS recompute dist  mem GB   step s compute  TP s   PP s   DP s  bubble "
          "TFLOP/s   MFU")


def commands(argv: List[str], pb, best) -> List[str]:
    """The `train` and `submit` commands that run the chosen layout (the user's flags, minus plan's own)."""
    plan_only = {"--gpus", "--gpu-type", "--gpus-per-node", "--inter-node-gbps", "--top",
                 "--calibration-file"}
    plan_bools = {"--evaluate", "--json", "--swiglu", "--no-swiglu", "--calibrate"}
    layout_flags = {"--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--micro-batch-size",
                    "--num-layers-per-virtual-pipeline-stage", "--recompute-granularity", "--recompute-method",
                    "--recompute-num-layers"}
    layout_bools = {"--sequence-parallel", "--no-use-distributed-optimizer", "--use-distributed-optimizer"}
    keep: List[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name in plan_only | layout_flags:
            i += 1 if "=" in a else 2
            continue
        if name in plan_bools | layout_bools:
            i += 1
            continue
        keep.append(a)
        i += 1
    flags = keep + best.layout.train_flags()
    nodes = max(1, pb.num_gpus // pb.gpus_per_node)
    train = ["megatron-llm", "train", "--nproc-per-node", str(pb.gpus_per_node)] + flags
    submit = ["megatron-llm", "submit", "--nodes", str(nodes), "--gpus-per-node", str(pb.gpus_per_node),
              "--partition", "PARTITION", "--time", "HH:MM:SS"] + flags
    out = [" ".join(map(shlex.quote, train)) + ("" if nodes == 1 else "   # one node of it; all nodes: submit")]
    out.append(" ".join(map(shlex.quote, submit)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from megatron_llm.config.arguments import ConfigError, build_config, parse_run_args
    from megatron_llm.planner.problem import PlanError, build_problem, config_value, fixed_layout

    argv = list(sys.argv[1:] if argv is None else argv)
    args, values = parse_run_args(argv, prog=PROG, extra=_extra)
    plan_keys = ("gpus", "gpu_type", "gpus_per_node", "inter_node_gbps", "swiglu", "evaluate",
                 "json", "top", "calibrate", "calibration_file", "recompute_granularity")
    values = {k: v for k, v in values.items() if k not in plan_keys}
    if args.calibrate:
        from megatron_llm.planner.calibrate import calibrate

        return calibrate(args.calibration_file)
    try:
        if args.gpus is None or args.gpu_type is None:
            raise PlanError("--gpus and --gpu-type are required")
        cfg = build_config(values, args.recipe)
        recompute = (getattr(args, "recompute_granularity", None)
                     or config_value(cfg, "recompute_granularity", None) or "none")
        pb = build_problem(cfg, args.gpus, args.gpu_type, args.gpus_per_node, args.swiglu,
                           ffn_given=values.get("ffn_hidden_size") is not None or _recipe_sets_ffn(args.recipe),
                           inter_node_gbps=args.inter_node_gbps,
                           calibration_file=args.calibration_file)
        if args.evaluate:
            from megatron_llm.planner.predict import predict

            result = predict(pb, fixed_layout(cfg, pb, recompute))
            if not result.fits:
                result.notes.append(f"does not fit: {result.memory.total_gb:.1f} GiB > "
                                    f"{pb.gpu.memory_gb:.1f} GiB usable on {pb.gpu.name}")
            _emit_one(result, pb, args.json)
            return 0
        from megatron_llm.planner.search import search, trainer_options

        choices = trainer_options()["recompute"]
        ranked = search(pb, recompute=choices)
    except (PlanError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if not ranked:
        print(f"{PROG}: no layout fits in {pb.gpu.memory_gb:.1f} GiB per {pb.gpu.name}: use more GPUs, a "
              f"smaller --micro-batch-size range, or a shorter --seq-length", file=sys.stderr)
        return 1
    best = ranked[0]
    if args.json:
        print(json.dumps({"gpu": pb.gpu.name, "gpu_source": pb.gpu.source,
                          "layouts": [p.as_dict() for p in ranked[:args.top]],
                          "commands": commands(argv, pb, best)}, indent=2))
        return 0
    print(f"[{PROG}] {pb.num_gpus} x {pb.gpu.name} ({pb.gpus_per_node} per node), peak {pb.gpu.peak_tflops:g} "
          f"TFLOP/s {pb.dtype}, {pb.gpu.memory_gb:.0f} GiB usable; figures from {pb.gpu.source}")
    print(f"[{PROG}] model {pb.model.num_layers} layers x {pb.model.hidden_size}, "
          f"{'SwiGLU' if pb.gated_mlp else 'GeLU'} FFN {pb.model.ffn_hidden_size}, seq {pb.seq_length}, "
          f"global batch {pb.global_batch_size}; {len(ranked)} layouts fit")
    print(HEADER)
    for p in ranked[:args.top]:
        print(_fmt_row(p))
    print(f"[{PROG}] TFLOP/s and MFU: {best.as_dict()['flops_convention']}")
    print(f"[{PROG}] best: {_why(best, ranked)}")
    for c in commands(argv, pb, best):
        print(c)
    return 0


def _recipe_sets_ffn(recipe: Optional[str]) -> bool:
    if not recipe:
        return False
    from megatron_llm.config.arguments import load_recipe

    return "ffn_hidden_size" in load_recipe(recipe)


def _why(best, ranked) -> str:
    t = best.time
    parts = {"compute": t.compute_s, "TP comm": t.tp_comm_s, "PP comm": t.pp_comm_s, "DP comm": t.dp_comm_s,
             "bubble": t.bubble_s, "optimizer": t.optimizer_s}
    split = ", ".join(f"{k} {100 * v / t.total_s:.0f}%" for k, v in parts.items() if v > 0)
    nxt = ranked[1] if len(ranked) > 1 else None
    margin = f"; next best {nxt.time.total_s / t.total_s - 1:+.1%} step time" if nxt else ""
    return (f"predicted {best.tflops_per_gpu:.0f} TFLOP/s per GPU, MFU {100 * best.mfu:.1f}%, "
            f"{best.memory.total_gb:.1f} GiB per GPU; step {t.total_s:.3f} s = {split}{margin}")


def _emit_one(result, pb, as_json: bool) -> None:
    d = result.as_dict()
    d["gpu"] = pb.gpu.name
    if as_json:
        print(json.dumps(d, indent=2))
        return
    print(HEADER)
    print(_fmt_row(result))
    print(f"[{PROG}] {d['flops_convention']}")
    for n in result.notes:
        print(f"[{PROG}] {n}")
