"""Checkpoint conversion between HuggingFace directories and megatron_llm distributed checkpoints."""
