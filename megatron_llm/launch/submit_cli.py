"""`megatron-llm submit <train flags> --nodes N --gpus-per-node G --partition P --time HH:MM:SS [...]`

Checks everything it can before writing or submitting anything (the training flags for nodes x GPUs ranks, the
time format, sbatch on PATH, the partition), writes `<run-dir>/submit.sbatch` atomically, submits it with
`sbatch --parsable`, records the job in `<run-dir>/job.json` and in the runs registry (`megatron-llm jobs`), and
prints the job id and log paths. `--dry-run` writes the script only.

Each run keeps its checkpoints and tensorboard events in its run directory unless the flags say otherwise, and
`--load` defaults to `--save`, so a requeued job resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from megatron_llm.fileio import atomic_write_text
from megatron_llm.launch import runs_registry
from megatron_llm.launch.slurm_script import Element, SlurmJob, flag_value, render, time_limit_seconds

PROG = "megatron-llm submit"


class SubmitError(Exception):
    """A bad submission; the message names the argument and what to do. Nothing was submitted."""


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviated submit flag must never swallow a train flag (they pass through untouched)
    p = argparse.ArgumentParser(prog=PROG, description="Write and submit a Slurm batch job for a training run.",
                                allow_abbrev=False,
                                epilog="All other flags are `megatron-llm train` flags.")
    p.add_argument("--nodes", type=int, default=1, help="nodes to allocate")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (= ranks) per node")
    p.add_argument("--partition", required=True, help="Slurm partition")
    p.add_argument("--time", required=True, help="time limit, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--account", default=None, help="Slurm account to charge")
    p.add_argument("--container-image", default=None, help="run inside this image (pyxis/enroot srun flags)")
    p.add_argument("--container-mounts", default=None, help="pyxis mounts (default: the working directory)")
    p.add_argument("--launcher", choices=("srun", "torchrun"), default="srun",
                   help="srun: one task per GPU (default) | torchrun: one torchrun per node")
    p.add_argument("--signal-seconds", type=int, default=300,
                   help="send SIGUSR1 this long before the time limit: checkpoint, exit, requeue")
    p.add_argument("--max-restarts", type=int, default=3, help="stop requeueing after this many restarts")
    p.add_argument("--array", action="append", default=[], metavar="FLAG=V1,V2,...",
                   help="sweep a train flag over values; repeat for a grid; one run directory per element")
    p.add_argument("--run-dir", default=None, help="where the script, logs and runs go (default: runs/<name>-<time>)")
    p.add_argument("--job-name", default=None, help="Slurm job name (default: the recipe name or megatron-llm)")
    p.add_argument("--workdir", default=None, help="directory the job starts in (default: the current one)")
    p.add_argument("--python", default=None, help="interpreter on the nodes (default: the one running submit)")
    p.add_argument("--script", default=None, help="where to write the script (default: <run-dir>/submit.sbatch)")
    p.add_argument("--dry-run", action="store_true", help="write the script, do not submit")
    return p


def parse_array(specs: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """['lr=1e-4,3e-4', 'seed=1,2'] -> [('--lr', ['1e-4', '3e-4']), ('--seed', ['1', '2'])]."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise SubmitError(f"--array {spec!r}: expected FLAG=V1,V2,... (e.g. --array lr=1e-4,3e-4)")
        key, values = spec.split("=", 1)
        flag = "--" + key.strip().lstrip("-").replace("_", "-")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise SubmitError(f"--array {spec!r}: no values after '='")
        axes.append((flag, vals))
    return axes


def _without(args: List[str], flag: str) -> List[str]:
    """Drop a flag and its values (an override replaces it)."""
    out, skip = [], False
    for a in args:
        if skip and not a.startswith("--"):
            continue
        skip = False
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def build_elements(train_args: List[str], run_dir: str, axes) -> List[Element]:
    """One element per grid point; each gets its own directory and --save/--load/--tensorboard-dir there."""
    for flag in ("--save", "--load", "--tensorboard-dir"):
        if axes and flag_value(train_args, flag) is not None:
            raise SubmitError(f"{flag} with --array: every element needs its own directory; leave {flag} unset "
                              f"and each element uses <run-dir>/<element>/")
    points = list(itertools.product(*[[(f, v) for v in vals] for f, vals in axes])) if axes else [()]
    elements = []
    for i, point in enumerate(points):
        args = list(train_args)
        for flag, value in point:
            args = _without(args, flag) + [flag, value]
        name = "-".join(f"{f.lstrip('-')}{v}" for f, v in point)
        el_dir = os.path.join(run_dir, f"{i}-{_slug(name)}") if point else run_dir
        save = flag_value(args, "--save")
        if save is None:
            save = os.path.join(el_dir, "checkpoints")
            args += ["--save", save]
        if flag_value(args, "--load") is None:
            args += ["--load", save]  # a requeued job resumes from what it saved
        if flag_value(args, "--tensorboard-dir") is None:
            args += ["--tensorboard-dir", os.path.join(el_dir, "tensorboard")]
        elements.append(Element(name=name or "run", run_dir=el_dir, train_args=args))
    return elements


