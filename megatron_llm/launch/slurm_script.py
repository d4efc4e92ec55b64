"""Render the sbatch script of a training run: readable, self-contained, and the same for the same inputs.

What the script does, in order: pick this array element's run directory and flags; refuse to start past
--max-restarts; export the rendezvous (first host of the allocation, a port derived from the job id); source the
run's communication settings if the topology tuner wrote them; launch one rank per GPU with srun (or one torchrun
per node); relay the time-limit warning (SIGUSR1, sent --signal-seconds before the limit, to this shell only) to
the ranks, which checkpoint and exit with status 75; then requeue the job, which resumes from that checkpoint. On
SIGTERM (scancel, preemption, a time limit reached unwarned) Slurm signals the ranks itself; they checkpoint within
KillWait, and the script does not requeue the job (Slurm requeues preempted jobs itself; cancelled ones stay so).
With --launcher torchrun, torchrun ignores the warning (Slurm delivers it to the ranks directly) and stops the
remaining local ranks once one exits; on SIGTERM it gives them 30 s (its fixed shutdown timeout) before SIGKILL.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_llm.launch.slurm_env import LAUNCHER_ENV, MASTER_PORT_BASE, MASTER_PORT_SPAN
from megatron_llm.exit_codes import EXIT_CODE_REQUEUE

TIME_RE = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")


def time_limit_seconds(limit: str) -> int:
    """'HH:MM:SS' or 'D-HH:MM:SS' -> seconds; ValueError otherwise."""
    m = TIME_RE.match(limit)
    if not m or int(m.group(3)) > 59 or int(m.group(4)) > 59:
        raise ValueError(f"{limit!r} is not HH:MM:SS or D-HH:MM:SS")
    days, h, mins, s = (int(g or 0) for g in m.groups())
    return ((days * 24 + h) * 60 + mins) * 60 + s


def flag_value(args: List[str], flag: str) -> Optional[str]:
    """The value of `flag` in an argument list (`--flag V` or `--flag=V`), or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


@dataclass
class Element:
    """One run: its directory and the full `megatron-llm train` flags (one per array element)."""
    name: str
    run_dir: str
    train_args: List[str]

    @property
    def checkpoint_dir(self) -> str:
        return flag_value(self.train_args, "--save") or ""


@dataclass
class SlurmJob:
    job_name: str
    run_dir: str  # the submission's directory: script, logs, job record (elements may live below it)
    nodes: int
    gpus_per_node: int
    partition: str
    time: str
    elements: List[Element]
    workdir: str  # the job starts here, so relative paths in the flags mean what they meant at submit time
    python: str = "python3"
    account: Optional[str] = None
    container_image: Optional[str] = None
    container_mounts: Optional[str] = None
    launcher: str = "srun"  # "srun": one task per GPU | "torchrun": one torchrun per node
    device: str = "cuda"
    signal_seconds: int = 300
    max_restarts: int = 3
    submit_command: List[str] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        return len(self.elements) > 1

    @property
    def log_pattern(self) -> str:
        return f"{self.run_dir}/logs/%x-%A_%a.out" if self.is_array else f"{self.run_dir}/logs/%x-%j.out"


def _q(args: List[str]) -> str:
    # "$VAR" words are expanded when the script runs (rendezvous variables); everything else is literal.
    return " ".join(f'"{a}"' if a.startswith("$") or ":$" in a else shlex.quote(a) for a in args)


def _sbatch_header(job: SlurmJob) -> List[str]:
    tasks_per_node = job.gpus_per_node if job.launcher == "srun" else 1
    lines = [
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --partition={job.partition}",
        f"#SBATCH --nodes={job.nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
    ]
    if job.device == "cuda":
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    lines += [f"#SBATCH --time={job.time}"]
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    lines += [
        # no --error: stderr joins stdout, so a rank's traceback stays next to the lines before it
        f"#SBATCH --output={job.log_pattern}",
        "#SBATCH --open-mode=append",  # a requeued job appends to its log instead of overwriting it
        # B: the warning goes to this batch shell, which forwards it to the trainer (see forward() below)
        f"#SBATCH --signal=B:USR1@{job.signal_seconds}",
        "#SBATCH --requeue",
    ]
    if job.is_array:
        lines.append(f"#SBATCH --array=0-{len(job.elements) - 1}")
    return lines


