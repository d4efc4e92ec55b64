"""Node loss under Slurm: a one-node `megatron-llm submit` job loses its node mid-run (that node's slurmd and every
process of the job SIGKILLed by PID). Slurm marks the node DOWN after SlurmdTimeout, requeues the job (--requeue in
the script's header), which then runs on the other node from its last checkpoint and completes.

Its own cluster (module scope): a short SlurmdTimeout, so the loss is noticed in seconds rather than minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster import LocalSlurmCluster, missing_binaries
from test_slurm_jobs import TRAIN, data, events, job_record, submit, wait_for  # noqa: F401 (data: fixture)

# slurmctld pings every SlurmdTimeout/3 s and sets a node DOWN once it has not answered for SlurmdTimeout s; the
# failed pings themselves wait up to MessageTimeout. Measured here, a slurmd killed to its node DOWN: 26 s with
# SlurmdTimeout=5 (MessageTimeout 10, the default), 17 s with both 5, 9.5 s with 2 and 4. Lower would risk the
# live node missing pings on a busy 2-core machine.
SLURMD_TIMEOUT = 5
MESSAGE_TIMEOUT = 5


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.fail(f"Slurm is not installed ({', '.join(missing)}): run `bash scripts/setup_slurm.sh` as root")
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"), extra_conf=[
        f"SlurmdTimeout={SLURMD_TIMEOUT}",
        f"MessageTimeout={MESSAGE_TIMEOUT}",
        "JobRequeue=1",  # Slurm's default, stated: a batch job whose node fails is requeued (with --requeue)
    ]).start()
    yield cluster
    cluster.stop()


def records(run_dir: Path) -> list:
    path = run_dir / "tensorboard" / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def job_field(slurm, job: str, key: str) -> str:
    out = slurm.run(["scontrol", "show", "job", "-o", job], check=False).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith(key + "=")), "")


def node_state(slurm, node: str) -> str:
    return slurm.run(["sinfo", "-h", "-n", node, "-o", "%T"], check=False).stdout.strip()


def test_node_loss_requeues_on_the_other_node_and_resumes(slurm, slurm_env, data, tmp_path):
    iters, interval = 24, 10  # killed 2 iterations past the first save, 8 before a second one could land
    run = tmp_path / "run"
    # the one rank sleeps 0.3 s per step: the job is surely mid-run, a checkpoint behind, when its node dies
    env = dict(slurm_env, MEGATRON_LLM_TEST_SLOW_RANK="0:0.3")
    submit(env, "--nodes", "1", "--gpus-per-node", "1", "--partition", slurm.partition, "--time", "00:10:00",
           "--run-dir", str(run), *TRAIN, "--data-path", data, "--train-iters", str(iters),
           "--save-interval", str(interval))
    assert "#SBATCH --requeue" in (run / "submit.sbatch").read_text()
    job = job_record(run)["job_id"]
    tracker = run / "checkpoints" / "latest_checkpointed_iteration.txt"

    def past_a_checkpoint():
        saved = int(tracker.read_text()) if tracker.exists() else 0
        logged = [r["iteration"] for r in records(run)]
        return saved if saved and logged and max(logged) >= saved + 2 else 0

    wait_for(past_a_checkpoint, 240, "a checkpoint and two iterations after it")
    node = job_field(slurm, job, "NodeList")
    assert node in slurm.nodes, node
    other = next(n for n in slurm.nodes if n != node)
    killed = slurm.kill_node(node, job)
    lost_at = time.monotonic()
    saved = int(tracker.read_text())
    before = {r["iteration"]: r["lm_loss"] for r in records(run) if r.get("lm_loss") is not None}
    assert killed and max(before) > saved < iters, (killed, before, saved)

    wait_for(lambda: node_state(slurm, node).startswith("down"), 120, f"{node} to be marked down")
    noticed = time.monotonic() - lost_at
    state = slurm.wait_job(job, timeout=300)
    ev = events(run)
    assert state == "COMPLETED", ev
    assert job_field(slurm, job, "Restarts") == "1" and job_field(slurm, job, "NodeList") == other
    # the batch script's second run: SLURM_RESTART_COUNT=1, on the other node; the first never got to say it ended
    assert any(f"restart=0 start on {node}" in e for e in ev), ev
    assert any(f"restart=1 start on {other}" in e for e in ev), ev
    assert ev[-1].endswith("restart=1 trainer exited with 0") and not any("restart=0 trainer exited" in e for e in ev)
    comp = (Path(slurm.root) / "logs" / "jobcomp.txt").read_text().splitlines()
    mine = [line for line in comp if f"JobId={job} " in line]
    assert any("JobState=NODE_FAIL" in line and f"NodeList={node}" in line for line in mine), mine
    assert any("JobState=COMPLETED" in line and f"NodeList={other}" in line for line in mine), mine

    # every iteration exactly once; those the dead run logged past its checkpoint were dropped and redone, with
    # the same losses (the resumed run continues from the checkpoint's state, not from scratch or from the end)
    got = [r for r in records(run) if r.get("lm_loss") is not None]
    assert [r["iteration"] for r in got] == list(range(1, iters + 1))
    after = {r["iteration"]: r["lm_loss"] for r in got}
    assert all(after[k] == before[k] for k in range(1, saved + 1))  # kept as logged before the loss
    redone = range(saved + 1, max(before) + 1)
    assert max(abs(after[k] - before[k]) / before[k] for k in redone) <= 1e-5, (before, after)
    print(f"node {node} lost after iteration {max(before)} (checkpoint {saved}); marked down in {noticed:.1f} s; "
          f"resumed on {other}")
