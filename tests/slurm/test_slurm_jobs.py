"""`megatron-llm submit` against a real slurmctld/slurmd pair (two emulated nodes on this machine).

CPU-emulated training (gloo) stands in for GPUs: `--device cpu` jobs ask for tasks, not GPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainrun import MODEL, VOCAB, make_dataset

TRAIN = [*MODEL, "--device", "cpu", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
         "--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "1e-3", "--min-lr", "1e-4",
         "--lr-warmup-iters", "1", "--eval-interval", "0", "--seed", "1234", "--split", "98,2,0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data") / "zipf"))


def losses(run_dir: Path) -> dict:
    recs = [json.loads(l) for l in (run_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["lm_loss"] for r in recs if r.get("lm_loss") is not None}


def submit(env, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "submit", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def job_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "job.json").read_text())


def events(run_dir: Path) -> list:
    path = run_dir / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_two_node_training_job(slurm, slurm_env, data, tmp_path):
    run = tmp_path / "run"
    proc = submit(slurm_env, "--nodes", "2", "--gpus-per-node", "1", "--partition", slurm.partition,
                  "--time", "00:10:00", "--run-dir", str(run), *TRAIN, "--data-path", data,
                  "--pipeline-model-parallel-size", "2", "--train-iters", "6")
    rec = job_record(run)
    assert f"submitted job {rec['job_id']}" in proc.stdout and rec["elements"][0]["log"] in proc.stdout
    state = slurm.wait_job(rec["job_id"], timeout=240)
    log = Path(rec["elements"][0]["log"]).read_text()
    assert state == "COMPLETED", log[-4000:]
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]
    # one rank per emulated node, rendezvous at the first node's address on the job's port
    ev = events(run)
    port = 20000 + int(rec["job_id"]) % 12000
    assert any(f"start on n[1-2] (rendezvous 127.0.0.1:{port})" in e for e in ev), ev
    assert ev[-1].endswith("trainer exited with 0")
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    # comm_env.sh was sourced (nothing to export for a CPU job) and rank 0 printed the tuner's decisions
    assert (run / "comm_env.sh").is_file() and "could not decide" not in log
    assert "[megatron-llm comm] --overlap-grad-reduce=off [auto]: CPU (gloo) run" in log


def test_warning_signal_checkpoints_requeues_and_resumes(slurm, slurm_env, data, tmp_path):
    iters = 150
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "megatron_llm.cli", "train", "--nproc-per-node", "2", *TRAIN,
                    "--data-path", data, "--train-iters", str(iters), "--tensorboard-dir",
                    str(straight / "tensorboard")], env=slurm_env, check=True, capture_output=True, timeout=300)

    run = tmp_path / "run"
    submit(slurm_env, "--nodes", "1", "--gpus-per-node", "2", "--partition", slurm.partition, "--time", "00:10:00",
           "--signal-seconds", "120", "--max-restarts", "2", "--run-dir", str(run), *TRAIN, "--data-path", data,
           "--train-iters", str(iters))
    script = (run / "submit.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@120" in script and "#SBATCH --requeue" in script
    job = job_record(run)["job_id"]
    metrics = run / "tensorboard" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 10, 180, "10 iterations")
    # What Slurm sends --signal-seconds before the time limit (its timer fires on a ~30 s cycle, so the test sends
    # the same signal to the same place itself).
    slurm.run(["scancel", "--signal=USR1", "--batch", job])
    wait_for(lambda: any(e.endswith(" requeue") for e in events(run)), 120, "the job to requeue")
    state = slurm.wait_job(job, timeout=300)
    ev = events(run)
    assert state == "COMPLETED", ev
    # the ranks saved on the signal (exit 75, or a newer checkpoint when srun stopped the slower rank)
    assert any("restart=0" in e and ("trainer exited with 75" in e or "saved after the signal" in e) for e in ev), ev
    saved = sorted(int(p.name[5:]) for p in (run / "checkpoints").iterdir() if p.name.startswith("iter_"))
    assert len(saved) == 2 and 10 <= saved[0] < iters and saved[1] == iters  # on the signal, and at the end
    assert any("restart=1 start" in e for e in ev) and ev[-1].endswith("restart=1 trainer exited with 0")
    got, want = losses(run), losses(straight)
    # every iteration exactly once across the restart, and the same losses as the uninterrupted run
    assert sorted(got) == list(range(1, iters + 1))
    assert max(abs(got[k] - want[k]) / want[k] for k in want) <= 1e-5


def test_time_limit_warning_from_slurm_reaches_torchrun_ranks(slurm, slurm_env, data, tmp_path):
    """Slurm's own timer sends the warning (nobody calls scancel) to the batch shell, which relays it to the step:
    torchrun (one per node) survives it, the ranks save and stop, and --max-restarts 0 ends the job there."""
    run = tmp_path / "run"
    submit(slurm_env, "--nodes", "2", "--gpus-per-node", "1", "--launcher", "torchrun", "--partition",
           slurm.partition, "--time", "00:02:00", "--signal-seconds", "70", "--max-restarts", "0", "--run-dir",
           str(run), *TRAIN, "--data-path", data, "--train-iters", "100000")
    assert "#SBATCH --signal=B:USR1@70" in (run / "submit.sbatch").read_text()
    job = job_record(run)["job_id"]
    # Slurm checks on a ~30 s cycle and sends the warning at the first check within --signal-seconds + 30 s of
    # the limit (measured: 6-22 s after the start for 45 s before a 60 s limit): here 20-50 s after the start,
    # once the ranks run. The limit itself (120 s) must not be reached.
    state = slurm.wait_job(job, timeout=150)
    ev = events(run)
    assert any("got SIGUSR1" in e for e in ev), ev
    assert ev[-1].endswith("not requeued: --max-restarts 0 reached"), ev
    assert state == "FAILED"  # exit 75 with no requeue left; TIMEOUT would mean the ranks never stopped
    saved = (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip()
    assert sorted(losses(run)) == list(range(1, int(saved) + 1))  # saved at the iteration it stopped at
    assert slurm.run(["scontrol", "show", "job", job]).stdout.count("Restarts=0") == 1


def test_scancel_checkpoints_and_stays_cancelled(slurm, slurm_env, data, tmp_path):
    """scancel: Slurm sends SIGTERM to every process; the ranks save within KillWait, the job stays cancelled."""
    run = tmp_path / "run"
    submit(slurm_env, "--nodes", "1", "--gpus-per-node", "2", "--partition", slurm.partition, "--time", "00:10:00",
           "--run-dir", str(run), *TRAIN, "--data-path", data, "--train-iters", "100000")
    job = job_record(run)["job_id"]
    metrics = run / "tensorboard" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 120, "3 iterations")
    slurm.run(["scancel", job])
    wait_for(lambda: any("trainer exited" in e for e in events(run)), 60, "the ranks to stop")
    wait_for(lambda: "not requeued" in (events(run) or [""])[-1], 30, "the script to finish")
    ev = events(run)
    assert any("got SIGTERM" in e for e in ev) and "not requeued: ended by SIGTERM" in ev[-1], ev
    saved = int((run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
    assert saved == max(losses(run)) >= 3  # saved at the iteration where it stopped, within KillWait
    time.sleep(3)  # a requeue would have shown by now (it is immediate; only the restart waits)
    assert slurm.job_state(job) == "CANCELLED" and "Restarts=0" in slurm.run(["scontrol", "show", "job", job]).stdout


def test_array_of_two_runs(slurm, slurm_env, data, tmp_path):
    run = tmp_path / "sweep"
    proc = submit(slurm_env, "--nodes", "1", "--gpus-per-node", "1", "--partition", slurm.partition,
                  "--time", "00:10:00", "--run-dir", str(run), "--array", "lr=1e-3,2e-3", *TRAIN,
                  "--data-path", data, "--train-iters", "3")
    rec = job_record(run)
    assert "array of 2" in proc.stdout and len(rec["elements"]) == 2
    for el in rec["elements"]:
        assert slurm.wait_job(f"{rec['job_id']}_{el['index']}", timeout=240) == "COMPLETED", events(
            Path(el["run_dir"]))
    first_lr = {}
    for el in rec["elements"]:
        lines = [json.loads(l) for l in (Path(el["run_dir"]) / "tensorboard" / "metrics.jsonl").open()]
        assert [r["iteration"] for r in lines if "lm_loss" in r] == [1, 2, 3]
        first_lr[el["name"]] = lines[0]["lr"]  # warm-up of one iteration ends at the peak
    assert first_lr == {"lr1e-3": pytest.approx(1e-3), "lr2e-3": pytest.approx(2e-3)}

    jobs = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "jobs", "--json"], env=slurm_env,
                          capture_output=True, text=True, timeout=60, check=True)
    rows = {r["job_id"]: r for r in map(json.loads, jobs.stdout.splitlines())}
    assert {f"{rec['job_id']}_0", f"{rec['job_id']}_1"} <= set(rows)
    assert all(rows[f"{rec['job_id']}_{i}"]["iteration"] == 3 for i in (0, 1))


@pytest.mark.parametrize("case", ["unknown-partition", "layout", "no-sbatch"])
def test_bad_submissions_submit_nothing(case, slurm, slurm_env, data, tmp_path):
    before = set(slurm.job_ids())
    run = tmp_path / "run"
    args = ["--nodes", "1", "--gpus-per-node", "3", "--partition", slurm.partition, "--time", "00:10:00",
            "--run-dir", str(run), *TRAIN, "--data-path", data, "--train-iters", "2"]
    env = dict(slurm_env)
    if case == "unknown-partition":
        args[args.index("--partition") + 1] = "nosuchpartition"
        args[args.index("--gpus-per-node") + 1] = "1"
        expected = "--partition nosuchpartition: no such partition on this cluster; known: debug"
    elif case == "layout":
        args += ["--tensor-model-parallel-size", "2"]  # 1 node x 3 GPUs is not a multiple of TP 2 x PP 1
        expected = "is not divisible by --tensor-model-parallel-size 2"
    else:
        args[args.index("--gpus-per-node") + 1] = "1"
        env["PATH"] = str(Path(sys.executable).parent)  # python, but no Slurm client
        expected = "sbatch is not on PATH"
    proc = submit(env, *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert not run.exists()  # no script, no record
    assert set(slurm.job_ids()) == before


def test_topo_under_srun_reports_every_node_and_the_switch_tree(slurm, slurm_env, tmp_path):
    """`srun --ntasks-per-node=1 megatron-llm topo --json`: one report per node; the first task adds the
    allocation's nodes and the switch tree Slurm itself prints (`scontrol show topology`)."""
    p = slurm.run(["srun", "-N", "2", "--ntasks-per-node", "1", "-p", slurm.partition, "-t", "00:02:00",
                   sys.executable, "-m", "megatron_llm.cli", "topo", "--json"], env=slurm_env, timeout=120)
    reports = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 2, p.stdout + p.stderr
    alloc = [r["allocation"] for r in reports if "allocation" in r]
    assert len(alloc) == 1 and alloc[0]["nodes"] == ["n1", "n2"]
    assert alloc[0]["source"] == "scontrol show topology"
    switches = {s["name"]: s for s in alloc[0]["switches"]}
    assert switches["spine"]["switches"] == ["leaf0", "leaf1"] and switches["spine"]["level"] == 1
    assert switches["leaf1"]["nodes"] == ["n2"] and switches["leaf0"]["level"] == 0
