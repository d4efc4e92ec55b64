"""The sbatch script and the Slurm environment bridge, without a cluster: the script runs under bash with stand-in
`srun` / `scontrol` commands that record what they were given (tests/slurm runs it on a real cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_llm.launch import slurm_env
from megatron_llm.launch.slurm_script import Element, SlurmJob, render, time_limit_seconds
from megatron_llm.launch.submit_cli import SubmitError, build_elements, parse_array

ROOT = Path(__file__).resolve().parents[2]


def test_examples_in_scripts_slurm_are_what_submit_writes(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from generate_slurm_examples import generate

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        fresh = generate(str(tmp_path))
    finally:
        os.chdir(cwd)
    assert len(fresh) >= 2
    for name, text in fresh.items():
        committed = (ROOT / "scripts" / "slurm" / name).read_text()
        assert committed == text, f"scripts/slurm/{name} is stale: run python tools/generate_slurm_examples.py"
    big = fresh["baichuan-7b-16x8.sbatch"]
    assert "#SBATCH --nodes=16" in big and "#SBATCH --gpus-per-node=8" in big and "--recipe baichuan-7b" in big


def test_time_limits():
    assert time_limit_seconds("00:30:00") == 1800
    assert time_limit_seconds("2-01:00:05") == 2 * 86400 + 3605
    for bad in ("30", "1:2:3", "00:61:00", "1-2:00"):
        with pytest.raises(ValueError):
            time_limit_seconds(bad)


def test_bridge_maps_slurm_task_variables():
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
           "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_ID": "123456", "SLURM_CPUS_PER_TASK": "12",
           "MASTER_ADDR": "10.1.2.3"}
    assert slurm_env.bridge(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("9", "16", "1", "8")
    assert env["MASTER_ADDR"] == "10.1.2.3"  # the batch script's choice is kept
    assert env["MASTER_PORT"] == str(20000 + 123456 % 12000) and env["OMP_NUM_THREADS"] == "12"


@pytest.mark.parametrize("env", [
    {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"},  # the batch shell itself (no step)
    {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"},  # `srun -n1 megatron-llm train --nproc..`
    {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0", "RANK": "5"},  # torchrun inside srun
])
def test_bridge_leaves_other_launches_alone(env):
    before = dict(env)
    assert not slurm_env.bridge(env)
    assert env == before


def test_array_grid_and_per_element_directories(tmp_path):
    axes = parse_array(["lr=1e-4,3e-4", "seed=1,2,3"])
    els = build_elements(["--lr", "1e-3", "--train-iters", "10"], str(tmp_path), axes)
    assert len(els) == 6 and len({e.run_dir for e in els}) == 6
    first = els[0].train_args
    assert first.count("--lr") == 1 and first[first.index("--lr") + 1] == "1e-4"  # the sweep value replaces
    assert first[first.index("--save") + 1] == first[first.index("--load") + 1] == els[0].checkpoint_dir
    assert els[0].checkpoint_dir.startswith(els[0].run_dir)
    with pytest.raises(SubmitError, match="--save with --array"):
        build_elements(["--save", "/x"], str(tmp_path), axes)
    with pytest.raises(SubmitError, match="expected FLAG=V1,V2"):
        parse_array(["lr"])


def _job(tmp_path, **kw) -> SlurmJob:
    run = str(tmp_path / "run")
    args = ["--num-layers", "2", "--save", f"{run}/ckpt", "--data-path", "0.3", "a b", "0.7", "c"]
    base = dict(job_name="t", run_dir=run, nodes=2, gpus_per_node=4, partition="p", time="01:00:00",
                elements=[Element("run", run, args)], workdir=str(tmp_path), python="python3", max_restarts=2)
    base.update(kw)
    return SlurmJob(**base)


def _stubs(tmp_path: Path, srun_exit: int) -> Path:
    """srun and scontrol stand-ins that log their arguments and the rendezvous environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    # STUB_SIGNAL: Slurm signals the batch shell (this stub's parent) while the step runs. On USR1 the shell must
    # relay it to the step, whose ranks then save and exit 75; on TERM Slurm has signalled the ranks itself.
    (bin_dir / "srun").write_text(
        f"#!/bin/bash\necho \"srun $* | MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT "
        f"LAUNCHER=$MEGATRON_LLM_LAUNCHER\" >> {log}\n"
        "case \"${STUB_SIGNAL:-}\" in\n"
        f"  USR1) sleep 30 & SLEEP=$!; trap 'echo \"srun got USR1\" >> {log}; kill $SLEEP; exit 75' USR1\n"
        "        kill -s USR1 $PPID; wait $SLEEP; exit 1 ;;\n"
        "  TERM) kill -s TERM $PPID; sleep 0.3; exit 75 ;;\n"
        f"  WAIT) sleep 30 & SLEEP=$!; trap 'echo \"srun got USR1\" >> {log}; kill $SLEEP; exit 75' USR1\n"
        "        wait $SLEEP; exit 1 ;;\n"
        "esac\n"
        f"exit {srun_exit}\n")
    (bin_dir / "scontrol").write_text(
        "#!/bin/bash\n"
        f"echo \"scontrol $*\" >> {log}\n"
        "case \"$1 $2\" in\n"
        "  'show hostnames') if [ -n \"${STUB_MARK:-}\" ]; then touch \"$STUB_MARK\"; sleep 1; fi\n"
        "                    echo node007; echo node008 ;;\n"
        "  'show node') echo \"NodeName=$4 Arch=x86_64 NodeAddr=10.0.0.7 NodeHostName=$4\" ;;\n"
        "esac\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _run_script(tmp_path, job, srun_exit, restart=None, signal_batch=""):
    script = tmp_path / "job.sbatch"
    script.write_text(render(job))
    env = dict(os.environ, PATH=f"{_stubs(tmp_path, srun_exit)}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node[007-008]", STUB_SIGNAL=signal_batch)
    if restart is not None:
        env["SLURM_RESTART_COUNT"] = str(restart)
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls.log").read_text().splitlines() if (tmp_path / "calls.log").exists() else []
    events = (Path(job.run_dir) / "events.log").read_text().splitlines()
    return proc, calls, events


def test_script_launches_one_rank_per_gpu_with_the_rendezvous(tmp_path):
    proc, calls, events = _run_script(tmp_path, _job(tmp_path), srun_exit=0)
    assert proc.returncode == 0, proc.stderr
    srun = next(c for c in calls if c.startswith("srun"))
    assert "--ntasks-per-node=4 python3 -m megatron_llm.cli train --num-layers 2" in srun
    assert "--data-path 0.3 a b 0.7 c" in srun  # a value with a space survives as one word (echo joins)
    assert "MASTER_ADDR=10.0.0.7 MASTER_PORT=24242 LAUNCHER=srun" in srun  # first node's address, port from id
    assert events[-1].endswith("trainer exited with 0") and not any("requeue" in c for c in calls)


def test_script_requeues_on_exit_75_until_max_restarts(tmp_path):
    proc, calls, events = _run_script(tmp_path, _job(tmp_path), srun_exit=75, restart=1)
    assert proc.returncode == 0 and "scontrol requeue 4242" in calls and events[-1].endswith("requeue")

    again = tmp_path / "again"
    again.mkdir()
    proc, calls, events = _run_script(again, _job(again), srun_exit=75, restart=2)
    assert proc.returncode == 75 and "scontrol requeue 4242" not in calls
    assert events[-1].endswith("not requeued: --max-restarts 2 reached")

    crash = tmp_path / "crash"
    crash.mkdir()
    proc, calls, events = _run_script(crash, _job(crash), srun_exit=1, restart=0)
    assert proc.returncode == 1 and "scontrol requeue 4242" not in calls  # a crash is not requeued: no loop


def test_the_warning_is_relayed_to_the_step_and_requeues(tmp_path):
    proc, calls, events = _run_script(tmp_path, _job(tmp_path), srun_exit=0, restart=0, signal_batch="USR1")
    assert proc.returncode == 0 and "srun got USR1" in calls and "scontrol requeue 4242" in calls
    assert "got SIGUSR1" in events[-3] and events[-2].endswith("trainer exited with 75") and events[-1].endswith(
        "requeue")


def test_a_warning_before_the_launch_reaches_the_step(tmp_path):
    """Slurm may send the warning up to a check cycle (~30 s) early: here it lands while the script is still
    finding the rendezvous host, and the ranks must get it once they are launched."""
    job = _job(tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(render(job))
    mark = tmp_path / "in-rendezvous"
    env = dict(os.environ, PATH=f"{_stubs(tmp_path, 0)}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node[007-008]", STUB_SIGNAL="WAIT", STUB_MARK=str(mark))
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while not mark.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    events = (Path(job.run_dir) / "events.log").read_text().splitlines()
    assert proc.returncode == 0, err
    assert "got SIGUSR1" in events[0] and "start on" in events[1]  # warned first, launched after
    assert "srun got USR1" in calls and "scontrol requeue 4242" in calls and events[-1].endswith("requeue")


def test_sigterm_ends_the_job_without_requeue(tmp_path):
    # scancel / preemption / an unwarned time limit: the ranks save on Slurm's SIGTERM; Slurm decides what follows
    proc, calls, events = _run_script(tmp_path, _job(tmp_path), srun_exit=0, restart=0, signal_batch="TERM")
    assert proc.returncode == 75 and "scontrol requeue 4242" not in calls and "srun got USR1" not in calls
    assert "got SIGTERM" in events[-3] and "not requeued: ended by SIGTERM" in events[-1]


def test_script_refuses_to_start_past_max_restarts(tmp_path):
    proc, calls, events = _run_script(tmp_path, _job(tmp_path), srun_exit=0, restart=3)
    assert proc.returncode == 1 and not any(c.startswith("srun") for c in calls)
    assert "refused: already restarted 3 times (--max-restarts 2)" in events[-1]


def test_torchrun_mode_and_container(tmp_path):
    job = _job(tmp_path, launcher="torchrun", container_image="nvcr.io/nvidia/pytorch:25.01-py3")
    text = render(job)
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=4" in text
    proc, calls, _ = _run_script(tmp_path, job, srun_exit=0)
    srun = next(c for c in calls if c.startswith("srun"))
    assert "--container-image=nvcr.io/nvidia/pytorch:25.01-py3" in srun
    assert "--ntasks-per-node=1 python3 -m megatron_llm.launch.slurm_torchrun --nnodes 2 --nproc-per-node 4" in srun
    assert "--rdzv-endpoint 10.0.0.7:24242 --rdzv-id 4242" in srun
    # the warning goes to the step as SIGUSR1 (srun relays it to every process; our torchrun ignores it); SIGTERM
    # to srun would abort the step (measured on Slurm 22.05: "srun: forcing job termination", ranks unsaved)
    assert 'kill -s USR1 "$STEP"' in text and 'kill -s TERM' not in text


def test_cpu_jobs_ask_for_tasks_not_gpus(tmp_path):
    text = render(_job(tmp_path, device="cpu"))
    assert "#SBATCH --ntasks-per-node=4" in text and "--gpus-per-node" not in text


def test_save_given_as_flag_equals_value_is_the_checkpoint_dir(tmp_path):
    (el,) = build_elements(["--save=/ckpt/here"], str(tmp_path), [])
    assert el.checkpoint_dir == "/ckpt/here"  # what the script watches to tell a save on the signal
    assert el.train_args[el.train_args.index("--load") + 1] == "/ckpt/here"
