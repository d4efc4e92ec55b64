"""scripts/gpu_checks.sh is run only on a lent GPU, rarely and with minutes to spare: a typo in a flag there costs a
whole device session. Its dry run (DRY_RUN=1) lists every step's command; here each one is checked on CPU the way
the GPU would first meet it: `megatron-llm train` command lines (the script's own and those the benchmarks build
for the GPU) parse and pass the trainer's configuration and input checks, benchmark flags parse, and the GPU test
files exist and import."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from megatron_llm.cli.checks import check_job
from megatron_llm.config.arguments import build_config, parse_run_args

REPO = Path(__file__).resolve().parents[2]
STEP_ORDER = "abcdefg"  # most important first: the op tests, fused vs local, the 1.1B bench, ...


def _commands(tmp_path) -> list:
    run, out = tmp_path / "run", tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_checks.sh")], env={"PATH": "/usr/bin:/bin",
                          "DRY_RUN": "1", "RUN_DIR": str(run), "OUT": str(out)}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["commands.txt"], "a dry run must not run anything"
    assert not out.exists()
    rows = []
    for line in (run / "commands.txt").read_text().splitlines():
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


def test_the_profile_step_profiles_the_benchmarked_fused_step(commands):
    from megatron_llm.profiling.options import profile_config

    profiles = [argv[4:] for _, argv in commands if argv[:4] == ["python", "-m", "megatron_llm.cli", "profile"]]
    assert len(profiles) == 1  # (c): where the fused step's time goes
    args, cfg, window = profile_config(profiles[0])  # what `megatron-llm profile` checks before it spawns a rank
    check_job(cfg)
    # the traced iteration comes after the measured ones (tracing slows its step) and inside the run
    assert window[0] > args.warmup_iters and window[1] == cfg.train.train_iters
    # the same job as the benchmark's fused stack at its default micro-batch (bench/train_throughput.py: 4)
    bench = _bench("train_throughput").megatron_train_args("fused", False, "cuda", 4, 10, 3, "tb")
    bargs, bvalues = parse_run_args(bench[1:])
    ref = build_config(bvalues, bargs.recipe)
    for section in ("model", "parallel", "data", "impl", "launch"):
        assert getattr(cfg, section) == getattr(ref, section), section


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


# Stand-ins for the GPU machine's tools: every step "runs" at once. The fake python kills the script when it is asked
# to run the step named in $KILL_AT, as the device tool does to a call that outruns its limit.
FAKE_PYTHON = """#!/bin/bash
cat > /dev/null
echo "fake python $*"
if [[ -n "${BIG:-}" ]]; then head -c 9000000 /dev/zero > "$RUN_DIR/big.bin"; fi  # a step's 9 MB output
if [[ -n "${KILL_AT:-}" && "$*" == *"$KILL_AT"* ]]; then kill -KILL "$(cat "$SCRIPT_PID")"; exit 1; fi
"""


def _fake_run(tmp_path, **env):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(FAKE_PYTHON)
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'name, memory.total'\necho 'NVIDIA H200, 143771 MiB'\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    run, out, pid = tmp_path / "run", tmp_path / "out", tmp_path / "script.pid"
    script = REPO / "scripts" / "gpu_checks.sh"
    proc = subprocess.run(["bash", "-c", f'echo $$ > {pid}; exec bash {script}'], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "RUN_DIR": str(run), "OUT": str(out),
                               "SCRIPT_PID": str(pid), **env})
    return proc, run, out


def _returned(out: Path) -> dict:
    """What the device tool brings back from $OUT: at most 8 plain files, 2 folders down, plainly named."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
        assert p.stat().st_size <= 16 << 20
    return {str(p.relative_to(out)): p for p in files}


def test_a_whole_run_comes_back_in_two_files(commands, tmp_path):
    proc, run, out = _fake_run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = _returned(out)
    assert sorted(got) == ["gpu_checks.tar.gz", "summary.txt"]
    names = [name for name, _ in commands]
    summary = got["summary.txt"].read_text()
    assert [line.split(":")[0] for line in summary.splitlines()[:-1]] == names and summary.startswith(names[0])
    assert summary.splitlines()[-1].startswith("total ")
    with tarfile.open(got["gpu_checks.tar.gz"]) as tar:
        packed = set(tar.getnames())
    assert {f"run/{name}.log" for name in names} | {"run/summary.txt", "run/gpu.txt"} <= packed
    assert (run / "c_bench.log").read_text().count("fake python bench/train_throughput.py") == 1


