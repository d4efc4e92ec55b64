"""ops/build.py: the source hash keys the cache, a failed build falls back to the torch reference with the reason,
and `megatron-llm ops` reports each op's implementation."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from megatron_llm import ops
from megatron_llm.ops import build


def test_source_hash_follows_every_source_and_header(tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "a.cpp").write_text("int a;")
    (tmp_path / "include" / "x.h").write_text("#pragma once")
    (tmp_path / "k.cu").write_text("__global__ void k() {}")
    first = build.source_hash(False, tmp_path)
    assert build.source_hash(True, tmp_path) != first  # CUDA and CPU builds live apart
    cuda_first = build.source_hash(True, tmp_path)
    (tmp_path / "k.cu").write_text("__global__ void k() { }")
    assert build.source_hash(False, tmp_path) == first  # a CUDA-only edit does not rebuild the CPU extension
    assert build.source_hash(True, tmp_path) != cuda_first
    (tmp_path / "include" / "x.h").write_text("#pragma once\n// changed")
    assert build.source_hash(False, tmp_path) != first
    assert [p.name for p in build.sources(False, tmp_path)] == ["a.cpp"]
    assert [p.name for p in build.sources(True, tmp_path)] == ["a.cpp", "k.cu"]


def test_one_translation_unit_includes_each_source_and_keeps_its_timestamp(tmp_path):
    srcs = [tmp_path / "a.cpp", tmp_path / "sub" / "b.cpp"]
    srcs[1].parent.mkdir()
    for i, p in enumerate(srcs):
        p.write_text(f"int v{i} = {i};\n")
    out = tmp_path / "out"
    out.mkdir()
    unit = build.one_translation_unit(out, srcs)
    assert unit.read_text().splitlines() == [f'#include "{p.resolve()}"' for p in srcs]
    os.utime(unit, (1, 1))
    assert build.one_translation_unit(out, srcs).stat().st_mtime == 1  # unchanged: ninja sees nothing new
    build.one_translation_unit(out, srcs[:1])
    assert unit.read_text().splitlines() == [f'#include "{srcs[0].resolve()}"'] and unit.stat().st_mtime > 1


def test_a_failed_build_falls_back_to_torch_with_the_reason(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'mllm'\nninja: build stopped: subcommand failed.")

    monkeypatch.delenv("MEGATRON_LLM_NO_EXT", raising=False)
    monkeypatch.setenv("MEGATRON_LLM_EXT_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_prebuilt", lambda digest: None)
    monkeypatch.setattr("torch.utils.cpp_extension.load", broken)
    build.reset_for_tests()
    try:
        ext, why = build.load()
        assert ext is None and "build failed" in why and "subcommand failed" in why
        x = torch.randn(2, 6)
        torch.testing.assert_close(ops.swiglu(x), torch.nn.functional.silu(x[:, :3]) * x[:, 3:])
        assert all(impl != "C++ CPU kernel" for _, impl, _ in ops.status("cpu"))
    finally:
        build.reset_for_tests()


def test_ops_verb_lists_each_op(monkeypatch):
    out = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "ops", "--device", "cpu", "--build"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("extension: ready")
    table = {line.split()[0]: line for line in lines[2:]}
    for op in ("rms_norm", "rope", "swiglu", "vocab_parallel_cross_entropy", "scaled_masked_softmax"):
        assert "C++ CPU kernel" in table[op], out.stdout
    forced = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "ops", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                               "MEGATRON_LLM_NO_EXT": "1"})
    assert "torch reference" in forced.stdout and "MEGATRON_LLM_NO_EXT is set" in forced.stdout


def test_each_checkout_builds_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_LLM_EXT_DIR", str(tmp_path / "cache"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.cpp").write_text("int x;")
    digest = build.source_hash(False, tmp_path / "a")
    assert build.source_hash(False, tmp_path / "b") == digest  # same sources, same module identity
    dirs = {build.build_dir(digest, tmp_path / n) for n in ("a", "b")}
    assert len(dirs) == 2 and all(d.parent == tmp_path / "cache" and d.name.startswith(digest) for d in dirs)
    assert build.build_dir(digest, tmp_path / "a") == build.build_dir(digest, tmp_path / "a" / ".." / "a")


_HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_build_never_blocks_the_next(tmp_path, monkeypatch):
    """A builder killed part-way leaves torch's lock file and its own flock: the flock goes with the process, and
    the next builder removes the stale lock file instead of waiting on it forever."""
    import os
    import signal
    import threading

    monkeypatch.setenv("MEGATRON_LLM_EXT_DIR", str(tmp_path))
    directory = build.build_dir("feed")
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # torch's FileBaton of the killed build
    seen = {}

    def fake_load(**kwargs):
        seen["lock_left"] = (directory / "lock").exists()
        seen["dir"] = kwargs["build_directory"]
        return "module"

    monkeypatch.setattr("torch.utils.cpp_extension.load", fake_load)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory / "build.flock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = {}
        waiter = threading.Thread(target=lambda: result.setdefault("mod", build._jit(False, "feed")))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not seen, "a build in progress (flock held) is waited for"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        waiter.join(30)
        assert not waiter.is_alive() and result["mod"] == "module"
        assert seen == {"lock_left": False, "dir": str(directory)}
    finally:
        if holder.poll() is None:
            holder.kill()
