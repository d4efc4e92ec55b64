"""Run a megatron-core model outside training: one-process sessions, distributed logits, text generation."""
