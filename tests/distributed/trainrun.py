"""Run `megatron-llm train` as a user would (a process of its own, launching its ranks) and read back metrics.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

# A 4-layer GQA Llama small enough for 4 CPU ranks on 2 cores; vocab a multiple of 128 x TP so that the padded
# vocabulary (hence the model) is the same at every layout.
MODEL = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "2",
         "--ffn-hidden-size", "128", "--max-position-embeddings", "64", "--seq-length", "64"]
VOCAB = 512
# Two pipeline stages with one layer per virtual stage: 2 model chunks per rank (the interleaved schedule)
PP2_VP2 = ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]


def make_dataset(prefix: str, num_docs: int = 400, seed: int = 0) -> str:
    """A .bin/.idx of Zipf-distributed token documents written by megatron-core's own builder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(num_docs):
        n = int(rng.integers(20, 200))
        ids = np.minimum(rng.zipf(1.3, size=n), VOCAB - 2).astype(np.int64)
        builder.add_document(torch.from_numpy(ids), [n])
    builder.finalize(prefix + ".idx")
    return prefix


def train_args(out: Path, data: Optional[str], nproc: int, extra: List[str], iters: int = 5, gbs: int = 8,
               mbs: int = 2) -> List[str]:
    """The `megatron-llm train` command line of the tests' tiny model."""
    args = [sys.executable, "-m", "megatron_llm.cli", "train", "--device", "cpu", "--nproc-per-node", str(nproc),
            *MODEL, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs), "--train-iters", str(iters),
            "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "1" if iters > 1 else "0", "--eval-interval", "0",
            "--tensorboard-dir", str(out / "tb"), "--seed", "1234"]
    args += ["--data-path", data, "--split", "98,2,0"] if data else ["--mock-data"]
    return args + list(extra)


def train(out: Path, data: Optional[str], nproc: int, extra: List[str], iters: int = 5,
          gbs: int = 8, mbs: int = 2, timeout: int = 300, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return run_process(train_args(out, data, nproc, extra, iters, gbs, mbs), timeout, "training", env)


def run_process(args: List[str], timeout: int, what: str,
                env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run `args`; its own process group is killed whole on timeout: a hung run must not leave ranks spinning on
    the CI machine. `python -m megatron_llm...` commands run forked from the warm interpreter (warm_launch.py)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    if len(args) > 3 and args[:2] == [sys.executable, "-m"] and args[2].startswith("megatron_llm"):
        return _run_warm(args, timeout, what, env)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"{what} timed out after {timeout}s\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run_warm(args: List[str], timeout: int, what: str, env: dict) -> subprocess.CompletedProcess:
    import queue
    import tempfile

    from warm_launch import server

    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        proc = server().start(args[2], args[3:], env, str(out), str(err))
        try:
            code = proc.wait(timeout)
        except queue.Empty:
            os.killpg(proc.pid, 9)
            proc.wait(60)
            raise AssertionError(f"{what} timed out after {timeout}s\n{out.read_text()[-2000:]}\n"
                                 f"{err.read_text()[-3000:]}")
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())


def signal_after(args: List[str], out: Path, records: int, signum: int, timeout: int = 120) -> Tuple[int, str]:
    """Start a training command, send it `signum` once metrics.jsonl has `records` lines, wait for it to end.
    Returns (exit status, its combined output)."""
    log = out / "train.log"
    with open(log, "w") as logf:  # a file, not a pipe: nobody drains a pipe while we wait
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        metrics = out / "tb" / "metrics.jsonl"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (metrics.exists()
                                                   and len(metrics.read_text().splitlines()) >= records):
            time.sleep(0.5)
        proc.send_signal(signum)
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    return proc.returncode, log.read_text()


def rewind(ckpt: Path, iteration: int) -> None:
    """Make `iteration` the newest checkpoint under `ckpt`, as if the run had stopped there: the later iter_*
    folders removed, the tracker file naming it."""
    assert (ckpt / f"iter_{iteration:07d}").is_dir(), f"no checkpoint of iteration {iteration} in {ckpt}"
    for d in ckpt.glob("iter_*"):
        if int(d.name[5:]) > iteration:
            shutil.rmtree(d)
    (ckpt / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")


def losses(out: Path) -> Dict[int, float]:
    result = {}
    for line in (out / "tb" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("lm_loss") is not None:
            result[rec["iteration"]] = rec["lm_loss"]
    return result


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


def checkpoint_tensors(ckpt_dir: str) -> Dict[str, "object"]:
    """Every tensor of a dist_checkpointing (torch_dist) checkpoint, read with torch's own DCP reader."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(ckpt_dir, os.path.join(tmp, "sd.pt"))
        sd = torch.load(os.path.join(tmp, "sd.pt"), weights_only=False)
    out = {}

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            out[path] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]")
    walk(sd, "")
    return out


def snapshot(root, iteration: int, dest) -> str:
    """A checkpoint root at `dest` holding `root`'s checkpoint of `iteration` as its latest: what a run stopped by
    --exit-interval at `iteration` leaves (a --save-interval save and the save at exit are the same save), so one
    uninterrupted run that saves there is both the reference and the checkpoint to resume from."""
    from megatron_llm.training.checkpointing import TRACKER, checkpoint_dir

    shutil.copytree(checkpoint_dir(str(root), iteration), checkpoint_dir(str(dest), iteration))
    (Path(dest) / TRACKER).write_text(f"{iteration}\n")
    return str(dest)


def copy_metrics(src: Path, dest: Path) -> None:
    """Start `dest`'s metrics.jsonl as a copy of `src`'s (an uninterrupted run's): a run resumed into `dest` must
    drop the records after the iteration it loads and log those iterations again, each once."""
    (dest / "tb").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "tb" / "metrics.jsonl", dest / "tb" / "metrics.jsonl")


def resume(straight: Path, data: str, nproc: int, flags: List[str], stop: int, total: int,
           out: Path) -> Dict[int, float]:
    """Resume the uninterrupted run in `straight` from its checkpoint of `stop` (copied to out/ckpt, which the resumed
    run only reads) into `out`, training to `total`; its metrics.jsonl starts as the uninterrupted run's (the resumed
    run drops and logs again the iterations after `stop`). Returns the losses in `out`."""
    ckpt = snapshot(straight / "ckpt", stop, out / "ckpt")
    copy_metrics(straight, out)
    proc = train(out, data, nproc, flags + ["--load", ckpt], iters=total)
    check(proc)
    assert "loaded checkpoint" in proc.stdout
    return losses(out)


def max_rel_diff(a: Dict[int, float], b: Dict[int, float]) -> float:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(abs(a[k] - b[k]) / abs(b[k]) for k in a)
