"""Communication decisions for 1, 8 and 1,024 GPU layouts, and the user's settings always win."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_llm.config.arguments import build_config, parse_run_args
from megatron_llm.parallel import comm_tuning as ct
from megatron_llm.parallel.comm_env import shell_lines
from megatron_llm.parallel.topology import Hca, NetInterface, discover_node

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "topology"


def _cfg(*flags):
    args, values = parse_run_args(["--num-layers", "32", "--hidden-size", "4096", "--num-attention-heads", "32",
                                   "--mock-data", "--vocab-size", "32000", *flags])
    return build_config(values, args.recipe)


def _by_name(decisions):
    return {d.name: d for d in decisions}


def test_one_gpu_keeps_everything_off():
    d = _by_name(ct.decide(_cfg(), 1, "cuda", environ={}))
    assert d["--overlap-grad-reduce"].value is False and "DP = 1" in d["--overlap-grad-reduce"].reason
    assert d["--overlap-param-gather"].value is False and d["--ddp-bucket-size"].value is None
    assert d["--use-tp-pp-dp-mapping"].value is False
    assert d["CUDA_DEVICE_MAX_CONNECTIONS"].value is None  # TP = 1


def test_eight_gpus_tp2_dp4_one_node():
    d = _by_name(ct.decide(_cfg("--tensor-model-parallel-size", "2", "--sequence-parallel"), 8, "cuda",
                           environ={}, gpus_per_node=8))
    assert d["--overlap-grad-reduce"].value is True and d["--overlap-param-gather"].value is True
    assert d["--ddp-bucket-size"].value == 40_000_000  # max(40M, 1M x 4)
    assert d["CUDA_DEVICE_MAX_CONNECTIONS"].value == "1"
    assert d["--use-tp-pp-dp-mapping"].value is False  # PP = 1: the orders coincide
    assert ct.tp_groups_inside_nodes(8, 2, 1, False, 8)


def test_1024_gpus_tp8_pp4_interleaved():
    cfg = _cfg("--tensor-model-parallel-size", "8", "--pipeline-model-parallel-size", "4",
               "--num-layers-per-virtual-pipeline-stage", "2", "--sequence-parallel")
    d = _by_name(ct.decide(cfg, 1024, "cuda", environ={}, gpus_per_node=8))
    assert d["--use-tp-pp-dp-mapping"].value is True
    assert d["--ddp-bucket-size"].value == 40_000_000  # DP = 32: 1M x 32 < 40M
    assert d["--overlap-p2p-communication"].value is True
    assert ct.tp_groups_inside_nodes(1024, 8, 4, True, 8)
    # DP 512 (TP 2, PP 1) scales the bucket: 1M x 512
    d2 = _by_name(ct.decide(_cfg("--tensor-model-parallel-size", "2"), 1024, "cuda", environ={}, gpus_per_node=8))
    assert d2["--ddp-bucket-size"].value == 512_000_000
    assert "--overlap-p2p-communication" in d2 and d2["--overlap-p2p-communication"].value is False
    notes = [x for x in ct.decide(_cfg("--tensor-model-parallel-size", "16"), 1024, "cuda", environ={},
                                  gpus_per_node=8) if x.kind == "note"]
    assert notes and "exceeds the 8 GPUs of a node" in notes[0].reason


def test_cpu_runs_keep_overlap_off_unless_asked():
    d = _by_name(ct.decide(_cfg("--pipeline-model-parallel-size", "2"), 4, "cpu", environ={}))
    assert not any(d[k].value for k in ("--overlap-grad-reduce", "--overlap-param-gather",
                                        "--overlap-p2p-communication", "--use-tp-pp-dp-mapping"))
    assert not [x for x in d.values() if x.kind == "env"]


@pytest.mark.parametrize("world,tp,pp,tp_pp_dp", [(8, 2, 2, True), (16, 2, 2, False), (64, 4, 4, True),
                                                  (1024, 8, 4, True), (1024, 8, 4, False)])
def test_rank_groups_match_megatron_core(world, tp, pp, tp_pp_dp):
    from megatron.core.parallel_state import RankGenerator

    dp = world // (tp * pp)
    gen = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order=ct.ORDER_TP_PP_DP if tp_pp_dp else ct.ORDER_DEFAULT)
    ours = ct.rank_groups(world, tp, pp, tp_pp_dp)
    for name in ("tp", "pp", "dp"):
        assert sorted(map(sorted, gen.get_ranks(name))) == ours[name], name


def test_the_users_flags_and_environment_win():
    cfg = _cfg("--tensor-model-parallel-size", "2", "--no-overlap-grad-reduce", "--ddp-bucket-size", "12345",
               "--no-use-tp-pp-dp-mapping", "--pipeline-model-parallel-size", "2")
    assert cfg.parallel.overlap_grad_reduce is False  # --no-X parses to an explicit False
    env = {"CUDA_DEVICE_MAX_CONNECTIONS": "8"}
    decisions = ct.decide(cfg, 64, "cuda", environ=env, gpus_per_node=8)
    d = _by_name(decisions)
    assert d["--overlap-grad-reduce"].source == "user" and d["--overlap-grad-reduce"].value is False
    assert d["--ddp-bucket-size"].value == 12345 and d["--use-tp-pp-dp-mapping"].value is False
    assert d["CUDA_DEVICE_MAX_CONNECTIONS"].source == "user"
    # Follow-on decisions respect the user's choice: no grad overlap -> no param-gather overlap.
    assert d["--overlap-param-gather"].value is False and d["--overlap-param-gather"].source == "auto"
    ct.apply(cfg, decisions, env)
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "8" and cfg.parallel.ddp_bucket_size == 12345
    assert cfg.parallel.overlap_grad_reduce is False and cfg.parallel.overlap_param_gather is False
    # Unset fields get the decision; every decision prints with its reason.
    cfg2 = _cfg("--tensor-model-parallel-size", "2")
    dec2 = ct.decide(cfg2, 64, "cuda", environ={}, gpus_per_node=8)
    ct.apply(cfg2, dec2, {})
    assert cfg2.parallel.overlap_grad_reduce is True and cfg2.parallel.ddp_bucket_size == 40_000_000
    text = ct.report(dec2)
    assert text.count("\n") + 1 == len(dec2) and "[auto]" in text and "megatron-core's rule" in text


def _node_with_hcas(tmp_path, active):
    node = discover_node(topo_text=(DATA / "nvidia_smi_topo_hgx_h100_nv18.txt").read_text(),
                         ib_root=str(tmp_path), use_system=False)
    node.hcas = [Hca(f"mlx5_{i}", 1, "ACTIVE" if i in active else "DOWN", 400.0, "InfiniBand") for i in range(12)]
    node.interfaces = [NetInterface("lo", "unknown", None, "loopback"), NetInterface("bond0", "up", 100000, "ether"),
                       NetInterface("enp25s0np0", "up", 100000, "ether")]
    node.default_interface = "enp25s0np0"
    return node


def test_nccl_hca_and_socket_interface_from_the_real_hopper_node(tmp_path):
    shape = ct.RunShape("cuda", 16, 8, 1, None, True, 8)
    node = _node_with_hcas(tmp_path, active=set(range(12)))
    d = _by_name(ct.decide_env(shape, node, {}))
    # What this node's operator chose by hand (NCCL_IB_HCA in the same captured file), derived from topology.
    assert d["NCCL_IB_HCA"].value == "=mlx5_0,mlx5_1,mlx5_2,mlx5_5,mlx5_6,mlx5_7,mlx5_8,mlx5_11"
    assert d["NCCL_SOCKET_IFNAME"].value == "=enp25s0np0"
    # A user's NCCL_IB_HCA stays, and comm_env prints no export for it.
    d2 = ct.decide_env(shape, node, {"NCCL_IB_HCA": "mlx5_0"})
    lines = shell_lines(d2)
    assert not any(ln.startswith("export NCCL_IB_HCA") for ln in lines)
    assert "export NCCL_SOCKET_IFNAME==enp25s0np0" in lines


def test_inactive_hca_ports_are_left_out(tmp_path):
    shape = ct.RunShape("cuda", 16, 1, 1, None, True, 8)
    node = _node_with_hcas(tmp_path, active={0, 1, 2, 5, 6, 7, 8})  # mlx5_11 (GPU7's) and the spares down
    d = _by_name(ct.decide_env(shape, node, {}))
    assert d["NCCL_IB_HCA"].value == "=" + ",".join(f"mlx5_{i}:1" for i in (0, 1, 2, 5, 6, 7, 8))
    assert "5 HCA port(s) not ACTIVE" in d["NCCL_IB_HCA"].reason
    node.hcas = [Hca(f"mlx5_{i}", 1, "ACTIVE", 400.0, "InfiniBand") for i in (0, 1, 2, 5, 6, 7, 8, 11)]
    d = _by_name(ct.decide_env(shape, node, {}))  # one active HCA per GPU: NCCL's own choice is right
    assert d["NCCL_IB_HCA"].value is None and "all 8 HCA ports active" in d["NCCL_IB_HCA"].reason
