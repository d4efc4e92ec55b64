"""`megatron-llm jobs` without a Slurm controller: the registry written by submit plus what each run directory says
(events.log from the batch script, metrics.jsonl, the latest checkpoint marker)."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_llm.launch import jobs_cli, runs_registry


def _run(root: Path, name: str, events: list, iteration=None, ckpt=None) -> str:
    run = root / name
    (run / "tensorboard").mkdir(parents=True)
    (run / "events.log").write_text("".join(f"2026-01-01T00:00:00Z job=7 restart=0 {e}\n" for e in events))
    if iteration is not None:
        (run / "tensorboard" / "metrics.jsonl").write_text(json.dumps({"iteration": iteration}) + "\n")
    if ckpt is not None:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(f"{ckpt}\n")
    return str(run)


def test_jobs_lists_registered_runs_with_state_from_their_directories(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEGATRON_LLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no squeue: the run directories are all we have
    runs = {
        "7": _run(tmp_path, "done", ["start on n1", "trainer exited with 0"], iteration=20, ckpt=20),
        "8": _run(tmp_path, "requeued", ["start on n1", "got SIGUSR1: ...", "trainer exited with 75", "requeue"],
                  iteration=12, ckpt=12),
        "9": _run(tmp_path, "crashed", ["start on n1", "trainer exited with 1"], iteration=3),
        "10": str(tmp_path / "pending"),
        "11": _run(tmp_path, "cancelled", ["start on n1", "got SIGTERM: ...", "trainer exited with 75",
                                          "not requeued: ended by SIGTERM; sbatch this script again"]),
    }
    for job_id, run_dir in runs.items():
        runs_registry.register({"job_id": job_id, "job_name": "t", "run_dir": run_dir, "submitted": "now"})
    assert jobs_cli.main(["--json"]) == 0
    rows = {r["job_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert (rows["7"]["state"], rows["7"]["iteration"], rows["7"]["checkpoint"]) == ("COMPLETED", 20, 20)
    assert (rows["8"]["state"], rows["8"]["checkpoint"]) == ("REQUEUED", 12)
    assert rows["9"]["state"].startswith("FAILED") and rows["9"]["checkpoint"] is None
    assert rows["10"]["state"] == "NOT_STARTED" and rows["11"]["state"] == "TERMINATED"

    assert jobs_cli.main([]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["JOBID", "NAME", "STATE", "ITER", "CKPT"] and len(table) == 6


def test_a_torn_registry_line_hides_no_other_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEGATRON_LLM_HOME", str(tmp_path))
    runs_registry.register({"job_id": "1", "job_name": "a", "run_dir": str(tmp_path / "a"), "submitted": "x"})
    with open(runs_registry.registry_path(), "a") as f:
        f.write('{"job_id": "2", "job_na')  # a crash mid-append
    runs_registry.register({"job_id": "3", "job_name": "c", "run_dir": str(tmp_path / "c"), "submitted": "x"})
    assert [r["job_id"] for r in runs_registry.load()] == ["1", "3"]
