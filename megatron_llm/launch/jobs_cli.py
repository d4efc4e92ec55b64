"""`megatron-llm jobs`: this user's submitted runs, their Slurm state, and how far each got.

State comes from `squeue` while Slurm still knows the job, else from the run's own events.log (written by the batch
script); progress from the run's metrics.jsonl and its latest checkpoint marker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

from megatron_llm.launch import runs_registry

PROG = "megatron-llm jobs"


def slurm_states() -> Optional[Dict[str, str]]:
    """Job id ('123' or '123_4' for array elements) -> state, for this user's jobs Slurm still holds."""
    if shutil.which("squeue") is None:
        return None
    proc = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-r", "-o", "%i|%T"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        return None
    states = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            job, state = line.strip().split("|", 1)
            states[job] = state
    return states


def _last_line(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
        return lines[-1] if lines else None
    except OSError:
        return None


def state_from_events(run_dir: str) -> str:
    last = _last_line(os.path.join(run_dir, "events.log"))
    if last is None:
        return "NOT_STARTED"
    if "trainer exited with 0" in last:
        return "COMPLETED"
    if last.endswith(" requeue"):
        return "REQUEUED"
    if "ended by SIGTERM" in last:
        return "TERMINATED"  # scancel, preemption or an unwarned time limit; checkpointed if KillWait allowed
    if "trainer exited with" in last or "refused" in last or "not requeued" in last:
        return "FAILED (" + last.split(" ", 3)[-1] + ")"
    return "RUNNING?"  # started, no end recorded (still running, or killed hard)


def progress(run_dir: str) -> Dict[str, Optional[int]]:
    last = _last_line(os.path.join(run_dir, "tensorboard", "metrics.jsonl"))
    iteration = None
    if last:
        try:
            iteration = json.loads(last).get("iteration")
        except json.JSONDecodeError:
            pass
    ckpt = None
    try:
        with open(os.path.join(run_dir, "checkpoints", "latest_checkpointed_iteration.txt")) as f:
            ckpt = int(f.read().strip())
    except (OSError, ValueError):
        pass
    return {"iteration": iteration, "checkpoint": ckpt}


def collect() -> List[Dict]:
    states = slurm_states() or {}
    rows = []
    for run in runs_registry.load():
        record_path = os.path.join(run["run_dir"], "job.json")
        try:
            with open(record_path) as f:
                elements = json.load(f)["elements"]
        except (OSError, ValueError, KeyError):
            elements = [{"index": 0, "name": "run", "run_dir": run["run_dir"]}]
        for el in elements:
            job = run["job_id"] if len(elements) == 1 else f"{run['job_id']}_{el['index']}"
            state = states.get(job) or states.get(run["job_id"]) or state_from_events(el["run_dir"])
            rows.append({"job_id": job, "name": f"{run['job_name']}/{el['name']}", "state": state,
                         **progress(el["run_dir"]), "run_dir": el["run_dir"]})
    return rows


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog=f"Runs are the ones `megatron-llm submit` recorded in $MEGATRON_LLM_HOME/runs.jsonl (default "
               f"~/.megatron_llm/runs.jsonl; now {runs_registry.registry_path()}); each run directory's job.json "
               f"holds the full record.")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    args = p.parse_args(argv)
    rows = collect()
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print(f"no runs submitted with megatron-llm submit (registry: {runs_registry.registry_path()})")
        return 0
    fmt = "{:<12} {:<32} {:<22} {:>9} {:>9}  {}"
    print(fmt.format("JOBID", "NAME", "STATE", "ITER", "CKPT", "RUN_DIR"))
    for r in rows:
        print(fmt.format(r["job_id"], r["name"][:32], r["state"][:22], str(r["iteration"] or "-"),
                         str(r["checkpoint"] if r["checkpoint"] is not None else "-"), r["run_dir"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
