"""Topology discovery parsers on outputs captured from real machines (tests/data/topology, sources in headers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_llm.parallel.topology import (connectivity, default_route_interface, discover_node, expand_hostlist,
                                            leaf_switch_of, nvlink_domains, parse_nvidia_smi_topo,
                                            parse_slurm_topology, read_infiniband, read_net_interfaces)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "topology"


def _topo(name: str):
    return parse_nvidia_smi_topo((DATA / name).read_text())


def test_hopper_hgx_node_nvswitch_and_gpu_nearest_hcas():
    m = _topo("nvidia_smi_topo_hgx_h100_nv18.txt")
    assert m.gpus == [f"GPU{i}" for i in range(8)] and len(m.nics) == 12
    assert m.nvlinks("GPU0", "GPU7") == 18 and connectivity(m) == "NVSwitch"
    assert nvlink_domains(m) == [m.gpus]
    # The operator of this very node set NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_5,mlx5_6,mlx5_7,mlx5_8,mlx5_11
    # (same file): the HCA on each GPU's own PCIe switch (PIX).
    assert [m.nearest_nic(g) for g in m.gpus] == ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_5", "mlx5_6", "mlx5_7",
                                                   "mlx5_8", "mlx5_11"]
    assert set(m.numa_affinity.values()) == {0} and m.cpu_affinity["GPU3"] == "0-191"


def test_a100_node_numa_affinity_and_space_separated_format():
    m = _topo("nvidia_smi_topo_a100_oci_nv12.txt")
    assert len(m.gpus) == 8 and len(m.nics) == 18 and connectivity(m) == "NVSwitch"
    assert [m.numa_affinity[g] for g in m.gpus] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert m.cpu_affinity["GPU4"] == "112-127"
    # GPU0/1 share a PCIe switch (PXB) with NIC5..NIC8: the nearest is the first of them; NIC0 and NIC13 are
    # next to no GPU.
    assert m.nearest_nic("GPU0") == "mlx5_5" and m.nearest_nic("GPU6") == "mlx5_9"
    assert m.link("NIC1", "NIC2") == "PIX"


def test_pcie_only_node_has_no_nvlink_domain():
    m = _topo("nvidia_smi_topo_pcie_rtx4090.txt")
    assert connectivity(m) == "PCIe" and len(nvlink_domains(m)) == 8
    assert m.link("GPU6", "NIC0") == "PHB" and m.nearest_nic("GPU6") == "NIC0"  # no NIC legend: column name
    assert m.numa_affinity["GPU4"] == 1


def test_parser_refuses_what_is_not_a_topology_matrix():
    with pytest.raises(ValueError, match="no header line starting with GPU0"):
        parse_nvidia_smi_topo("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")


def _sysfs_hca(root: Path, name: str, port: int, state: str, rate: str, layer: str = "InfiniBand"):
    d = root / name / "ports" / str(port)
    d.mkdir(parents=True)
    (d / "state").write_text(state + "\n")
    (d / "rate").write_text(rate + "\n")
    (d / "link_layer").write_text(layer + "\n")


def test_infiniband_sysfs_ports_states_rates(tmp_path):
    # Files as the kernel writes them (Documentation/ABI/stable/sysfs-class-infiniband: "4: ACTIVE",
    # "200 Gb/sec (4X HDR)").
    _sysfs_hca(tmp_path, "mlx5_10", 1, "4: ACTIVE", "400 Gb/sec (4X NDR)")
    _sysfs_hca(tmp_path, "mlx5_2", 1, "1: DOWN", "10 Gb/sec (4X SDR)")
    _sysfs_hca(tmp_path, "mlx5_bond_0", 1, "4: ACTIVE", "100 Gb/sec (2X EDR)", "Ethernet")
    hcas = read_infiniband(str(tmp_path))
    assert [(h.name, h.state, h.rate_gbps, h.link_layer, h.usable) for h in hcas] == [
        ("mlx5_2", "DOWN", 10.0, "InfiniBand", False), ("mlx5_10", "ACTIVE", 400.0, "InfiniBand", True),
        ("mlx5_bond_0", "ACTIVE", 100.0, "Ethernet", True)]
    assert read_infiniband(str(tmp_path / "absent")) == []


def test_net_interfaces_and_default_route(tmp_path):
    for name, typ, state, speed in (("lo", "772", "unknown", ""), ("eth0", "1", "up", "25000"),
                                    ("ib0", "32", "up", "-1")):
        d = tmp_path / "net" / name
        d.mkdir(parents=True)
        (d / "type").write_text(typ + "\n")
        (d / "operstate").write_text(state + "\n")
        (d / "speed").write_text(speed + "\n")
    ifs = read_net_interfaces(str(tmp_path / "net"))
    assert [(i.name, i.kind, i.speed_mbps) for i in ifs] == [("eth0", "ether", 25000), ("ib0", "infiniband", None),
                                                             ("lo", "loopback", None)]
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                     "ib0\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
                     "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert default_route_interface(str(route)) == "eth0"


def test_slurm_hostlists_and_switch_tree():
    # Hostlist examples of topology.conf(5): "Nodes=tux[0-3,12,18-20]" and "Switches=s[0-2,4-8,12]".
    assert expand_hostlist("tux[0-3,12,18-20]") == ["tux0", "tux1", "tux2", "tux3", "tux12", "tux18", "tux19",
                                                    "tux20"]
    assert expand_hostlist("gpu[001-003],login1") == ["gpu001", "gpu002", "gpu003", "login1"]
    switches = parse_slurm_topology((DATA / "slurm_topology_conf_manpage_example.conf").read_text())
    by = {s.name: s for s in switches}
    assert by["s3"].switches == ["s0", "s1", "s2"] and by["s3"].level == 1 and by["s0"].level == 0
    assert leaf_switch_of(switches)["dev7"] == "s1" and len(by["s2"].nodes) == 6
    # `scontrol show topology` prints levels itself.
    live = parse_slurm_topology("SwitchName=s0 Level=0 LinkSpeed=1 Nodes=dev[0-5]\n"
                                "SwitchName=s3 Level=1 LinkSpeed=1 Switches=s[0-2]\n")
    assert [s.level for s in live] == [0, 1]


def test_discover_node_from_a_saved_matrix_without_nvml(tmp_path):
    node = discover_node(topo_text=(DATA / "nvidia_smi_topo_hgx_h100_nv18.txt").read_text(), gpus=None,
                         ib_root=str(tmp_path), use_system=False)
    assert node.gpu_connectivity == "NVSwitch" and node.nvlink_domain_size == 8 and len(node.gpus) == 8
    assert node.gpus[3].nearest_hca == "mlx5_5" and node.sources == ["nvidia-smi topo -m"]


def test_topo_verb_json(tmp_path):
    p = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "topo", "--json", "--nvidia-smi-topo",
                        str(DATA / "nvidia_smi_topo_a100_oci_nv12.txt"), "--sysfs-infiniband", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["node"]["gpu_connectivity"] == "NVSwitch" and len(d["node"]["gpus"]) == 8
    assert [g["numa"] for g in d["node"]["gpus"]][:2] == [3, 3]
    # The preview of what comm tuning would decide for a layout on this node.
    p = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "topo", "--nvidia-smi-topo",
                        str(DATA / "nvidia_smi_topo_a100_oci_nv12.txt"), "--sysfs-infiniband", str(tmp_path),
                        "--world-size", "64", "--tensor-model-parallel-size", "8", "--pipeline-model-parallel-size",
                        "2"], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert p.returncode == 0, p.stderr
    assert "--use-tp-pp-dp-mapping=on [auto]" in p.stdout and "CUDA_DEVICE_MAX_CONNECTIONS=1" in p.stdout
