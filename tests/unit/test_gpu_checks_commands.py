"""scripts/gpu_checks.sh is run only on a lent GPU, rarely and with minutes to spare: a typo in a flag there costs a
whole device session. Its dry run (DRY_RUN=1) lists every step's command; here each one is checked on CPU the way
the GPU would first meet it: `megatron-llm train` command lines (the script's own and those the benchmarks build
for the GPU) parse and pass the trainer's configuration and input checks, benchmark flags parse, and the GPU test
files exist and import."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_llm.cli.checks import check_job
from megatron_llm.config.arguments import build_config, parse_run_args

REPO = Path(__file__).resolve().parents[2]
STEP_ORDER = "abcdefg"  # most important first: the op tests, fused vs local, the 1.1B bench, ...


def _commands(tmp_path) -> list:
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_checks.sh")], env={"PATH": "/usr/bin:/bin",
                          "DRY_RUN": "1", "OUT": str(out)}, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["commands.txt"], "a dry run must not run anything"
    rows = []
    for line in (out / "commands.txt").read_text().splitlines():
        name, cmd = line.split("\t")
        rows.append((name, shlex.split(cmd)))
    return rows


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_train(argv: list) -> None:
    """What `megatron-llm train` does before it spawns a rank (cli/train.py), less the device check."""
    assert argv[0] == "train", argv
    args, values = parse_run_args(argv[1:])
    cfg = build_config(values, args.recipe)
    check_job(cfg)
    assert cfg.launch.device == "cuda", "a GPU check that trains on CPU measures nothing"


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    return _commands(tmp_path_factory.mktemp("dry"))


def test_steps_run_most_important_first(commands):
    letters = [name[0] for name, _ in commands]
    assert letters == sorted(letters, key=STEP_ORDER.index)
    assert set(letters) == set(STEP_ORDER)
    assert len({name for name, _ in commands}) == len(commands)


def test_train_commands_pass_the_trainers_checks(commands):
    trains = [argv for _, argv in commands if argv[:3] == ["python", "-m", "megatron_llm.cli"] and argv[3] == "train"]
    assert len(trains) == 2  # (b): local and fused
    for argv in trains:
        _check_train(argv[3:])


def test_pytest_steps_name_test_files_that_import(commands):
    files = [a for _, argv in commands if argv[:3] == ["python", "-m", "pytest"] for a in argv if a.endswith(".py")]
    assert {Path(f).name for f in files} >= {"test_ops_gpu.py", "test_cuda_training.py", "test_linear_attention_gpu.py"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *files],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_bench_flags_parse_and_their_gpu_train_commands_pass(commands, tmp_path):
    benches = {Path(argv[1]).stem: argv[2:] for _, argv in commands
               if argv[0] == "python" and argv[1].startswith("bench/")}
    assert set(benches) == {"train_throughput", "planner_memory_gpu", "transnormer_throughput"}
    for _, argv in commands:  # every bench command: train_throughput.py runs in three steps
        if argv[0] == "python" and argv[1].startswith("bench/"):
            _bench(Path(argv[1]).stem).parser().parse_args(argv[2:])

    tt = _bench("train_throughput")
    stacks = {s for _, argv in commands if argv[1:2] == ["bench/train_throughput.py"]
              for s in tt.parser().parse_args(argv[2:]).stacks.split(",")}
    assert stacks == set(tt.STACKS)
    for stack in tt.MEGATRON_FLAGS:
        _check_train(tt.megatron_train_args(stack, False, "cuda", 4, 10, 3, str(tmp_path / stack)))

    pm = _bench("planner_memory_gpu")
    for mbs in pm.parser().parse_args([]).micro_batch_sizes:
        for recompute in ("none", "full"):
            _check_train(pm.train_args(str(tmp_path / f"pm{mbs}{recompute}"), mbs, recompute))

    tn = _bench("transnormer_throughput")
    a = tn.parser().parse_args(benches["transnormer_throughput"])
    for seq in a.seqs:
        for arch in ("llama", "transnormer"):
            _check_train(tn.train_args(arch, seq, a.iters, "cuda", a.tokens_per_iter, str(tmp_path / arch)))
