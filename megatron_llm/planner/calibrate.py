"""`plan --calibrate`: measure this machine's matmul throughput, HBM bandwidth and (with several ranks) all-reduce
bus bandwidth, and store them (calibration.json) for later predictions on the same GPU type.

The one planner module that imports torch, lazily, inside functions: `plan` without --calibrate never loads it.
Under torchrun / srun with several ranks the all-reduce is timed across them (NCCL on GPUs); alone, only the
single-device figures are measured and the collective defaults stay.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Dict, Optional


def _timed(fn, sync, warmup: int = 2, iters: int = 5) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def measure(size: Optional[int] = None, allreduce_mb: int = 256) -> Dict:
    import torch

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = size or (8192 if cuda else 512)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    t = _timed(lambda: a @ b, sync)
    out: Dict = {"device": dev, "dtype": str(dtype).replace("torch.", ""), "matmul_size": n,
                 "matmul_tflops": 2 * n ** 3 / t / 1e12}
    x = torch.empty(64 * 2 ** 20 if cuda else 8 * 2 ** 20, device=dev, dtype=torch.uint8)
    y = torch.empty_like(x)
    t = _timed(lambda: y.copy_(x), sync)
    out["hbm_gbps"] = 2 * x.numel() / t / 1e9  # read + write
    if cuda:
        from megatron_llm.perf.peaks import match_gpu

        out["device_name"] = torch.cuda.get_device_name()
        out["gpu"] = match_gpu(out["device_name"])
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        created = not dist.is_initialized()
        if created:
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
        w = dist.get_world_size()
        buf = torch.empty(allreduce_mb * 2 ** 20 // 2, device=dev, dtype=torch.bfloat16 if cuda else torch.float32)
        t = _timed(lambda: dist.all_reduce(buf), sync, warmup=2, iters=5)
        out["allreduce_busbw_gbps"] = buf.numel() * buf.element_size() / t / 1e9 * 2 * (w - 1) / w
        out["allreduce_ranks"] = w
        if created:  # its threads end before the interpreter does (NCCL warns of a group never destroyed)
            dist.destroy_process_group()
    out["measured_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return out


def calibrate(path: Optional[str] = None, size: Optional[int] = None) -> int:
    from megatron_llm.fileio import atomic_write_text
    from megatron_llm.planner.hardware import calibration_path

    result = measure(size)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    target = path or str(calibration_path())
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    print(f"[megatron-llm plan] calibration: matmul {result['matmul_tflops']:.3g} TFLOP/s "
          f"({result['dtype']}, {result['matmul_size']}^3), copy {result['hbm_gbps']:.3g} GB/s"
          + (f", all-reduce busbw {result['allreduce_busbw_gbps']:.1f} GB/s over {result['allreduce_ranks']} ranks"
             if "allreduce_busbw_gbps" in result else ", all-reduce not measured (one rank)"))
    if result.get("gpu"):
        print(f"[megatron-llm plan] stored in {target}; `plan --gpu-type '{result['gpu']}'` uses it")
    else:
        print(f"[megatron-llm plan] stored in {target}; it is not a known GPU ({result.get('device_name', 'CPU')}),"
              f" so no --gpu-type uses it")
    return 0


if __name__ == "__main__":
    sys.exit(calibrate())