def default_mounts(job: SlurmJob) -> str:
    """The working directory and the run directory (checkpoints, logs), at the same paths inside the image."""
    dirs = [job.workdir]
    if not (job.run_dir + "/").startswith(job.workdir.rstrip("/") + "/"):
        dirs.append(job.run_dir)
    return ",".join(f"{d}:{d}" for d in dirs)


def _launch_command(job: SlurmJob) -> List[str]:
    srun = ["srun", "--kill-on-bad-exit=1"]
    if job.container_image:
        srun += [f"--container-image={job.container_image}", f"--container-workdir={job.workdir}"]
        srun += [f"--container-mounts={job.container_mounts or default_mounts(job)}"]
    python = "python3" if job.container_image else job.python  # inside a container: the image's interpreter
    if job.launcher == "srun":
        return srun + [f"--ntasks-per-node={job.gpus_per_node}", python, "-m", "megatron_llm.cli", "train"]
    # torchrun per node (ours ignores the SIGUSR1 that Slurm also delivers to it: see slurm_torchrun.py); the c10d
    # rendezvous needs no node rank (which only exists inside each task)
    return srun + ["--ntasks-per-node=1", python, "-m", "megatron_llm.launch.slurm_torchrun", "--nnodes",
                   str(job.nodes),
                   "--nproc-per-node", str(job.gpus_per_node), "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", "$MASTER_ADDR:$MASTER_PORT", "--rdzv-id", "$SLURM_JOB_ID",
                   "-m", "megatron_llm.cli", "train"]


