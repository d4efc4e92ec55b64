"""Run megatron-core's CUDA-only code paths on CPU processes (gloo) — for tests and for debugging a 3D-parallel
configuration on a laptop.

megatron-core assumes CUDA throughout: ``torch.cuda.current_device()`` as a ``device=`` argument, ``"cuda"``
literals, streams/events, the CUDA RNG tracker and ``param.type() == 'torch.cuda.FloatTensor'`` checks. This module
opts a process into a small set of stand-ins, each listed in ``_PATCHES`` below with why. It is never imported by a
CUDA run (``training/initialize.py`` imports it only for ``--device cpu``) and ``activate()`` refuses to run when
a CUDA device is in use, so it cannot silently change a GPU job.

What is emulated:
  * device placement — a TorchFunctionMode rewrites every CUDA ``device=`` (string, torch.device or int index)
    to CPU, and ``Tensor.cuda()`` / ``.to('cuda')`` to CPU;
  * ``torch.cuda.current_device / device_count / is_available`` (current_device only; is_available stays False
    so that megatron-core's own "no CUDA" branches still apply where they exist);
  * streams, events, ``synchronize``, memory queries — no-ops with the right shape;
  * the CUDA RNG state (``get/set_rng_state``, ``manual_seed``) maps to the CPU default generator, so megatron's
    RNG tracker forks and restores real state (dropout stays reproducible per TP rank);
  * ``Tensor.type()`` names CPU float tensors as their CUDA types, which megatron's optimizers check for;
  * pipeline p2p messages carry their direction as a tag (gloo matches untagged messages by order alone).
gloo itself provides every collective megatron-core uses here (reduce_scatter_tensor and all_gather_into_tensor
included, since torch 2.x), so no communication is emulated.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Tuple

import torch
from torch.overrides import TorchFunctionMode

_state: Dict[str, Any] = {"active": False, "mode": None, "saved": []}


def is_active() -> bool:
    return bool(_state["active"])


def _is_cuda_device(d: Any) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.startswith("cuda")
    # A bare int device index means "CUDA device n" (what torch.cuda.current_device() returns).
    return isinstance(d, int) and not isinstance(d, bool)


_CPU = torch.device("cpu")


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch function and Tensor method call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if args[0].device.type == "cpu" and name.startswith("torch.") and not name.startswith("torch.cuda."):
                return "torch.cuda." + name[len("torch."):]
            return name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        # Positional devices: torch.device("cuda") / "cuda:N" anywhere, and Tensor.to(N) with an int index.
        args = tuple(_CPU if (_is_cuda_device(a) and not isinstance(a, int)) else a for a in args)
        if func is torch.Tensor.to and len(args) > 1 and type(args[1]) is int:
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for torch.cuda.Stream / ExternalStream: work on CPU is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, event=None):
        return event or _NullEvent()

    def synchronize(self):
        pass

    def query(self):
        return True


class _NullEvent:
    """Stands in for torch.cuda.Event; elapsed_time uses the host clock so timers still measure something."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, stream=None):
        import time

        self._t = time.perf_counter()

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end: "_NullEvent") -> float:
        return 1000.0 * ((end._t or 0.0) - (self._t or 0.0))


def _rng_get_state(device: Any = "cuda") -> torch.Tensor:
    return torch.get_rng_state()


def _rng_set_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _megatron_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


_FORWARD_TAG, _BACKWARD_TAG = 1, 2


def _tagged_p2p_ops(*, tensor_send_prev, tensor_recv_prev, tensor_send_next, tensor_recv_next, group,
                    prev_pipeline_rank, next_pipeline_rank, **_unused):
    """Pipeline p2p with the direction in the message tag. gloo matches messages between two ranks by (peer, tag)
    in posting order; with PP=2 and virtual stages a rank's previous and next stage are the same rank, so
    activations and gradients travel the same pair of ranks in both directions and untagged messages cross."""
    import torch.distributed as dist

    reqs = {}
    if tensor_send_prev is not None:
        reqs["send_prev"] = dist.isend(tensor_send_prev, prev_pipeline_rank, group, tag=_BACKWARD_TAG)
    if tensor_recv_prev is not None:
        reqs["recv_prev"] = dist.irecv(tensor_recv_prev, prev_pipeline_rank, group, tag=_FORWARD_TAG)
    if tensor_send_next is not None:
        reqs["send_next"] = dist.isend(tensor_send_next, next_pipeline_rank, group, tag=_FORWARD_TAG)
    if tensor_recv_next is not None:
        reqs["recv_next"] = dist.irecv(tensor_recv_next, next_pipeline_rank, group, tag=_BACKWARD_TAG)
    return reqs


