"""training/optimizer.py: the all-at-once grad norm, the foreach scale, and AdamW switched to foreach/fused."""

import subprocess
import sys
import textwrap

import pytest
import torch

from megatron_llm.training import optimizer as opt_mod


def test_grad_norm_equals_norm_of_concatenation():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(7, 3, generator=g), torch.randn(0), torch.randn(129, generator=g) * 1e3,
          torch.randn(5, 5, generator=g).t(),  # non-contiguous
          torch.randn(4, generator=g, dtype=torch.float64)]
    expected = torch.linalg.vector_norm(torch.cat([t.reshape(-1).double() for t in ts]))
    got = opt_mod.grad_norm(ts)
    assert got.shape == (1,) and got.dtype == torch.float32
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert float(opt_mod.grad_norm([])) == 0.0


def test_multi_tensor_scale_writes_scaled_copies():
    src = [torch.arange(5.0), torch.ones(2, 3)]
    dst = [torch.zeros(5), torch.zeros(2, 3)]
    opt_mod._multi_tensor_scale(2048, None, [src, dst], 0.5)
    assert torch.equal(dst[0], torch.arange(5.0) * 0.5) and torch.equal(dst[1], torch.full((2, 3), 0.5))


def test_foreach_adamw_matches_the_per_tensor_loop():
    """use_fused_adamw on CPU selects foreach; the updates equal torch's single-tensor AdamW to fp32 rounding."""
    def run(switch: bool):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(13, 5)), torch.nn.Parameter(torch.randn(7))]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=False)

        class Wrapper:  # the shape of a megatron-core optimizer: .optimizer is the torch one
            optimizer = opt

        if switch:
            assert opt_mod.use_fused_adamw(Wrapper(), "cpu") == 1
            assert all(g["foreach"] and not g["fused"] for g in opt.param_groups)
        for step in range(3):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        return [p.detach().clone() for p in params]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_install_replaces_only_megatron_local_fallbacks():
    code = textwrap.dedent("""
        from megatron.core.optimizer import clip_grads
        from megatron.core.optimizer import optimizer as mo
        from megatron.core import utils
        from megatron_llm.training import optimizer as ours
        assert clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm  # no TE/apex here
        assert ours.install_multi_tensor_ops()
        assert clip_grads.l2_norm_impl is ours._multi_tensor_l2norm
        assert clip_grads.multi_tensor_scale_impl is ours._multi_tensor_scale
        assert mo.multi_tensor_scale_impl is ours._multi_tensor_scale
        assert not ours.install_multi_tensor_ops()  # idempotent: nothing left to replace
        import torch
        ts = [torch.ones(3), torch.full((4,), 2.0)]
        norm, _ = clip_grads.multi_tensor_applier(clip_grads.l2_norm_impl, None, [ts], False)
        assert abs(float(norm) - 19 ** 0.5) < 1e-6, norm
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_kernel_choice_survives_a_state_dict_load():
    """A checkpoint saved by a run with other flags (here: a per-tensor loop) must not switch the kernel back, and
    the fused kernel's step counters are put on the parameter's device (CPU here) as floats."""
    p = torch.nn.Parameter(torch.ones(3))
    saved_opt = torch.optim.AdamW([p], lr=0.1, foreach=False)
    p.grad = torch.ones(3)
    saved_opt.step()
    state = saved_opt.state_dict()

    q = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([q], lr=0.1)

    class Wrapper:
        optimizer = opt

    opt_mod.use_fused_adamw(Wrapper(), "cpu")
    opt.load_state_dict(state)
    assert opt.param_groups[0]["foreach"] is False  # as saved
    q.grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[0]["foreach"] is True and opt.param_groups[0]["fused"] is False
    hook = opt_mod._keep_kernel_choice("cuda")  # the CUDA rule on CPU tensors: counters moved, not dropped
    opt.state[q]["step"] = 5.0
    hook(opt, (), {})
    assert opt.param_groups[0]["fused"] is True
    step = opt.state[q]["step"]
    assert isinstance(step, torch.Tensor) and step.dtype == torch.float32 and float(step) == 5.0
