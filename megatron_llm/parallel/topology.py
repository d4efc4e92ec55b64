"""Discover what a node (and, under Slurm, the allocation) is made of: GPUs and their NVLink/NVSwitch or PCIe
connectivity, NUMA affinity, InfiniBand/RoCE HCAs and link rates, network interfaces, nodes and switch tree.

Sources, in order of preference: NVML (nvidia-ml-py) for GPUs and NVLink; `nvidia-smi topo -m` as a fallback and
for the GPU-to-HCA PCIe distances; /sys/class/infiniband, /sys/class/net and /proc/net/route; Slurm's
`scontrol show topology` (or topology.conf) and SLURM_JOB_NODELIST. Everything here is torch-free (login nodes,
the batch shell) and every reader takes its root path, so the parsers are tested on captured real outputs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# `nvidia-smi topo -m` link codes, best first (its legend).
PCIE_CODES = ("PIX", "PXB", "PHB", "NODE", "SYS")


@dataclass
class TopoMatrix:
    """`nvidia-smi topo -m` parsed: devices (GPU0.., NIC0..), link code per pair, per-GPU CPU/NUMA affinity."""

    gpus: List[str]
    nics: List[str]
    links: Dict[Tuple[str, str], str]
    cpu_affinity: Dict[str, str]
    numa_affinity: Dict[str, Optional[int]]
    nic_names: Dict[str, str]  # NIC0 -> mlx5_0 (newer drivers print a legend; older name the columns mlx5_0)

    def link(self, a: str, b: str) -> str:
        return self.links.get((a, b), "")

    def nvlinks(self, a: str, b: str) -> int:
        m = re.fullmatch(r"NV(\d+)", self.link(a, b))
        return int(m.group(1)) if m else 0

    def nearest_nic(self, gpu: str) -> Optional[str]:
        """The HCA closest to a GPU on PCIe (PIX best), by its real name."""
        best = None
        for nic in self.nics:
            code = self.link(gpu, nic)
            rank = PCIE_CODES.index(code) if code in PCIE_CODES else len(PCIE_CODES)
            if best is None or rank < best[0]:
                best = (rank, nic)
        if best is None or best[0] >= len(PCIE_CODES):
            return None
        return self.nic_names.get(best[1], best[1])


def parse_nvidia_smi_topo(text: str) -> TopoMatrix:
    """Parse `nvidia-smi topo -m` (tab- or space-separated; with or without the NUMA / GPU NUMA ID columns)."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    header_i = next((i for i, ln in enumerate(lines) if re.match(r"^\s+GPU0\b", ln)), None)
    if header_i is None:
        raise ValueError("not `nvidia-smi topo -m` output: no header line starting with GPU0")
    header = lines[header_i]
    # Column names: device names, then "CPU Affinity", "NUMA Affinity", "GPU NUMA ID" (two words each).
    names = re.split(r"\s+", header.strip().replace("CPU Affinity", "CPU_Affinity")
                     .replace("NUMA Affinity", "NUMA_Affinity").replace("GPU NUMA ID", "GPU_NUMA_ID"))
    devices = [n for n in names if n not in ("CPU_Affinity", "NUMA_Affinity", "GPU_NUMA_ID")]
    gpus = [d for d in devices if d.startswith("GPU")]
    nics = [d for d in devices if not d.startswith("GPU")]
    links: Dict[Tuple[str, str], str] = {}
    cpu: Dict[str, str] = {}
    numa: Dict[str, Optional[int]] = {}
    for ln in lines[header_i + 1:]:
        if not ln.strip() or ln.strip().startswith("Legend"):
            break
        cells = re.split(r"\s+", ln.strip())
        row, values = cells[0], cells[1:]
        if row not in devices:
            continue
        for col, val in zip(devices, values[:len(devices)]):
            links[(row, col)] = val
        extra = values[len(devices):]
        if row.startswith("GPU") and extra:
            cpu[row] = extra[0]
            numa[row] = int(extra[1]) if len(extra) > 1 and extra[1].isdigit() else None
    legend = dict(re.findall(r"^\s*(NIC\d+):\s*(\S+)\s*$", text, flags=re.M))
    return TopoMatrix(gpus, nics, links, cpu, numa, legend)


def nvlink_domains(m: TopoMatrix) -> List[List[str]]:
    """Groups of GPUs joined by NVLink (connected components of the NV# links)."""
    seen, groups = set(), []
    for g in m.gpus:
        if g in seen:
            continue
        stack, comp = [g], []
        seen.add(g)
        while stack:
            x = stack.pop()
            comp.append(x)
            for y in m.gpus:
                if y not in seen and m.nvlinks(x, y):
                    seen.add(y)
                    stack.append(y)
        groups.append(sorted(comp, key=lambda s: int(s[3:])))
    return groups