def _tagged_batched_p2p_ops(**kwargs):
    """Same, in the list form megatron's batched path returns."""
    return list(_tagged_p2p_ops(**kwargs).values())


def _patches() -> List[Tuple[Any, str, Any]]:
    """(owner, attribute, replacement) — kept short; each one answers a specific CUDA assumption."""
    from megatron.core.pipeline_parallel import p2p_communication
    from megatron.core.tensor_parallel import random as mcore_random

    cuda = torch.cuda
    return [
        (cuda, "current_device", lambda: 0),  # used as device= everywhere; the mode maps index 0 to CPU
        (cuda, "device_count", lambda: 1),
        (cuda, "set_device", lambda *a, **k: None),
        (cuda, "synchronize", lambda *a, **k: None),
        (cuda, "Stream", _NullStream),
        (cuda, "ExternalStream", _NullStream),
        (cuda, "Event", _NullEvent),
        (cuda, "current_stream", lambda *a, **k: _NullStream()),
        (cuda, "default_stream", lambda *a, **k: _NullStream()),
        (cuda, "stream", lambda *a, **k: contextlib.nullcontext()),
        (cuda, "empty_cache", lambda: None),
        (cuda, "memory_allocated", lambda *a, **k: 0),
        (cuda, "max_memory_allocated", lambda *a, **k: 0),
        (cuda, "memory_reserved", lambda *a, **k: 0),
        (cuda, "get_rng_state", _rng_get_state),
        (cuda, "set_rng_state", _rng_set_state),
        (cuda, "manual_seed", lambda seed: torch.manual_seed(seed)),
        (cuda.random, "get_rng_state", _rng_get_state),
        (cuda.random, "set_rng_state", _rng_set_state),
        (mcore_random, "_get_cuda_rng_state", _megatron_get_rng_state),
        (mcore_random, "_set_cuda_rng_state", _rng_set_state),
        (p2p_communication, "_batched_p2p_ops", _tagged_batched_p2p_ops),
        (p2p_communication, "_p2p_ops", _tagged_p2p_ops),
    ]


def _no_compile(fn=None, **kwargs):
    return fn if fn is not None else (lambda f: f)


def eager_jit_fusions() -> bool:
    """Run megatron-core's fused elementwise functions (bias + SwiGLU/GeLU, RoPE helpers, ...) eagerly on a CPU rank.

    megatron-core decorates them with torch.compile (megatron.core.jit.jit_fuser) as its modules are imported: that
    brings in dynamo and inductor (~1.3 s a process, measured) and on CPU the first call compiles C++ for each function
    and shape, for elementwise work that takes microseconds here. Called before megatron-core is first imported,
    jit_fuser becomes megatron's own no-op (the one ``disable_jit_fuser`` installs) for every module. Returns whether
    it took effect: False when megatron-core was imported already (nothing is changed then)."""
    import sys

    if "megatron.core" in sys.modules:
        return False
    real = torch.compile
    torch.compile = _no_compile  # what megatron.core.jit binds as jit_fuser while megatron.core imports
    try:
        from megatron.core import jit

        jit.disable_jit_fuser()
    finally:
        torch.compile = real
    return True


def activate() -> None:
    """Opt this process into CPU emulation. Idempotent. Refuses when CUDA is initialised for real work."""
    if _state["active"]:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("CPU emulation requested in a process that already uses CUDA; "
                           "run with --device cpu from the start, or drop it to use the GPU")
    saved = []
    for owner, name, new in _patches():
        saved.append((owner, name, getattr(owner, name, None)))
        setattr(owner, name, new)
    mode = _CudaToCpuMode()
    mode.__enter__()
    _state.update(active=True, mode=mode, saved=saved)


def deactivate() -> None:
    """Undo activate() (used by tests that need a clean process state)."""
    if not _state["active"]:
        return
    _state["mode"].__exit__(None, None, None)
    for owner, name, old in reversed(_state["saved"]):
        setattr(owner, name, old)
    _state.update(active=False, mode=None, saved=[])


def guard_cuda_run() -> None:
    """Called on CUDA runs: fails loudly if emulation leaked into the process."""
    if is_active():
        raise RuntimeError("CPU emulation is active in a CUDA run; this is a bug — it must only be opted into "
                           "with --device cpu")
