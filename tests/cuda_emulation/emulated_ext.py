"""The csrc extension with its CUDA kernels compiled for the CPU emulation in include/mllm_cuda_emulation.h, so that
CI runs the kernels' threads, warps, block reductions and launch configurations, not only the per-row arithmetic
the C++ CPU kernels share with them. csrc/cuda/*.cu and *.cuh (and selftest.cu, kernels with known faults) are
copied into the build directory with each `kernel<<<grid, block, shared, stream>>>(args)` rewritten as
`::mllm_emu::launch(::mllm_emu::Config(grid, block, shared, stream), kernel, args)`, `extern __shared__` arrays as
the emulation's dynamic shared memory, `__shared__ T x[N]` as a per-block array of the emulation's and the CUDA
headers as the emulation's; ops.cpp, built with MLLM_EMULATED_CUDA, sends CPU tensors to those launchers.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sys
from pathlib import Path
from typing import Iterator

from megatron_llm.ops import build

HERE = Path(__file__).resolve().parent
INCLUDE = HERE / "include"

_LAUNCH = re.compile(r"(\w+(?:<[^<>;{}]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(?:alignas\(\d+\)\s+)?unsigned\s+char\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+([\w:]+(?:<[^<>;]*>)?)\s+(\w+)\s*\[([^\]]+)\]\s*;")
_CUDA_INCLUDE = re.compile(r"#include\s*<(cuda_runtime|cuda_fp16|cuda_bf16)\.h>")
_module = None


def emulated_source(text: str, name: str, sites: Iterator[int] | None = None) -> str:
    """A .cu / .cuh source rewritten for the emulation; a construct the emulation does not know is an error here,
    not a confusing compiler message later. `sites` numbers the __shared__ arrays (one count for all the files of a
    build: a .cu and the .cuh it includes must not share a number)."""
    out = _LAUNCH.sub(lambda m: f"::mllm_emu::launch(::mllm_emu::Config({m.group(2)}), {m.group(1)}, ", text)
    out = _DYNAMIC_SHARED.sub(r"unsigned char* \1 = ::mllm_emu::dynamic_shared();", out)
    sites = sites if sites is not None else itertools.count(1)
    out = _STATIC_SHARED.sub(lambda m: f"auto& {m.group(2)} = ::mllm_emu::block_shared<{m.group(1)}[{m.group(3)}]>"
                                       f"({next(sites)});", out)
    out = _CUDA_INCLUDE.sub('#include "mllm_cuda_emulation.h"', out)
    for left, what in (("<<<", "a kernel launch"), ("__shared__", "a shared-memory array"),
                       ("#include <cu", "a CUDA header")):
        if left in out:
            line = out[:out.index(left)].count("\n") + 1
            raise ValueError(f"{name}:{line}: {what} the CUDA emulation cannot rewrite (tests/cuda_emulation/"
                             f"emulated_ext.py handles kernel<<<...>>>(, extern __shared__ unsigned char x[];, "
                             f"__shared__ T x[N]; and cuda_runtime/fp16/bf16 headers)")
    return out


def _digest() -> str:
    # the checkout too: ninja's build file records the sources' absolute paths (as in build.build_dir)
    h = hashlib.sha256(f"{build.source_hash(with_cuda=True)}|{HERE}".encode())
    for p in sorted(HERE.rglob("*")):
        if p.suffix in (".h", ".py", ".cu", ".cpp"):
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load():
    """The emulated-CUDA extension module, built once per source version (cached like the real one)."""
    global _module
    if _module is not None:
        return _module
    from torch.utils import cpp_extension

    digest = _digest()
    directory = build.cache_dir() / f"emulated-cuda-{digest}"
    kernels = directory / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    with build._exclusive(directory):
        generated, sites = [], itertools.count(1)
        # csrc's kernels, and the selftest kernels with known faults (tests/unit/test_cuda_emulation.py)
        cuda_sources = sorted(build.CSRC.rglob("*.cu")) + sorted(build.CSRC.rglob("*.cuh")) + [HERE / "selftest.cu"]
        for src in cuda_sources:
            dest = kernels / (src.stem + "_emulated.cpp" if src.suffix == ".cu" else src.name)
            build.write_if_changed(dest, emulated_source(src.read_text(), src.name, sites))
            if src.suffix == ".cu":
                generated.append(dest)
        unity = build.one_translation_unit(kernels, build.sources(False) + [HERE / "selftest_bindings.cpp"])
        # -U_FORTIFY_SOURCE: glibc's checked _longjmp refuses a jump onto another stack (a fiber's)
        cxx = build.compile_flags(False, digest)["extra_compile_args"]["cxx"] + ["-DMLLM_EMULATED_CUDA",
                                                                                 "-U_FORTIFY_SOURCE"]
        if not any(directory.glob("*.so")):
            print(f"megatron_llm tests: building the extension with emulated CUDA kernels into {directory}",
                  file=sys.stderr, flush=True)
        _module = cpp_extension.load(
            name=f"mllm_emulated_{digest}",
            sources=[str(s) for s in [unity] + generated],
            build_directory=str(directory), extra_cflags=cxx,
            extra_include_paths=[str(INCLUDE), str(build.CSRC / "include"), str(build.CSRC)],
            extra_ldflags=["-fopenmp"], with_cuda=False, verbose=False)
    return _module