def validate_train_args(args: List[str], world: int, check_files: bool):
    """The same checks `megatron-llm train` makes, for nodes x GPUs ranks — before anything is submitted.
    Returns the run's config."""
    from megatron_llm.config.arguments import ConfigError, build_config, parse_run_args, validate
    from megatron_llm.data.input_checks import check_input_files

    try:
        parsed, values = parse_run_args(args, prog=f"{PROG} (train flags)")
        cfg = build_config(values, parsed.recipe)
        validate(cfg, world)
        if check_files:
            check_input_files(cfg, world)
    except ConfigError as e:
        raise SubmitError(f"{e} (world size = --nodes x --gpus-per-node = {world})") from None
    return cfg


def known_partitions() -> Optional[List[str]]:
    if shutil.which("sinfo") is None:
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SubmitError(f"sinfo failed (is the Slurm controller reachable?): {proc.stderr.strip()}")
    return sorted({line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()})


def check_cluster(partition: str) -> None:
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch is not on PATH: submit from a Slurm login node (or install the Slurm client), "
                          "or pass --dry-run to only write the script")
    parts = known_partitions()
    if parts is not None and partition not in parts:
        raise SubmitError(f"--partition {partition}: no such partition on this cluster; "
                          f"known: {', '.join(parts) or '(none)'}")


def submit(script_path: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SubmitError(f"sbatch refused {script_path}: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def main(argv: List[str]) -> int:
    opts, train_args = _parser().parse_known_args(argv)
    try:
        return _main(opts, train_args, argv)
    except SubmitError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _main(opts, train_args: List[str], argv: List[str]) -> int:
    if opts.nodes < 1 or opts.gpus_per_node < 1:
        raise SubmitError("--nodes and --gpus-per-node must be >= 1")
    if opts.max_restarts < 0 or opts.signal_seconds < 1:
        raise SubmitError("--max-restarts must be >= 0 and --signal-seconds >= 1")
    try:
        limit = time_limit_seconds(opts.time)
    except ValueError as e:
        raise SubmitError(f"--time {e}") from None
    if opts.signal_seconds >= limit:
        raise SubmitError(f"--signal-seconds {opts.signal_seconds} is not shorter than --time {opts.time}: the "
                          f"warning would come before the job starts")
    train_args = _without(train_args, "--nproc-per-node")  # ranks come from the allocation
    device = flag_value(train_args, "--device") or "cuda"
    axes = parse_array(opts.array)
    world = opts.nodes * opts.gpus_per_node

    name = opts.job_name or flag_value(train_args, "--recipe") or "megatron-llm"
    run_dir = os.path.abspath(opts.run_dir or os.path.join(
        "runs", f"{_slug(os.path.basename(name))}-{datetime.datetime.now():%Y%m%d-%H%M%S}"))
    elements = build_elements(train_args, run_dir, axes)
    configs = [validate_train_args(el.train_args, world, check_files=not opts.dry_run) for el in elements]
    if not opts.dry_run:
        check_cluster(opts.partition)

    job = SlurmJob(job_name=_slug(os.path.basename(name)), run_dir=run_dir, nodes=opts.nodes,
                   gpus_per_node=opts.gpus_per_node, partition=opts.partition, time=opts.time,
                   elements=elements, workdir=os.path.abspath(opts.workdir or os.getcwd()),
                   python=opts.python or sys.executable, account=opts.account,
                   container_image=opts.container_image, container_mounts=opts.container_mounts,
                   launcher=opts.launcher, device=device, signal_seconds=opts.signal_seconds,
                   max_restarts=opts.max_restarts,
                   # what submits this job again: without --dry-run and --script (where this copy was written)
                   submit_command=["megatron-llm", "submit", *_without(_without(argv, "--dry-run"), "--script")])
    from megatron_llm.launch.comm_env_script import write_comm_env

    for el, cfg in zip(elements, configs):  # sourced by the script before the ranks start
        write_comm_env(el.run_dir, cfg, job.python, world, opts.gpus_per_node, device)
    script = os.path.abspath(opts.script or os.path.join(run_dir, "submit.sbatch"))
    os.makedirs(os.path.dirname(script), exist_ok=True)
    atomic_write_text(script, render(job))
    os.chmod(script, 0o755)
    print(f"[megatron-llm submit] script: {script}")
    if opts.dry_run:
        print("[megatron-llm submit] dry run: not submitted; data and tokenizer files were not checked")
        return 0

    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)  # sbatch does not create the log directory
    job_id = submit(script)
    logs = [job.log_pattern.replace("%x", job.job_name).replace("%j", job_id).replace("%A", job_id)
            .replace("%a", str(i)) for i in range(len(elements))]
    record = {"job_id": job_id, "job_name": job.job_name, "run_dir": run_dir, "script": script,
              "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "elements": [{"index": i, "name": el.name, "run_dir": el.run_dir, "log": log}
                           for i, (el, log) in enumerate(zip(elements, logs))],
              "command": job.submit_command, "workdir": job.workdir}
    atomic_write_text(os.path.join(run_dir, "job.json"), json.dumps(record, indent=2) + "\n")
    runs_registry.register(record)
    print(f"[megatron-llm submit] submitted job {job_id}" + (f" (array of {len(elements)})" if job.is_array else ""))
    for el, log in zip(elements, logs):
        print(f"[megatron-llm submit]   {el.name}: run dir {el.run_dir}  log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