def test_a_file_too_big_to_come_back_is_named_in_the_archive(tmp_path):
    proc, run, out = _fake_run(tmp_path, STEPS="a", BIG="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with tarfile.open(_returned(out)["gpu_checks.tar.gz"]) as tar:
        assert "run/big.bin" not in tar.getnames()
        assert tar.extractfile("run/left_out.txt").read().decode().split() == ["run/big.bin"]


def test_a_call_cut_short_brings_back_the_steps_that_ended(tmp_path):
    proc, run, out = _fake_run(tmp_path, KILL_AT="bench/train_throughput.py")  # killed in step (c)
    assert proc.returncode == -9, proc.returncode
    got = _returned(out)
    assert sorted(got) == ["gpu_checks.tar.gz", "summary.txt"]  # no partial file left by the kill
    assert [line.split(":")[0] for line in got["summary.txt"].read_text().splitlines()] == \
        ["a_ops", "b_local", "b_fused", "b_compare"]
    with tarfile.open(got["gpu_checks.tar.gz"]) as tar:
        assert "fake python - " in tar.extractfile("run/b_compare.log").read().decode()


def test_a_previous_runs_files_are_kept_beside(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.txt").write_text("a_ops: rc=0 (1s)\n")
    proc, run, out = _fake_run(tmp_path, STEPS="a")
    assert proc.returncode == 0
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.prev-")]
    assert len(kept) == 1 and (kept[0] / "summary.txt").read_text() == "a_ops: rc=0 (1s)\n"
    lines = (run / "summary.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("a_ops: rc=0 (") and lines[1].startswith("total ")


def _wheel(directory: Path, version: str, tag: str) -> None:
    """A wheel of a package `megatron.core` (its __version__ = version): all pip needs to install it."""
    dist = f"megatron_core-{version}.dist-info"
    files = {"megatron/core/__init__.py": f"__version__ = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: megatron-core\nVersion: {version}\n",
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(directory / f"megatron_core-{version}-{tag}.whl", "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


@pytest.fixture(scope="module")
def python_without_megatron(tmp_path_factory):
    """The device image's situation: a python with pip but no megatron-core."""
    root = tmp_path_factory.mktemp("image")
    venv.create(root / "venv", with_pip=True)
    fake = root / "bin"
    fake.mkdir()
    (fake / "python").symlink_to(root / "venv" / "bin" / "python")
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB'\n")
    (fake / "nvidia-smi").chmod(0o755)
    return fake


def _run_without_megatron(fake: Path, tmp_path: Path, wheels: Path):
    run = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_checks.sh")], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "RUN_DIR": str(run), "OUT": str(tmp_path / "out"),
                               "WHEEL_DIR": str(wheels), "STEPS": "-", "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (run / "gpu.txt").read_text(), (run / "summary.txt").read_text()


def test_megatron_core_is_installed_from_the_carried_wheel_that_fits(python_without_megatron, tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "0.16.1", "py3-none-any")
    _wheel(wheels, "0.16.2", "cp27-cp27mu-manylinux1_x86_64")  # newer, but for another interpreter
    gpu, summary = _run_without_megatron(python_without_megatron, tmp_path, wheels)
    line = [x for x in gpu.splitlines() if x.startswith("megatron-core")]
    assert len(line) == 1 and line[0].startswith("megatron-core 0.16.1 from "), gpu
    site = Path(line[0].split(" from ")[1])
    assert site.is_relative_to(tmp_path) and not site.is_relative_to(REPO), "installed outside the checkout"
    assert "megatron-core" not in summary


def test_without_a_wheel_the_summary_says_megatron_core_does_not_import(python_without_megatron, tmp_path):
    gpu, summary = _run_without_megatron(python_without_megatron, tmp_path, tmp_path / "no-wheels")
    first = summary.splitlines()[0]
    assert first.startswith("megatron-core: does not import") and str(tmp_path / "no-wheels") in first, summary
    assert "ModuleNotFoundError: No module named 'megatron'" in gpu
