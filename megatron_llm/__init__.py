"""megatron_llm: Megatron-style 3D-parallel LLM pretraining on megatron-core."""

__version__ = "0.1.0"