def connectivity(m: TopoMatrix) -> str:
    """'NVSwitch' (every pair linked with the same NVLink count: a switched fabric), 'NVLink mesh' (some pairs),
    or 'PCIe'."""
    pairs = [(a, b) for a in m.gpus for b in m.gpus if a < b]
    counts = {m.nvlinks(a, b) for a, b in pairs}
    if not pairs or counts == {0}:
        return "PCIe"
    if 0 not in counts and len(counts) == 1 and len(m.gpus) > 2:
        return "NVSwitch"
    return "NVLink" if 0 not in counts else "NVLink mesh (partial)"


@dataclass
class Hca:
    name: str
    port: int
    state: str  # ACTIVE, DOWN, ...
    rate_gbps: Optional[float]
    link_layer: str  # InfiniBand | Ethernet (RoCE)

    @property
    def usable(self) -> bool:
        return self.state.upper().endswith("ACTIVE")


def read_infiniband(root: str = "/sys/class/infiniband") -> List[Hca]:
    """HCAs and their ports from sysfs: ports/N/state ('4: ACTIVE'), rate ('200 Gb/sec (4X HDR)'), link_layer."""
    out: List[Hca] = []
    base = Path(root)
    if not base.is_dir():
        return out
    for dev in sorted(base.iterdir(), key=lambda p: _natural(p.name)):
        ports = dev / "ports"
        if not ports.is_dir():
            continue
        for port in sorted(ports.iterdir(), key=lambda p: _natural(p.name)):
            state = _read(port / "state").split(":")[-1].strip()
            rate = re.match(r"\s*([\d.]+)\s*Gb", _read(port / "rate"))
            out.append(Hca(dev.name, int(port.name), state, float(rate.group(1)) if rate else None,
                           _read(port / "link_layer").strip() or "InfiniBand"))
    return out


@dataclass
class NetInterface:
    name: str
    operstate: str
    speed_mbps: Optional[int]
    kind: str  # ether | infiniband (IPoIB) | loopback | other


def read_net_interfaces(root: str = "/sys/class/net") -> List[NetInterface]:
    out = []
    base = Path(root)
    if not base.is_dir():
        return out
    for dev in sorted(base.iterdir(), key=lambda p: _natural(p.name)):
        typ = _read(dev / "type").strip()
        kind = {"1": "ether", "32": "infiniband", "772": "loopback"}.get(typ, "other")
        speed = _read(dev / "speed").strip()
        out.append(NetInterface(dev.name, _read(dev / "operstate").strip() or "unknown",
                                int(speed) if speed.lstrip("-").isdigit() and int(speed) > 0 else None, kind))
    return out


def default_route_interface(route_file: str = "/proc/net/route") -> Optional[str]:
    """The interface of the default route (destination 00000000), the one that reaches the other nodes."""
    try:
        lines = Path(route_file).read_text().splitlines()[1:]
    except OSError:
        return None
    for ln in lines:
        cells = ln.split()
        if len(cells) > 1 and cells[1] == "00000000":
            return cells[0]
    return None


def read_numa_nodes(root: str = "/sys/devices/system/node") -> Dict[int, str]:
    out = {}
    base = Path(root)
    if base.is_dir():
        for d in base.glob("node[0-9]*"):
            out[int(d.name[4:])] = _read(d / "cpulist").strip()
    return dict(sorted(out.items()))


