"""launch/forked_rank.py: CPU ranks forked from the launcher after their module's preload, else spawned.

One launcher process (single-threaded, as `megatron-llm train` is) runs a 2-rank module five ways: forked and exiting
normally, forked and killed by SIGKILL, forked and ending with SystemExit("message"); then without a preload hook, and
with the launcher running a second thread, where the ranks must be spawned. A forked rank must look like a spawned
one: its own RANK, OMP_NUM_THREADS applied to torch (torch read the launcher's value when the launcher imported it),
a line printed before a SIGKILL not lost in a buffer, non-daemon threads joined before atexit handlers run, and the
exit status the launcher reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RANK_MODULE = textwrap.dedent("""
    import atexit, json, os, sys, threading, time
    PRELOADED = []  # filled by preload: a forked rank inherits it, a spawned one starts empty

    def preload(argv):
        import torch  # noqa: F401  (the launcher imports it once)
        PRELOADED.append(os.getpid())

    def main(argv):
        import torch
        out, mode = argv
        rank = int(os.environ["RANK"])
        os.makedirs(out, exist_ok=True)
        rec = {"pid": os.getpid(), "ppid": os.getppid(), "preloaded_by": PRELOADED, "world": os.environ["WORLD_SIZE"],
               "threads": torch.get_num_threads()}
        with open(f"{out}/rank_{rank}.json", "w") as f:
            json.dump(rec, f)

        def late():  # a non-daemon thread still running when main returns
            time.sleep(0.5)
            open(f"{out}/thread_{rank}", "w").close()
        threading.Thread(target=late).start()
        atexit.register(lambda: open(f"{out}/atexit_{rank}", "w").write(str(os.path.exists(f"{out}/thread_{rank}"))))
        print(f"rank {rank} of {mode} says hello")  # no flush: a spawned rank is unbuffered (PYTHONUNBUFFERED)
        if rank == 1 and mode == "kill":
            os.kill(os.getpid(), 9)
        if rank == 1 and mode == "message":
            raise SystemExit("rank 1: this layout does not fit")
        return 0

    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
""")

LAUNCHER = textwrap.dedent("""
    import json, os, sys, threading, time
    from megatron_llm.launch.local import run_workers
    out = sys.argv[1]
    result = {"launcher": os.getpid()}
    for mode, module in (("normal", "rank_mod"), ("kill", "rank_mod"), ("message", "rank_mod"),
                         ("no-preload", "plain_mod"), ("threaded", "rank_mod")):
        if mode == "threaded":  # e.g. a program that embeds the launcher: forking it could copy a held lock
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        result[mode] = run_workers(module, [f"{out}/{mode}", mode], 2, cpu=True, grace_s=5)
    print(json.dumps(result), flush=True)
""")


def test_cpu_ranks_are_forked_after_preload_and_behave_like_spawned_ones(tmp_path):
    (tmp_path / "rank_mod.py").write_text(RANK_MODULE)
    (tmp_path / "plain_mod.py").write_text("import sys\nfrom rank_mod import main\n\n"
                                           "if __name__ == '__main__':\n    sys.exit(main(sys.argv[1:]))\n")
    # the launcher as `megatron-llm train | tee log` runs it: stdout a pipe, block-buffered; torch on all cores
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "PYTHONUNBUFFERED", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    launcher = result["launcher"]
    assert (result["normal"], result["kill"], result["message"], result["no-preload"], result["threaded"]) == (
        0, -9, 1, 0, 0), result
    # worker_env: 2 ranks share the cores; the launcher's torch has all of them (OMP_NUM_THREADS unset)
    threads = max(1, (os.cpu_count() or 1) // 2)

    def ranks(mode, which=(0, 1)):
        return [json.loads((tmp_path / mode / f"rank_{r}.json").read_text()) for r in which]

    # rank 1 ends first in "kill" and "message"; rank 0 may be stopped by the launcher before it writes anything
    for mode, which in (("normal", (0, 1)), ("kill", (1,)), ("message", (1,))):
        recs = ranks(mode, which)
        assert all(r["ppid"] == launcher and set(r["preloaded_by"]) == {launcher} for r in recs), recs  # forked
        assert all(r["world"] == "2" and r["threads"] == threads for r in recs), recs
        assert f"rank 1 of {mode} says hello" in proc.stdout
    assert len({r["pid"] for r in ranks("normal")}) == 2 and "rank 0 of normal says hello" in proc.stdout
    for mode in ("no-preload", "threaded"):
        recs = ranks(mode)
        assert all(r["ppid"] == launcher and r["preloaded_by"] == [] for r in recs), recs  # spawned
        assert all(r["threads"] == threads for r in recs), recs
    # an interpreter's exit: threads joined, then the atexit handlers (which saw the thread's file); none after SIGKILL
    for mode, r in (("normal", 0), ("normal", 1), ("message", 1), ("no-preload", 0), ("no-preload", 1)):
        assert (tmp_path / mode / f"atexit_{r}").read_text() == "True", (mode, r)
    assert not (tmp_path / "kill" / "atexit_1").exists()
    assert "rank 1: this layout does not fit" in proc.stderr
