"""A Slurm warning (SIGUSR1) that arrives while a rank is still starting up must not kill it: the rank keeps the
signal, trains to the first iteration boundary, saves and exits for requeue. On a real cluster the warning can come
at any moment after the job starts (tests/slurm shows the rest of the path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))

from trainrun import MODEL, VOCAB  # noqa: E402

from megatron_llm.exit_codes import EXIT_CODE_REQUEUE  # noqa: E402
from megatron_llm.launch.local import free_port  # noqa: E402


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler installed for sig (SigCgt mask in /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def test_warning_during_startup_is_kept_until_the_first_iteration(tmp_path):
    port = free_port()
    # One rank launched from outside (as srun or torchrun would), so this process is the trainer itself.
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), PYTHONWARNINGS="ignore")
    tb, ckpt = tmp_path / "tb", tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "megatron_llm.cli", "train", "--device", "cpu", *MODEL, "--tokenizer-type",
         "NullTokenizer", "--vocab-size", str(VOCAB), "--mock-data", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "50", "--lr", "1e-3", "--eval-interval", "0",
         "--save", str(ckpt), "--tensorboard-dir", str(tb)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _catches(proc.pid, signal.SIGUSR1):
            assert proc.poll() is None and time.monotonic() < deadline, "the rank never installed its handler"
            time.sleep(0.01)
        proc.send_signal(signal.SIGUSR1)
        # the handler came before torch was even loaded: the signal hit the very start of the start-up
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == EXIT_CODE_REQUEUE, out[-3000:]
    metrics = tb / "metrics.jsonl"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert [json.loads(l)["iteration"] for l in metrics.read_text().splitlines()] == [1]


def test_an_echo_of_the_stop_signal_is_not_a_second_request():
    """Slurm signals every process of a step and torchrun relays the same signal to its workers: a rank sees one
    event twice within milliseconds. Only a SIGTERM well after the first signal means "stop now, without saving"."""
    from megatron_llm.training import signals as sig

    seen = []
    previous = {s: signal.signal(s, lambda n, f: seen.append(n)) for s in sig.HANDLED}
    try:
        handler = sig.StopSignalHandler().install()
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGTERM)  # the echo (or Slurm's TERM right behind its warning)
        assert handler.received == signal.SIGUSR1 and seen == [] and handler._previous
        handler.received_at -= sig.ECHO_WINDOW_S + 1
        signal.raise_signal(signal.SIGUSR1)  # a repeated warning (the batch script re-sends it) is still no more
        assert seen == [] and handler._previous
        signal.raise_signal(signal.SIGTERM)  # a real second request: the previous disposition runs, here ours
        assert seen == [signal.SIGTERM] and not handler._previous
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
