"""The CPU emulation layer: what it rewrites, that it is opt-in, and that it can be undone.

Each test runs in a fresh interpreter: activation patches process-wide state that must not leak into other tests.
"""

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_not_active_unless_opted_in():
    out = run("""
        import torch, sys
        from torch.overrides import _get_current_function_mode_stack
        originals = (torch.cuda.current_device, torch.cuda.Stream, torch.cuda.get_rng_state)
        import megatron_llm.training.pretrain, megatron_llm.training.initialize  # importing the trainer opts in nothing
        import megatron_llm.cli.train, megatron_llm.models.llama
        assert "megatron_llm.parallel.cpu_emulation" not in sys.modules
        assert (torch.cuda.current_device, torch.cuda.Stream, torch.cuda.get_rng_state) == originals
        assert not _get_current_function_mode_stack()  # no device-rewriting mode installed
        print("inactive")
    """)
    assert "inactive" in out


def test_rewrites_cuda_placement_and_rng_and_restores():
    out = run("""
        import torch
        from megatron_llm.parallel import cpu_emulation as emu
        original_current_device = torch.cuda.current_device
        emu.activate()
        assert emu.is_active()
        a = torch.empty(3, device="cuda")
        b = torch.zeros(2, device=torch.cuda.current_device())
        c = torch.ones(2).cuda()
        d = torch.ones(2).to("cuda:0")
        assert {t.device.type for t in (a, b, c, d)} == {"cpu"}
        assert torch.ones(2).type() == "torch.cuda.FloatTensor"  # what megatron's optimizers check for
        s = torch.cuda.Stream(); e = torch.cuda.Event(enable_timing=True); e.record(); torch.cuda.synchronize()
        # CUDA RNG state is the CPU generator: forking and restoring it is real
        state = torch.cuda.get_rng_state()
        x = torch.rand(4)
        torch.cuda.set_rng_state(state)
        assert torch.equal(x, torch.rand(4))
        emu.deactivate()
        assert not emu.is_active()
        assert torch.cuda.current_device is original_current_device
        assert torch.ones(2).type() == "torch.FloatTensor"
        print("ok")
    """)
    assert "ok" in out


def test_megatron_rng_tracker_forks_reproducibly():
    out = run("""
        import torch
        from megatron_llm.parallel import cpu_emulation as emu
        emu.activate()
        from megatron.core import tensor_parallel
        tracker = tensor_parallel.get_cuda_rng_tracker()
        tracker.reset()
        tracker.add("model-parallel-rng", 123)
        with tracker.fork():
            a = torch.rand(3)
        outside = torch.rand(3)
        tracker.reset(); tracker.add("model-parallel-rng", 123)
        with tracker.fork():
            b = torch.rand(3)
        assert torch.equal(a, b) and not torch.equal(a, outside)
        print("ok")
    """)
    assert "ok" in out


def test_guard_refuses_emulation_on_a_cuda_run():
    out = run("""
        from megatron_llm.parallel import cpu_emulation as emu
        emu.guard_cuda_run()  # inactive: fine
        emu.activate()
        try:
            emu.guard_cuda_run()
        except RuntimeError as e:
            print("refused:", e)
    """)
    assert "refused: CPU emulation is active in a CUDA run" in out


def test_jit_fusions_run_eagerly_when_asked_before_megatron_imports():
    out = run("""
        import sys, torch
        real = torch.compile
        from megatron_llm.parallel import cpu_emulation
        assert cpu_emulation.eager_jit_fusions()
        assert torch.compile is real  # torch itself is left as it was
        from megatron.core import jit
        from megatron.core.fusions import fused_bias_swiglu, fused_bias_gelu
        import megatron.core.models.gpt, megatron.core.optimizer
        assert jit.jit_fuser is jit.noop_decorator
        for f in (fused_bias_swiglu.swiglu, fused_bias_swiglu.bias_swiglu, fused_bias_gelu.bias_gelu):
            assert type(f).__name__ == "function" and not hasattr(f, "_torchdynamo_orig_callable"), f
        assert "torch._dynamo" not in sys.modules and "torch._inductor" not in sys.modules
        x = torch.randn(3, 8)  # and they still compute: swiglu(x) = silu(a) * b
        a, b = x.chunk(2, -1)
        torch.testing.assert_close(fused_bias_swiglu.swiglu(x), torch.nn.functional.silu(a) * b)
        assert not cpu_emulation.eager_jit_fusions()  # too late a second time: megatron-core is imported
        print("eager")
    """)
    assert "eager" in out


def test_without_it_megatron_compiles_its_fusions():
    """The property the test above relies on: megatron-core's default is torch.compile."""
    out = run("""
        import sys
        from megatron.core.fusions import fused_bias_swiglu
        print(hasattr(fused_bias_swiglu.swiglu, "_torchdynamo_orig_callable"), "torch._dynamo" in sys.modules)
    """)
    assert out.split() == ["True", "True"]
