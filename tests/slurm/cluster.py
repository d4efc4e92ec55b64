"""A real Slurm cluster on this machine for the tests: slurmctld + one slurmd per emulated node, on loopback.

Facts this relies on (measured, ../shared/DESIGN.md section 8): auth/none needs no munge; several slurmd on one
host with `-N nodename` and per-node ports; requeue holds a job for cred_expire + 1 s; the daemons are stopped by
the PIDs we started, never by name.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", None)  # None: Slurm no longer knows the job


def _die_with_parent() -> None:
    """Runs in each daemon before exec: SIGTERM it when the test process dies, so a killed or crashed pytest
    (whose fixture teardown never runs) leaves no Slurm daemon behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def missing_binaries() -> List[str]:
    missing = [d for d in DAEMONS if not os.access(d, os.X_OK)]
    return missing + [c for c in CLIENTS if shutil.which(c) is None]


def _free_ports(n: int) -> List[int]:
    """n consecutive free ports (slurm.conf takes a node port range)."""
    for base in range(31000, 60000, 97):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + n))
    raise RuntimeError("no free port range for the test Slurm cluster")


class LocalSlurmCluster:
    def __init__(self, root: Path, nodes: int = 2, cpus_per_node: int = 4, partition: str = "debug",
                 extra_conf: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.extra_conf = list(extra_conf)  # slurm.conf lines a test adds (keys the default conf does not set)
        self.nodes = [f"n{i + 1}" for i in range(nodes)]
        self.cpus = cpus_per_node
        self.partition = partition
        self.conf = self.root / "slurm.conf"
        self.procs: Dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_conf(self) -> None:
        host = socket.gethostname()
        ports = _free_ports(len(self.nodes) + 1)
        for d in ("state", "spool", "logs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        node_ports = f"{ports[1]}-{ports[-1]}" if len(self.nodes) > 1 else str(ports[1])
        leaves = [f"SwitchName=leaf{i} Nodes={n}" for i, n in enumerate(self.nodes)]
        (self.root / "topology.conf").write_text("\n".join(
            leaves + [f"SwitchName=spine Switches=leaf[0-{len(self.nodes) - 1}]", ""]))
        self.conf.write_text("\n".join([
            "ClusterName=mllmtest",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={ports[0]}",
            "AuthType=auth/none",
            "CredType=cred/none",
            "AuthInfo=cred_expire=10",  # requeued jobs wait cred_expire + 1 s before they may start again
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/spool/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/logs/slurmctld.log",
            f"SlurmdLogFile={r}/logs/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",  # nodes may claim more CPUs than this machine has
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",  # stay on loopback
            "SchedulerParameters=sched_interval=1,bf_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=600",
            # SIGTERM to SIGKILL on scancel / time limit: the ranks checkpoint and the batch script logs and
            # decides in this window (Slurm's default; 5 s is too short on a busy 2-core machine)
            "KillWait=30",
            "InactiveLimit=0",
            "JobCompType=jobcomp/filetxt",
            # a switch tree (topology.conf beside slurm.conf): one leaf switch per node under one spine
            "TopologyPlugin=topology/tree",
            f"JobCompLoc={r}/logs/jobcomp.txt",
            *self.extra_conf,
            f"NodeName=n[1-{len(self.nodes)}] NodeHostname=localhost NodeAddr=127.0.0.1 Port={node_ports} "
            f"CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=n[1-{len(self.nodes)}] Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60.0) -> "LocalSlurmCluster":
        self.write_conf()
        log = open(self.root / "logs" / "daemons.out", "ab")
        self.procs["slurmctld"] = subprocess.Popen(
            ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env, stdout=log, stderr=log,
            start_new_session=True, preexec_fn=_die_with_parent)
        for n in self.nodes:
            (self.root / "spool" / n).mkdir(parents=True, exist_ok=True)
            self.procs[n] = subprocess.Popen(["/usr/sbin/slurmd", "-D", "-N", n, "-f", str(self.conf)],
                                             env=self.env, stdout=log, stderr=log, start_new_session=True,
                                             preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if len(states) == len(self.nodes) and all(s.startswith("idle") for s in states.values()):
                return self
            for name, p in self.procs.items():
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {self.root / 'logs'}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Slurm nodes not idle after {timeout}s: {out!r}; see {self.root / 'logs'}")

    def run(self, argv: List[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                              check=check, timeout=kw.pop("timeout", 60), **kw)

    def job_ids(self) -> List[str]:
        out = self.run(["squeue", "-h", "-t", "all", "-o", "%i"], check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def job_state(self, job_id: str) -> Optional[str]:
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return None

    def wait_job(self, job_id: str, timeout: float = 240.0, states=("COMPLETED", "FAILED", "CANCELLED",
                                                                     "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} still {state} after {timeout}s")

    def step_sockets(self) -> List[str]:
        """slurmstepd's sockets in the spool directories: one per job step still alive on a node."""
        found = []
        for path in (self.root / "spool").glob("*/*"):
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    found.append(str(path))
            except FileNotFoundError:
                pass
        return found

    def job_processes(self, job_id: str) -> List[int]:
        """PIDs of a job's processes on this machine: its slurmstepd (detached from slurmd, titled
        `slurmstepd: [JOB.step]`), everything below them, and any process whose environment names the job (a rank
        whose parent already died). For a one-node job these are exactly that node's job processes."""
        parent: Dict[int, int] = {}
        roots = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            pid = int(d.name)
            try:
                state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if state == "Z":
                    continue  # dead already, waiting to be reaped
                parent[pid] = int(ppid)
                if (d / "cmdline").read_bytes().startswith(f"slurmstepd: [{job_id}.".encode()):
                    roots.add(pid)
                elif f"SLURM_JOB_ID={job_id}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    roots.add(pid)
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile, or not ours to read
        found, todo = set(), list(roots)
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo += [c for c, pp in parent.items() if pp == pid]
        return sorted(found)

    def kill_node(self, node: str, job_id: str, timeout: float = 30.0) -> List[int]:
        """What losing a node does to a one-node job: SIGKILL that node's slurmd and every process of the job
        (by PID), then drop the step sockets the dead slurmstepd left in the node's spool directory. Returns the
        job PIDs killed."""
        d = self.procs[node]
        os.killpg(d.pid, signal.SIGKILL)
        d.wait()
        killed: List[int] = []
        deadline = time.monotonic() + timeout
        while True:  # again until nothing is left: a process may fork while we kill
            pids = [p for p in self.job_processes(job_id) if p != os.getpid()]
            if not pids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} processes {pids} survive SIGKILL")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for path in (self.root / "spool" / node).glob("*"):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        return sorted(set(killed))

    def stop(self, timeout: float = 90.0) -> None:
        # slurmstepd detaches from slurmd: end every job and wait for its steps before stopping the daemons, or
        # they (and the ranks) outlive the cluster. A job may requeue itself while being cancelled, so cancel
        # again until nothing is live.
        leftover: List[str] = []
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                live = [j for j in self.job_ids() if self.job_state(j) not in FINISHED]
                leftover = self.step_sockets()
                if not live and not leftover:
                    break
                if live:
                    self.run(["scancel", *live], check=False)
                time.sleep(1.0)
        for name, p in list(self.procs.items())[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if leftover:
            raise RuntimeError(f"job steps still alive after the cluster stopped (their slurmstepd sockets: "
                               f"{leftover}); see {self.root / 'logs'}")
