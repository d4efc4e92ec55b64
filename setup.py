import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _csrc_extension():
    """The csrc/ kernels as megatron_llm._C, built when torch imports here (`pip install --no-build-isolation -e .`)
    and a compiler works; otherwise nothing, and the ops JIT-build on first use (megatron_llm/ops/build.py) or run
    their torch references. A failed build never fails the install."""
    if os.environ.get("MEGATRON_LLM_NO_EXT", "") not in ("", "0"):
        return {}
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return {}
    spec = importlib.util.spec_from_file_location("_mllm_build", os.path.join(HERE, "megatron_llm", "ops", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)  # stdlib-only module: the package itself is not imported
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # an install on a GPU-less build machine: A100 and H100/H200
    with_cuda = build.cuda_buildable()[0]
    flags = build.compile_flags(with_cuda, build.source_hash(with_cuda))
    unit_dir = os.path.join(HERE, "build", "csrc_unit")  # the generated one-unit .cpp (build/ is git-ignored)
    os.makedirs(unit_dir, exist_ok=True)
    sources = [os.path.relpath(p, HERE) for p in build.compiled_sources(Path(unit_dir), with_cuda)]
    make = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext = make("megatron_llm._C", sources, include_dirs=flags["include_dirs"],
               extra_compile_args=flags["extra_compile_args"] if with_cuda else flags["extra_compile_args"]["cxx"],
               extra_link_args=["-fopenmp"])

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # no compiler, broken toolkit: install without it
                print(f"warning: megatron_llm csrc extension not built ({exc}); the ops will JIT-build on first use "
                      "or run their torch references", file=sys.stderr)

    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(
    name="megatron-llm",
    version="0.1.0",
    description="Megatron-style 3D-parallel LLM pretraining on megatron-core",
    packages=find_packages(include=["megatron_llm", "megatron_llm.*"]),
    package_data={"megatron_llm": ["config/recipes/*.yaml", "data/resources/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16,<0.17",
        "numpy",
        "sentencepiece",
        "tokenizers",
        "tensorboard",
        "pyyaml",
        "nvidia-ml-py",
        "tqdm",
        "zstandard",
        "orjson",  # preprocessing: ~5x faster JSON-lines decoding than json.loads
        "pyarrow",
        "psutil",
        "safetensors",  # HF checkpoint conversion  # megatron-core dist_checkpointing writer processes
        "matplotlib",  # profiler report plots
    ],
    extras_require={
        "te": ["transformer-engine[pytorch]"],
        # transformers (+ gguf, accelerate: SmolLM2's GGUF) is the reference for checkpoint conversion tests
        "test": ["pytest", "pytest-xdist", "transformers", "safetensors", "gguf", "accelerate"],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["megatron-llm=megatron_llm.cli:main"]},
    **_csrc_extension(),
)
