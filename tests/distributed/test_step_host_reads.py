"""Between log boundaries a training step reads one value on the host, the gradient norm (clipping and the NaN check
share it), and the step loop issues no collective of its own (losses, stop signals and stragglers are exchanged at
the log boundary). On a GPU every host read of a device tensor is a synchronisation that idles the GPU while the host
launches the next kernels, so this is the fused path's "one sync per step"; here it is recorded on CPU ranks (TP2 x
PP2 with interleaved chunks, sequence parallel, the fused spec and cross entropy), where a read is aten's
_local_scalar_dense whatever the tensor's device (step_reads_worker.py). tests/gpu/test_step_syncs_gpu.py counts the
real CUDA synchronisations."""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_llm.launch.local import run_workers
from step_reads_worker import GRAD_NORM_READ
from trainrun import MODEL, PP2_VP2, VOCAB

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# reads of tensors that live on the host in a GPU run too
HOST_TENSOR_READS = {
    # megatron-core's RNG tracker checks the CPU generator's state (torch.get_rng_state()) is unchanged
    "megatron/core/tensor_parallel/random.py:fork",
}
# the schedules' gradient-reduction hook: the global batch's token count, as megatron-core gathers it
GRAD_FINALIZE = "megatron_llm/training/grad_finalize.py:finalize_model_grads"
ITERS, LOG_INTERVAL = 10, 5


def test_one_host_read_and_no_loop_collective_between_log_boundaries(tmp_path, monkeypatch):
    argv = ["--device", "cpu", *MODEL, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(ITERS),
            "--log-interval", str(LOG_INTERVAL), "--eval-interval", "0", "--mock-data", "--lr", "1e-3",
            "--lr-warmup-iters", "1", "--tensorboard-dir", str(tmp_path / "tb"),
            "--tensor-model-parallel-size", "2", "--sequence-parallel", *PP2_VP2,
            "--transformer-impl", "fused", "--cross-entropy-loss-fusion"]
    monkeypatch.setenv("STEP_READS_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), str(HERE),
                                                                    os.environ.get("PYTHONPATH")])))
    assert run_workers("step_reads_worker", argv, 4, cpu=True) == 0

    boundaries = {i for i in range(1, ITERS + 1) if i % LOG_INTERVAL == 0}
    steady = [i for i in range(2, ITERS + 1) if i not in boundaries]  # iteration 1 also sets things up
    for rank in range(4):
        rec = json.loads((tmp_path / f"rank{rank}.json").read_text())
        reads = {int(i): [s for s in sites if s not in HOST_TENSOR_READS] for i, sites in rec["reads"].items()}
        loop_collectives = {int(i): [c for c in calls
                                     if c[1].startswith("megatron_llm/training/") and c[1] != GRAD_FINALIZE]
                            for i, calls in rec["collectives"].items()}
        for i in steady:
            assert reads[i] == [GRAD_NORM_READ], (rank, i, reads[i])
            assert loop_collectives.get(i, []) == [], (rank, i, loop_collectives[i])
        for i in boundaries:  # where they belong: the health exchange (and the loss it brings) at the boundary
            assert any(site.startswith("megatron_llm/training/health.py") for _, site in loop_collectives[i]), \
                (rank, i, rec["collectives"][str(i)])
            assert GRAD_NORM_READ in reads[i] and len(reads[i]) > 1, (rank, i, reads[i])
