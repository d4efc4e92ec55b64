"""Finding and building the csrc/ extension.

Two ways in: the module `pip install -e .` compiled into the package (megatron_llm._C), used when it was built from
the sources now in csrc/ (its compiled-in source hash matches), else a JIT build with torch.utils.cpp_extension into
a cache directory keyed by that hash and the checkout (~/.cache/megatron_llm/ext, or $MEGATRON_LLM_EXT_DIR), so a
build happens once per source version, checkout and machine; concurrent builders take turns on a file lock. Every
csrc/**/*.cpp is compiled (as one translation unit); csrc/**/*.cu too when torch has CUDA and a CUDA toolkit is
found (a kernel added under csrc/ needs no registration here). MEGATRON_LLM_NO_EXT=1 disables it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import List, Optional, Tuple

CSRC = Path(__file__).resolve().parents[2] / "csrc"
_lock = threading.Lock()
_loaded: Optional[Tuple[object, str]] = None


def disabled() -> bool:
    return os.environ.get("MEGATRON_LLM_NO_EXT", "") not in ("", "0")


def sources(with_cuda: bool, root: Path = CSRC) -> List[Path]:
    files = sorted(root.rglob("*.cpp"))
    if with_cuda:
        files += sorted(root.rglob("*.cu"))
    return files


def cuda_buildable() -> Tuple[bool, str]:
    """Whether the JIT build can include the .cu kernels: torch built with CUDA and nvcc found."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit (CUDA_HOME) found"
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return False, "no GPU visible and no TORCH_CUDA_ARCH_LIST: nothing to build CUDA kernels for"
    return True, f"torch CUDA {torch.version.cuda}, toolkit {cpp_extension.CUDA_HOME}"


def source_hash(with_cuda: bool, root: Path = CSRC) -> str:
    """Hash of every source and header under csrc/, torch's version and the CUDA choice."""
    import torch

    h = hashlib.sha256(f"{torch.__version__}|cuda={with_cuda}".encode())
    suffixes = (".cpp", ".h") + ((".cu", ".cuh") if with_cuda else ())  # a CPU build ignores CUDA-only edits
    if with_cuda:  # kernels are built for the visible GPU's architecture (or the listed ones)
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or (
            "%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")
        h.update(f"|arch={arch}".encode())
    files = sorted(p for p in root.rglob("*") if p.suffix in suffixes)
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("MEGATRON_LLM_EXT_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "megatron_llm",
                                                                  "ext")
    return Path(base)


def compile_flags(with_cuda: bool, digest: str) -> dict:
    """Flags shared by setup.py and the JIT build."""
    # an identifier (stringised in bindings.cpp): quotes do not survive ninja's shell
    define = [f"-DMLLM_SOURCE_HASH=h{digest}"] + ([] if with_cuda else ["-DMLLM_NO_CUDA"])
    flags = {"cxx": ["-O3", "-fopenmp"] + define}  # the C++ standard: torch's choice (C++20 from torch 2.14)
    if with_cuda:
        # GPU architectures: torch's (the visible GPU, or TORCH_CUDA_ARCH_LIST); scripts/nvcc_check.sh covers sm_80/90
        flags["nvcc"] = ["-O3"] + define
    return {"extra_compile_args": flags, "include_dirs": [str(CSRC / "include"), str(CSRC)]}


def _prebuilt(digest: str):
    try:
        mod = importlib.import_module("megatron_llm._C")
    except ImportError:
        return None
    return mod if getattr(mod, "source_hash", lambda: "")() == f"h{digest}" else None


def build_dir(digest: str, root: Path = CSRC) -> Path:
    """The JIT build directory: per source version and per checkout, since ninja's build file records the sources'
    absolute paths (two checkouts sharing one directory would rebuild each other's extension every time)."""
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return cache_dir() / f"{digest}-{where}"


@contextlib.contextmanager
def _exclusive(directory: Path):
    """Hold an flock on directory/build.flock: builders (ranks of one job, several jobs) take turns, and the lock
    goes with the process that held it, so a killed build never blocks the next one. torch's own lock file
    (directory/lock), left behind by a build killed part-way, would make torch wait forever: holding the flock,
    any such file is stale and is removed."""
    with open(directory / "build.flock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            stale = directory / "lock"
            if stale.exists():
                print(f"megatron_llm: removing {stale}, left by a build that did not finish", file=sys.stderr,
                      flush=True)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_if_changed(path: Path, text: str) -> Path:
    """A generated source, rewritten only when its text changes: ninja goes by timestamps."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def one_translation_unit(directory: Path, files: List[Path], name: str = "csrc_cpp.cpp") -> Path:
    """directory/name, a .cpp that #includes each of files: torch's headers, which the binding files include, are
    then parsed once instead of once a file (tens of seconds of CPU each)."""
    return write_if_changed(directory / name, "".join(f'#include "{f.resolve()}"\n' for f in files))


def compiled_sources(directory: Path, with_cuda: bool) -> List[Path]:
    """What the compiler is given (JIT build and setup.py alike): csrc's .cpp files as one unit in directory, and
    each .cu file when the build includes CUDA."""
    return [one_translation_unit(directory, sources(False))] + [s for s in sources(with_cuda) if s.suffix == ".cu"]


def _jit(with_cuda: bool, digest: str):
    from torch.utils import cpp_extension

    directory = build_dir(digest)
    directory.mkdir(parents=True, exist_ok=True)
    flags = compile_flags(with_cuda, digest)
    with _exclusive(directory):
        if not any(directory.glob("*.so")):
            print(f"megatron_llm: building the csrc extension ({'CPU + CUDA' if with_cuda else 'CPU'}) into "
                  f"{directory} (once per source version)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=f"mllm_{digest}", sources=[str(s) for s in compiled_sources(directory, with_cuda)],
            build_directory=str(directory),
            extra_cflags=flags["extra_compile_args"]["cxx"],
            extra_cuda_cflags=flags["extra_compile_args"].get("nvcc"), extra_include_paths=flags["include_dirs"],
            extra_ldflags=["-fopenmp"], with_cuda=with_cuda, verbose=False)


def load() -> Tuple[Optional[object], str]:
    """(extension module or None, why) — built or loaded once per process."""
    global _loaded
    if disabled():
        return None, "MEGATRON_LLM_NO_EXT is set"
    with _lock:
        if _loaded is None:
            _loaded = _load_uncached()
        return _loaded


def _load_uncached() -> Tuple[Optional[object], str]:
    if not CSRC.is_dir():
        mod = _try_import_any()
        return (mod, "prebuilt megatron_llm._C") if mod else (None, f"no csrc/ sources at {CSRC} and no prebuilt "
                                                                     "extension")
    with_cuda, _ = cuda_buildable()
    digest = source_hash(with_cuda)
    mod = _prebuilt(digest)
    if mod is not None:
        return mod, "prebuilt megatron_llm._C (pip install)"
    try:
        return _jit(with_cuda, digest), f"JIT build cached in {build_dir(digest)}"
    except Exception as exc:  # no compiler, a broken toolkit: the torch reference still runs
        last = (str(exc).strip().splitlines() or [""])[-1][:200]
        return None, f"extension build failed ({type(exc).__name__}: {last})"


def _try_import_any():
    try:
        return importlib.import_module("megatron_llm._C")
    except ImportError:
        return None


def reset_for_tests() -> None:
    global _loaded
    with _lock:
        _loaded = None
