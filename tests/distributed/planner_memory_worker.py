"""A training rank that records, after training, the bytes megatron-core really allocated for parameters,
gradients and optimizer state (run by test_planner_memory.py through launch/local.run_workers)."""

from __future__ import annotations

import json
import os
import sys


def _measure(ctx) -> dict:
    from megatron.core import parallel_state as ps

    params = grads = 0
    for chunk in ctx.model:
        bufs = chunk.buffers + chunk.expert_parallel_buffers
        for b in bufs:
            grads += b.grad_data.numel() * b.grad_data.element_size()
            if b.param_data is not None:
                params += b.param_data.numel() * b.param_data.element_size()
        if all(b.param_data is None for b in bufs):  # no distributed optimizer: the parameters themselves
            params += sum(p.numel() * p.element_size() for p in chunk.module.parameters())
    opt = 0
    optimizers = getattr(ctx.optimizer, "chained_optimizers", [ctx.optimizer])
    model_storages = {p.untyped_storage().data_ptr() for c in ctx.model for p in c.module.parameters()}
    model_storages |= {b.param_data.untyped_storage().data_ptr() for c in ctx.model for b in c.buffers
                       if b.param_data is not None}
    for o in optimizers:
        for state in o.optimizer.state.values():
            for k in ("exp_avg", "exp_avg_sq"):
                opt += state[k].numel() * state[k].element_size()
        # main (fp32) copies that are new storage, not views of the model's own parameters
        for group in getattr(o, "shard_fp32_from_float16_groups", []):
            for p in group:
                if p.untyped_storage().data_ptr() not in model_storages:
                    opt += p.numel() * p.element_size()
    return {"rank": ctx.rank, "pp_rank": ps.get_pipeline_model_parallel_rank(),
            "dp_rank": ps.get_data_parallel_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(),
            "params": params, "grads": grads, "optimizer": opt, "padded_vocab": ctx.vocab_size}


def main() -> int:
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.training.callbacks import TrainCallback
    from megatron_llm.training.pretrain import pretrain

    out_dir = os.environ["PLANNER_MEMORY_OUT"]

    class Probe(TrainCallback):
        def on_train_end(self, ctx, summary=None):
            rec = _measure(ctx)
            with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
                json.dump(rec, f)

    args, values = parse_run_args(sys.argv[1:])
    return int(pretrain(build_config(values, args.recipe), callbacks=[Probe()])["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