def expand_hostlist(spec: str) -> List[str]:
    """Slurm host lists: 'n[1-3,7],gpu05' -> ['n1', 'n2', 'n3', 'n7', 'gpu05'] (zero padding kept)."""
    out: List[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", spec):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            out.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-")
                out += [f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                out.append(f"{prefix}{r}{suffix}")
    return out


@dataclass
class Switch:
    name: str
    level: int
    nodes: List[str] = field(default_factory=list)
    switches: List[str] = field(default_factory=list)


def parse_slurm_topology(text: str) -> List[Switch]:
    """`scontrol show topology` lines ('SwitchName=s0 Level=0 LinkSpeed=1 Nodes=n[1-4]') or topology.conf lines
    ('SwitchName=s0 Nodes=n[1-4]', 'SwitchName=s2 Switches=s[0-1]'); comments and blank lines ignored."""
    out = []
    for ln in text.splitlines():
        ln = ln.split("#", 1)[0].strip()
        if not ln.startswith("SwitchName="):
            continue
        kv = dict(re.findall(r"(\w+)=(\S+)", ln))
        sw = Switch(kv["SwitchName"], int(kv.get("Level", -1)),
                    expand_hostlist(kv["Nodes"]) if "Nodes" in kv else [],
                    expand_hostlist(kv["Switches"]) if "Switches" in kv else [])
        out.append(sw)
    for sw in out:  # topology.conf has no levels: leaves 0, a parent one above its highest child
        if sw.level < 0:
            sw.level = _level(sw, {s.name: s for s in out})
    return out


def _level(sw: Switch, by_name: Dict[str, Switch]) -> int:
    if not sw.switches:
        return 0
    return 1 + max(_level(by_name[c], by_name) if c in by_name else 0 for c in sw.switches)


def leaf_switch_of(switches: List[Switch]) -> Dict[str, str]:
    """node -> the leaf switch it hangs off (nodes under one leaf talk without crossing the spine)."""
    return {n: sw.name for sw in switches for n in sw.nodes}


@dataclass
class GpuInfo:
    index: int
    name: str
    memory_gb: Optional[float] = None
    nvlinks_active: Optional[int] = None
    numa: Optional[int] = None
    cpu_affinity: Optional[str] = None
    nearest_hca: Optional[str] = None


@dataclass
class NodeTopology:
    hostname: str
    gpus: List[GpuInfo]
    gpu_connectivity: str  # NVSwitch | NVLink | NVLink mesh (partial) | PCIe | none
    nvlink_domain_size: int  # GPUs reachable over NVLink from GPU 0 (1 without NVLink)
    hcas: List[Hca]
    interfaces: List[NetInterface]
    default_interface: Optional[str]
    numa_nodes: Dict[int, str]
    sources: List[str]  # what was read: nvml, nvidia-smi, sysfs, slurm

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class AllocationTopology:
    nodes: List[str]
    switches: List[Switch]
    source: str

    def as_dict(self) -> dict:
        return asdict(self)


def nvml_gpus() -> Optional[List[GpuInfo]]:
    """GPUs from NVML (name, memory, active NVLinks); None when NVML is not there (no driver, no GPU)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver / library on this machine
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total / 2 ** 30
            active = 0
            for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    active += int(pynvml.nvmlDeviceGetNvLinkState(h, link) == pynvml.NVML_FEATURE_ENABLED)
                except Exception:  # link not present on this GPU
                    break
            out.append(GpuInfo(i, name, round(mem, 1), active))
        return out
    finally:
        pynvml.nvmlShutdown()


def nvidia_smi_topo() -> Optional[str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        return subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def discover_node(topo_text: Optional[str] = None, gpus: Optional[List[GpuInfo]] = None,
                  ib_root: str = "/sys/class/infiniband", net_root: str = "/sys/class/net",
                  route_file: str = "/proc/net/route", numa_root: str = "/sys/devices/system/node",
                  use_system: bool = True) -> NodeTopology:
    """This node. topo_text / gpus given: use them instead of running nvidia-smi / NVML (tests, replay)."""
    import socket

    sources = []
    if gpus is None and use_system:
        gpus = nvml_gpus()
        if gpus is not None:
            sources.append("nvml")
    if topo_text is None and use_system:
        topo_text = nvidia_smi_topo()
    matrix = parse_nvidia_smi_topo(topo_text) if topo_text else None
    if matrix is not None:
        sources.append("nvidia-smi topo -m")
        if not gpus:
            gpus = [GpuInfo(int(g[3:]), "unknown (nvidia-smi topo)") for g in matrix.gpus]
        for g in gpus:
            key = f"GPU{g.index}"
            g.cpu_affinity = matrix.cpu_affinity.get(key)
            g.numa = matrix.numa_affinity.get(key)
            g.nearest_hca = matrix.nearest_nic(key)
    gpus = gpus or []
    if matrix is not None:
        conn = connectivity(matrix)
        domain = len(nvlink_domains(matrix)[0]) if matrix.gpus else 0
    elif gpus and all(g.nvlinks_active for g in gpus):
        conn, domain = "NVLink", len(gpus)  # NVML alone: links are up, peers unknown; assume one domain
    else:
        conn, domain = ("PCIe" if gpus else "none"), (1 if gpus else 0)
    hcas = read_infiniband(ib_root)
    if hcas:
        sources.append("sysfs infiniband")
    return NodeTopology(hostname=socket.gethostname(), gpus=gpus, gpu_connectivity=conn,
                        nvlink_domain_size=domain, hcas=hcas, interfaces=read_net_interfaces(net_root),
                        default_interface=default_route_interface(route_file),
                        numa_nodes=read_numa_nodes(numa_root), sources=sources)


def discover_allocation(env: Optional[Dict[str, str]] = None) -> Optional[AllocationTopology]:
    """Under Slurm: the job's nodes and the switch tree (`scontrol show topology`, else $SLURM_CONF's
    topology.conf). None outside a job."""
    env = dict(os.environ if env is None else env)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    nodes = expand_hostlist(nodelist)
    text, source = "", "none"
    if shutil.which("scontrol"):
        try:
            text = subprocess.run(["scontrol", "show", "topology"], capture_output=True, text=True,
                                  timeout=30).stdout
            source = "scontrol show topology"
        except (OSError, subprocess.SubprocessError):
            text = ""
    if not text.strip():
        conf = Path(env.get("SLURM_CONF", "/etc/slurm/slurm.conf")).with_name("topology.conf")
        if conf.is_file():
            text, source = conf.read_text(), str(conf)
    return AllocationTopology(nodes=nodes, switches=parse_slurm_topology(text), source=source)


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
