"""Pure arithmetic about performance: model/hardware FLOPs, GPU peak tables, throughput and MFU.

Used by training (metrics.jsonl), profiling (report.md) and planning alike, so it sits below all three and
imports neither torch nor anything above config/.
"""
