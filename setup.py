from setuptools import find_packages, setup

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
        "test": ["pytest", "transformers", "safetensors", "gguf", "accelerate"],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["megatron-llm=megatron_llm.cli:main"]},
)
