"""Parallelism planner: memory and step-time model of a training layout, search over the layouts `train` can run.

Pure arithmetic over config/ and perf/ (no torch), so `megatron-llm plan` runs on a login node. `calibrate.py` is
the one module that imports torch, lazily, to measure this machine's matmul and collective throughput.
"""
