"""A training rank that records, per iteration, with the code that issued each:
- on CPU, every host read of a tensor's value (.item(), bool(), float(): aten's _local_scalar_dense, a device
  synchronisation on a GPU) and every collective;
- on a GPU, every synchronisation the training thread waits on (stream, event, device: torch's CUDA trace).
Run through launch/local.run_workers by test_step_host_reads.py (CPU) and tests/gpu/test_step_syncs_gpu.py; writes
$STEP_READS_OUT/rank<N>.json."""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections import defaultdict

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

# frames that only pass a call through: the caller is the first frame outside them
_PASS_THROUGH = (f"{os.sep}torch{os.sep}", "typing_extensions", "contextlib", "functools", "cpu_emulation.py")
# where the step's one expected read happens: megatron-core's clip_grads reads the norm our grad_norm computed
GRAD_NORM_READ = "megatron/core/optimizer/clip_grads.py:get_grad_norm_fp32"


def caller() -> str:
    """path:function of the code that made the call being recorded (the recorder's own two frames left out)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(p in frame.filename for p in _PASS_THROUGH):
            path = frame.filename.replace(os.sep, "/")
            for root in ("megatron_llm/", "megatron/"):
                if root in path:
                    path = path[path.rindex(root):]
                    break
            return f"{path}:{frame.name}"
    return "?"


class StepRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.iteration = None  # None: not recording
        self.in_torch_optimizer = False
        self.reads = defaultdict(list)
        self.collectives = defaultdict(list)
        self.syncs = defaultdict(list)

    def record_cuda_syncs(self) -> None:
        from torch.cuda import _gpu_trace

        def on_sync(*_):
            if self.iteration is not None and threading.current_thread() is threading.main_thread():
                self.syncs[self.iteration].append(caller())

        for register in (_gpu_trace.register_callback_for_stream_synchronization,  # .item(), stream.synchronize()
                         _gpu_trace.register_callback_for_event_synchronization,
                         _gpu_trace.register_callback_for_device_synchronization):
            register(on_sync)
        torch._C._activate_gpu_trace()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # torch's AdamW on CPU runs foreach with its step counters on the host; on CUDA it runs fused with them on
        # the device (training/optimizer.py), so its reads here are not a GPU run's
        if self.iteration is None:
            pass
        elif func is torch.ops.aten._local_scalar_dense.default and not self.in_torch_optimizer:
            self.reads[self.iteration].append(caller())
        elif func.namespace == "c10d":
            self.collectives[self.iteration].append([func.__name__, caller()])
        return func(*args, **(kwargs or {}))


def main() -> int:
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.training.callbacks import TrainCallback
    from megatron_llm.training.pretrain import pretrain

    recorder = StepRecorder()
    register_optimizer_step_pre_hook(lambda *a: setattr(recorder, "in_torch_optimizer", True))
    register_optimizer_step_post_hook(lambda *a: setattr(recorder, "in_torch_optimizer", False))

    class Record(TrainCallback):
        def on_train_start(self, ctx):
            if ctx.device == "cuda":
                recorder.record_cuda_syncs()
            else:
                recorder.__enter__()

        def on_step_start(self, ctx, iteration):
            recorder.iteration = iteration

        def on_train_end(self, ctx, summary=None):
            recorder.iteration = None
            if ctx.device != "cuda":
                recorder.__exit__(None, None, None)
            out = {"reads": recorder.reads, "collectives": recorder.collectives, "syncs": recorder.syncs}
            with open(os.path.join(os.environ["STEP_READS_OUT"], f"rank{ctx.rank}.json"), "w") as f:
                json.dump(out, f)

    args, values = parse_run_args(sys.argv[1:])
    return int(pretrain(build_config(values, args.recipe), callbacks=[Record()])["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
