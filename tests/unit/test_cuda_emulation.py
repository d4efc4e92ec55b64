"""The CPU emulation of CUDA that runs csrc/cuda's kernels in CI (tests/cuda_emulation): it must fail kernels with
the faults it is there to catch (each beside its correct twin, tests/cuda_emulation/selftest.cu), refuse launch
configurations a GPU refuses, and run csrc's kernels to the same results as the C++ CPU kernels: with the grid
capped (through their grid-stride loops), and inside a fused-spec GPTModel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_llm.ops import build
from ops_helpers import use_cpu_extension

BLOCKS = 16  # of 256 threads: the schedule is drawn per block (half of them greedy), so a race shows in some block


@pytest.fixture(scope="module")
def emulated():
    from cuda_emulation import emulated_ext

    return emulated_ext.load()


@pytest.fixture
def cpu_ext(monkeypatch):
    build.reset_for_tests()
    yield use_cpu_extension(monkeypatch)
    build.reset_for_tests()


def _input(n=BLOCKS * 256, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_missing_barrier_between_shared_writes_and_reads(emulated):
    x = _input()
    expected = x + x.view(BLOCKS, 8, 32).roll(-1, dims=1).reshape(-1)  # t + 32 within each block of 256
    torch.testing.assert_close(emulated.selftest("neighbour", x, True), expected)
    racy = emulated.selftest("neighbour", x, False)
    assert not torch.allclose(racy, expected, equal_nan=False)  # unwritten shared memory reads as NaN


def test_shared_memory_reused_without_the_leading_barrier(emulated):
    x = _input()
    per_block = torch.stack([x.view(BLOCKS, 256).sum(1), (x * x).view(BLOCKS, 256).sum(1)], dim=1)
    expected = per_block[:, None, :].expand(BLOCKS, 256, 2).reshape(-1)
    torch.testing.assert_close(emulated.selftest("two_sums", x, True), expected, rtol=1e-5, atol=1e-4)
    racy = emulated.selftest("two_sums", x, False).view(BLOCKS, 256, 2)
    wrong_blocks = ((racy - per_block[:, None, :]).abs() > 1e-3).flatten(1).any(1)
    assert wrong_blocks.any(), "a warp overwrote the first reduction's partial sums unnoticed"


def test_divergent_shuffle_is_named(emulated):
    x = _input()
    torch.testing.assert_close(emulated.selftest("shuffle", x, True), x.view(-1, 2).flip(1).reshape(-1))
    with pytest.raises(RuntimeError, match=r"warp \d+: 16 of its 32 lanes are at a __shfl_xor_sync"):
        emulated.selftest("shuffle", x, False)


def test_barrier_not_reached_by_every_thread_is_named(emulated):
    x = _input()
    torch.testing.assert_close(emulated.selftest("barrier", x, True), x)
    with pytest.raises(RuntimeError, match=r"32 of 256 threads wait at __syncthreads"):
        emulated.selftest("barrier", x, False)


def test_uninitialised_shared_memory_reads_as_nan(emulated):
    x = _input()
    torch.testing.assert_close(emulated.selftest("uninitialised", x, True), x)
    assert torch.isnan(emulated.selftest("uninitialised", x, False)).all()


@pytest.mark.parametrize("threads,shared,message", [
    (2048, 0, r"invalid configuration: block \(2048, 1, 1\)"),
    (256, 64 * 1024, r"65536 bytes of dynamic shared memory"),
    (100, 0, r"whole warps only"),
])
def test_launch_configurations_a_gpu_refuses(emulated, threads, shared, message):
    with pytest.raises(RuntimeError, match=message):
        emulated.selftest("copy", _input(), True, launch_threads=threads, shared_bytes=shared)


def test_grid_cap_runs_the_stride_loops(emulated, monkeypatch):
    x = _input()
    monkeypatch.setenv("MLLM_EMULATION_GRID_CAP", "3")
    torch.testing.assert_close(emulated.selftest("copy", x, True), x)  # grid-strided: every element
    unstrided = emulated.selftest("copy", x, False)
    assert torch.equal(unstrided[:3 * 256], x[:3 * 256]) and (unstrided[3 * 256:] == 12345.0).all()


def test_unknown_cuda_construct_is_named():
    from cuda_emulation.emulated_ext import emulated_source

    src = "#include <cuda_runtime.h>\n__global__ void k(float* o) {\n  __shared__ float t[4][4];\n}\n"
    with pytest.raises(ValueError, match=r"k\.cu:3: a shared-memory array the CUDA emulation cannot rewrite"):
        emulated_source(src, "k.cu")


def _csrc_calls(g):
    """Each csrc entry point on inputs with more rows (positions, problems) than the capped grid has blocks, a
    SwiGLU row wider than two blocks of columns, and an RMSNorm row too wide for shared memory."""
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x, res, w = r(7, 300), r(7, 300), r(300)
    calls = {
        "rms_norm_fwd": lambda e: e.rms_norm_fwd(x, w, 1e-5),
        "add_rms_norm_fwd": lambda e: e.add_rms_norm_fwd(x, res, w, 1e-5),
        "rms_norm_bwd": lambda e: e.rms_norm_bwd(res, x, w, e.rms_norm_fwd(x, w, 1e-5)[1]),
    }
    # rows over 40 KiB of fp32: the backward accumulates the weight gradient in global memory, not shared
    xw, gw, ww = r(3, 10300), r(3, 10300), r(10300)
    calls["rms_norm_bwd_wide"] = lambda e: e.rms_norm_bwd(gw, xw, ww, e.rms_norm_fwd(xw, ww, 1e-5)[1])
    t, angles = r(9, 2, 3, 16), r(9, 12)
    calls["rope_fwd"] = lambda e: e.rope_fwd(t, angles)
    calls["rope_bwd"] = lambda e: e.rope_bwd(t, angles)
    sw, sg = r(5, 2 * 1100), r(5, 1100)
    calls["swiglu_fwd"] = lambda e: e.swiglu_fwd(sw)
    calls["swiglu_bwd"] = lambda e: e.swiglu_bwd(sg, sw)
    scores, mask = r(2, 2, 6, 40), (torch.rand(2, 1, 6, 40, generator=g) < 0.3).to(torch.uint8)
    calls["softmax_fwd_causal"] = lambda e: e.softmax_fwd(scores, torch.empty(0, dtype=torch.uint8), 2, 0.7, True)
    calls["softmax_fwd_masked"] = lambda e: e.softmax_fwd(scores, mask, 2, 0.7, False)
    probs = torch.softmax(scores, -1)
    calls["softmax_bwd"] = lambda e: e.softmax_bwd(scores, probs, 0.7)
    logits, target = r(6, 50), torch.tensor([0, 3, 46, -1, 7, 44])
    calls["ce_stats"] = lambda e: e.ce_stats(logits, target, 47)
    lse, gs = r(6), r(6)
    calls["ce_grad"] = lambda e: e.ce_grad(logits, target, 47, lse, gs, 0.1, 47.0)
    q, k, v, rates = r(2, 3, 21, 8) * 0.5, r(2, 3, 21, 8) * 0.5, r(2, 3, 21, 6), torch.rand(3, generator=g)
    calls["lightning_attention_fwd"] = lambda e: e.lightning_attention_fwd(q, k, v, rates, 8)
    calls["lightning_attention_bwd"] = lambda e: e.lightning_attention_bwd(v, q, k, v, rates, 8)
    return calls


@pytest.mark.parametrize("cap", ["1", "2"])
def test_csrc_kernels_with_a_capped_grid_equal_the_cpu_kernels(emulated, cpu_ext, monkeypatch, cap):
    calls = _csrc_calls(torch.Generator().manual_seed(5))
    expected = {name: call(cpu_ext) for name, call in calls.items()}
    monkeypatch.setenv("MLLM_EMULATION_GRID_CAP", cap)
    for name, call in calls.items():
        got = call(emulated)
        got, want = (got, expected[name]) if isinstance(got, (list, tuple)) else ([got], [expected[name]])
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} (grid cap {cap}): {m}")



def test_fused_gpt_model_on_the_emulated_cuda_kernels_equals_the_cpu_kernels():
    """A whole fused-spec GPTModel (2 layers, GQA, RoPE, SwiGLU, RMSNorm with the fused residual add, the fused
    vocab-parallel cross entropy) in fp32: loss and every parameter gradient with the CUDA kernels on the emulation
    equal those with the C++ CPU kernels, and every kernel ran. Megatron-core hands the kernels its own layouts and
    strides here, which the op tests only imitate. One fresh CPU process."""
    from megatron_process import run

    tests_dir = Path(__file__).resolve().parents[1]
    proc = run(f"""
        import sys, collections
        sys.path.insert(0, {str(tests_dir)!r})
        from megatron.core.models.gpt import GPTModel
        from megatron.core.transformer import TransformerConfig
        from megatron_llm.models.fused_spec import fused_layer_spec, install_fused_ops
        from megatron_llm.ops import build
        from cuda_emulation import emulated_ext

        install_fused_ops()
        calls = collections.Counter()

        class Counting:  # the extension module, counting the kernels the ops call
            def __init__(self, module):
                self.module = module
            def __getattr__(self, name):
                calls[name] += 1
                return getattr(self.module, name)

        cpu_ext, why = build.load()
        assert cpu_ext is not None, why
        tc = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                               ffn_hidden_size=96, gated_linear_unit=True, activation_func=torch.nn.functional.silu,
                               normalization="RMSNorm", add_bias_linear=False, hidden_dropout=0.0,
                               attention_dropout=0.0, masked_softmax_fusion=False, bias_activation_fusion=True,
                               apply_rope_fusion=True, cross_entropy_loss_fusion=True,
                               cross_entropy_fusion_impl="native", params_dtype=torch.float32,
                               layernorm_epsilon=1e-5)
        torch.manual_seed(0)
        model = GPTModel(config=tc, transformer_layer_spec=fused_layer_spec(), vocab_size=128,
                         max_sequence_length=16, position_embedding_type="rope")
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, 128, (3, 16), generator=g)
        labels = torch.randint(0, 128, (3, 16), generator=g)
        positions = torch.arange(16).expand(3, 16)

        def loss_and_grads(ext):
            build.load = lambda: (Counting(ext), "test")
            model.zero_grad(set_to_none=True)
            loss = model(tokens, positions, None, labels=labels).mean()
            loss.backward()
            return [loss.detach()] + [p.grad.clone() for _, p in sorted(model.named_parameters())]

        want = loss_and_grads(cpu_ext)
        calls.clear()
        got = loss_and_grads(emulated_ext.load())
        for name in ("rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd", "rope_fwd", "rope_bwd", "swiglu_fwd",
                     "swiglu_bwd", "ce_stats", "ce_grad"):
            assert calls[name] > 0, (name, dict(calls))
        assert len(got) == len(want) == 1 + len(list(model.parameters()))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        print("compared", len(got), dict(calls))
    """)
    assert "compared" in proc.stdout