def render(job: SlurmJob) -> str:
    if job.launcher not in ("srun", "torchrun"):
        raise ValueError(f"launcher must be srun or torchrun, not {job.launcher!r}")
    out = ["#!/bin/bash"]
    out += _sbatch_header(job)
    out += [
        "#",
        "# Written by `megatron-llm submit`; re-create (and resubmit) with:",
        f"#   cd {shlex.quote(job.workdir)} && {_q(job.submit_command)}" if job.submit_command else "#",
        "set -uo pipefail",
        f"cd {shlex.quote(job.workdir)}",
        f"MAX_RESTARTS={job.max_restarts}",
        f"REQUEUE_EXIT={EXIT_CODE_REQUEUE}  # the trainer saved a checkpoint on a signal: requeue and resume",
        "",
        'case "${SLURM_ARRAY_TASK_ID:-0}" in',
    ]
    for i, el in enumerate(job.elements):
        out.append(f"  {i})  # {el.name}")
        out.append(f"    RUN_DIR={shlex.quote(el.run_dir)}")
        out.append(f"    CKPT_DIR={shlex.quote(el.checkpoint_dir)}")
        out.append("    TRAIN_ARGS=(")
        args = el.train_args
        k = 0
        while k < len(args):  # one flag and its values per line
            j = k + 1
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            out.append(f"      {_q(args[k:j])}")
            k = j
        out.append("    ) ;;")
    out += [
        '  *) echo "no array element ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        'mkdir -p "$RUN_DIR"',
        'RESTARTS=${SLURM_RESTART_COUNT:-0}',
        'event() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) job=${SLURM_JOB_ID} restart=${RESTARTS} $*" '
        '>> "$RUN_DIR/events.log"; }',
        'if [ "$RESTARTS" -gt "$MAX_RESTARTS" ]; then',
        '  event "refused: already restarted $RESTARTS times (--max-restarts $MAX_RESTARTS)"',
        "  exit 1",
        "fi",
        "",
        "# The time-limit warning (--signal=B:USR1) reaches this shell only: relay it to the step, where srun hands",
        "# it to every process (the ranks; with torchrun, torchrun and its ranks). The ranks save a checkpoint at the",
        "# next iteration boundary and exit with REQUEUE_EXIT. It is repeated every 5 s until the step ends, for",
        "# ranks that were still starting (a repeat is harmless). SIGTERM (time limit, scancel, preemption) is not",
        "# relayed: Slurm sends it to every process of every step itself, and SIGTERM makes srun abort the step.",
        'latest() { cat "$CKPT_DIR/latest_checkpointed_iteration.txt" 2>/dev/null || echo none; }',
        "STEP= RELAY= WARNED= TERMINATED= SIGNALLED_AT=",
        'relay() { while sleep 5 && kill -s USR1 "$STEP" 2>/dev/null; do :; done; }  # the repeats',
        'start_relay() { if [ -z "$RELAY" ]; then relay </dev/null >/dev/null 2>&1 & RELAY=$!; fi; }',
        "stop_requested() {",
        '  event "got SIG$1: $2"',
        '  SIGNALLED_AT=${SIGNALLED_AT:-$(latest)}',
        "}",
        "on_usr1() {",
        '  stop_requested USR1 "asking the trainer to checkpoint and stop"',
        "  WARNED=1",
        '  if [ -n "$STEP" ]; then kill -s USR1 "$STEP" 2>/dev/null; fi',
        '  if [ -n "$STEP" ]; then start_relay; fi',
        "}",
        "trap on_usr1 USR1",
        """trap 'TERMINATED=1; stop_requested TERM "Slurm is ending the job; the ranks got SIGTERM too"' TERM""",
        "",
        "# Rendezvous: the first host of the allocation, a port derived from the job id.",
        'FIRST_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "MASTER_ADDR=$(scontrol show node -o \"$FIRST_HOST\" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)",
        'export MASTER_ADDR=${MASTER_ADDR:-$FIRST_HOST}',
        f"export MASTER_PORT=$(( {MASTER_PORT_BASE} + SLURM_JOB_ID % {MASTER_PORT_SPAN} ))",
        f"export {LAUNCHER_ENV}={job.launcher}",
        "# Communication settings (NCCL, buffers) the topology tuner wrote for this run, if any.",
        'if [ -f "$RUN_DIR/comm_env.sh" ]; then . "$RUN_DIR/comm_env.sh"; fi',
        "",
        f"LAUNCH=({_q(_launch_command(job))})",
        "",
        'event "start on $SLURM_JOB_NODELIST (rendezvous $MASTER_ADDR:$MASTER_PORT)"',
        '"${LAUNCH[@]}" "${TRAIN_ARGS[@]}" &',
        "STEP=$!",
        "# warned before the launch: the first repeat comes once srun is up (before that, SIGUSR1 would kill it)",
        'if [ -n "$WARNED" ]; then start_relay; fi',
        "# bash runs a trap only when `wait` returns early; keep waiting until the step has really ended.",
        'while :; do wait "$STEP"; kill -0 "$STEP" 2>/dev/null || break; done',
        'wait "$STEP"; RC=$?',
        'if [ -n "$RELAY" ]; then kill "$RELAY" 2>/dev/null; fi',
        'event "trainer exited with $RC"',
        "# srun --kill-on-bad-exit stops the other ranks when the first one exits with REQUEUE_EXIT, so the step's",
        "# status may be theirs: a checkpoint newer than the one at the signal is what says the ranks saved.",
        'if [ -n "$SIGNALLED_AT" ] && [ "$RC" -ne 0 ] && [ "$(latest)" != "$SIGNALLED_AT" ]; then',
        '  event "checkpoint $(latest) saved after the signal"',
        "  RC=$REQUEUE_EXIT",
        "fi",
        'if [ "$RC" -eq "$REQUEUE_EXIT" ]; then',
        "  # SIGTERM means Slurm is ending the job (scancel, a time limit reached without the warning, preemption;",
        "  # the job state cannot tell them apart while it completes). Slurm decides whether it comes back: it",
        "  # requeues preempted jobs itself (--requeue), a cancelled job stays cancelled.",
        '  if [ -n "$TERMINATED" ]; then',
        '    event "not requeued: ended by SIGTERM; sbatch this script again to resume from the checkpoint"',
        '  elif [ "$RESTARTS" -lt "$MAX_RESTARTS" ]; then',
        '    event "requeue"',
        '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
        '    event "scontrol requeue failed"',
        "  else",
        '    event "not requeued: --max-restarts $MAX_RESTARTS reached"',
        "  fi",
        "fi",
        'exit "$RC"',
        "",
    ]
    return "\n".join(out)
