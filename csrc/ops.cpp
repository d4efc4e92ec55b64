// Tensor-level entry points of the extension: check and allocate with ATen, then call the C++ CPU launcher or,
// for CUDA tensors in a CUDA build, the CUDA launcher on the current stream. Bound into the module by bindings.cpp
// (through the registry, like any other csrc/ family).
#include <ATen/ATen.h>

#ifndef MLLM_NO_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <optional>
#include <vector>

#include "mllm/common.h"
#include "mllm/launchers.h"
#include "mllm/registry.h"

namespace mllm {
namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    case at::kDouble: return kF64;
    default: TORCH_CHECK(false, "megatron_llm ops: unsupported dtype ", t.scalar_type(),
                         " (float32, float16, bfloat16, float64)");
  }
  return -1;
}

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

#if defined(MLLM_EMULATED_CUDA)
// tests only (tests/cuda_emulation/): CPU tensors go to the CUDA launchers, built for a CPU emulation of CUDA
#define MLLM_CALL(t, fn, ...) ::mllm::cuda::fn(__VA_ARGS__, nullptr)
#define MLLM_CUDA_KERNELS(t) true
#elif !defined(MLLM_NO_CUDA)
#define MLLM_CUDA_KERNELS(t) (t).is_cuda()
#define MLLM_CALL(t, fn, ...)                                                          \
  do {                                                                                 \
    if ((t).is_cuda()) {                                                               \
      c10::cuda::CUDAGuard guard((t).device());                                        \
      ::mllm::cuda::fn(__VA_ARGS__, c10::cuda::getCurrentCUDAStream().stream());       \
    } else {                                                                           \
      ::mllm::cpu::fn(__VA_ARGS__);                                                    \
    }                                                                                  \
  } while (0)
#else
#define MLLM_CUDA_KERNELS(t) false
#define MLLM_CALL(t, fn, ...)                                                                         \
  do {                                                                                                \
    TORCH_CHECK(!(t).is_cuda(), "megatron_llm ops: this extension was built without CUDA");           \
    ::mllm::cpu::fn(__VA_ARGS__);                                                                     \
  } while (0)
#endif

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), "megatron_llm ops: ", name, " must be a contiguous [rows, n] tensor");
}

std::vector<at::Tensor> rms_forward(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                    const at::Tensor& weight, double eps) {
  check_rows(x, "x");
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor w = weight.to(acc_type(x)).contiguous();
  TORCH_CHECK(w.numel() == n, "megatron_llm ops: rms_norm weight has ", w.numel(), " elements, rows have ", n);
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({rows}, x.options().dtype(acc_type(x)));
  at::Tensor total;
  const void* rptr = nullptr;
  void* tptr = nullptr;
  if (residual) {
    check_rows(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type(),
                "megatron_llm ops: residual must match x");
    total = at::empty_like(x);
    rptr = residual->data_ptr();
    tptr = total.data_ptr();
  }
  MLLM_CALL(x, rms_norm_fwd, dtype_code(x), x.data_ptr(), rptr, tptr, w.data_ptr(), y.data_ptr(), rstd.data_ptr(),
            rows, n, eps);
  if (residual) return {y, total, rstd};
  return {y, rstd};
}

std::vector<at::Tensor> rms_norm_fwd(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return rms_forward(x.contiguous(), std::nullopt, weight, eps);
}

std::vector<at::Tensor> add_rms_norm_fwd(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                         double eps) {
  return rms_forward(x.contiguous(), residual.contiguous(), weight, eps);
}

std::vector<at::Tensor> rms_norm_bwd(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& weight,
                                     const at::Tensor& rstd) {
  at::Tensor g = g_.to(x_.scalar_type()).contiguous(), x = x_.contiguous();
  check_rows(x, "x");
  TORCH_CHECK(g.sizes() == x.sizes(), "megatron_llm ops: rms_norm grad and input shapes differ");
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor w = weight.to(acc_type(x)).contiguous();
  at::Tensor dx = at::empty_like(x);
  // fixed number of partial weight-gradient rows: the sum order does not depend on the thread count
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(rows, MLLM_CUDA_KERNELS(x) ? 512 : 32));
  at::Tensor dw_partial = at::zeros({parts, n}, x.options().dtype(acc_type(x)));
  MLLM_CALL(x, rms_norm_bwd, dtype_code(x), g.data_ptr(), x.data_ptr(), w.data_ptr(), rstd.contiguous().data_ptr(),
            dx.data_ptr(), dw_partial.data_ptr(), parts, rows, n);
  return {dx, dw_partial.sum(0)};
}

at::Tensor rope_apply(const at::Tensor& t_, const at::Tensor& angles_, bool backward) {
  at::Tensor t = t_.contiguous();
  TORCH_CHECK(t.dim() == 4, "megatron_llm ops: rope input must be [s, b, h, d]");
  at::Tensor angles = angles_.to(acc_type(t)).contiguous();
  const int64_t s = t.size(0), bh = t.size(1) * t.size(2), d = t.size(3), d_rot = angles.size(1);
  TORCH_CHECK(angles.dim() == 2 && angles.size(0) == s && d_rot <= d && d_rot % 2 == 0,
              "megatron_llm ops: rope angles must be [s, d_rot], d_rot even and <= d");
  at::Tensor out = at::empty_like(t);
  MLLM_CALL(t, rope, dtype_code(t), t.data_ptr(), out.data_ptr(), angles.data_ptr(), s, bh, d, d_rot, backward);
  return out;
}

at::Tensor rope_fwd(const at::Tensor& t, const at::Tensor& angles) { return rope_apply(t, angles, false); }
at::Tensor rope_bwd(const at::Tensor& g, const at::Tensor& angles) { return rope_apply(g, angles, true); }

at::Tensor swiglu_fwd(const at::Tensor& x_) {
  at::Tensor x = x_.contiguous();
  check_rows(x, "x");
  TORCH_CHECK(x.size(1) % 2 == 0, "megatron_llm ops: swiglu input's last dim must be even");
  const int64_t rows = x.size(0), f = x.size(1) / 2;
  at::Tensor y = at::empty({rows, f}, x.options());
  MLLM_CALL(x, swiglu_fwd, dtype_code(x), x.data_ptr(), y.data_ptr(), rows, f);
  return y;
}

at::Tensor swiglu_bwd(const at::Tensor& g_, const at::Tensor& x_) {
  at::Tensor x = x_.contiguous(), g = g_.to(x_.scalar_type()).contiguous();
  check_rows(x, "x");
  const int64_t rows = x.size(0), f = x.size(1) / 2;
  TORCH_CHECK(g.dim() == 2 && g.size(0) == rows && g.size(1) == f, "megatron_llm ops: swiglu grad shape");
  at::Tensor dx = at::empty_like(x);
  MLLM_CALL(x, swiglu_bwd, dtype_code(x), g.data_ptr(), x.data_ptr(), dx.data_ptr(), rows, f);
  return dx;
}

at::Tensor softmax_fwd(const at::Tensor& x_, const at::Tensor& mask, int64_t heads, double scale, bool causal) {
  at::Tensor x = x_.contiguous();
  TORCH_CHECK(x.dim() >= 2, "megatron_llm ops: softmax input must be [..., sq, sk]");
  const int64_t sq = x.size(-2), sk = x.size(-1), rows = x.numel() / sk;
  const uint8_t* mptr = nullptr;
  int64_t mask_batches = 0;
  if (mask.numel() > 0) {
    TORCH_CHECK(mask.scalar_type() == at::kByte && mask.is_contiguous() && mask.dim() == 4 && mask.size(1) == 1 &&
                    mask.size(2) == sq && mask.size(3) == sk,
                "megatron_llm ops: softmax mask must be a contiguous uint8 [b or 1, 1, sq, sk]");
    mask_batches = mask.size(0);
    TORCH_CHECK(mask_batches == 1 || mask_batches * heads * sq == rows, "megatron_llm ops: mask batch size");
    mptr = mask.data_ptr<uint8_t>();
  }
  at::Tensor y = at::empty_like(x);
  MLLM_CALL(x, softmax_fwd, dtype_code(x), x.data_ptr(), mptr, mask_batches, y.data_ptr(), rows, heads, sq, sk,
            scale, causal);
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& g_, const at::Tensor& y_, double scale) {
  at::Tensor y = y_.contiguous(), g = g_.to(y_.scalar_type()).contiguous();
  TORCH_CHECK(g.sizes() == y.sizes(), "megatron_llm ops: softmax grad and output shapes differ");
  const int64_t sk = y.size(-1), rows = y.numel() / sk;
  at::Tensor dx = at::empty_like(y);
  MLLM_CALL(y, softmax_bwd, dtype_code(y), g.data_ptr(), y.data_ptr(), dx.data_ptr(), rows, sk, scale);
  return dx;
}

at::Tensor ce_stats(const at::Tensor& logits_, const at::Tensor& target_local, int64_t n_valid) {
  at::Tensor logits = logits_.contiguous(), target = target_local.to(at::kLong).contiguous();
  check_rows(logits, "logits");
  const int64_t rows = logits.size(0), n = logits.size(1);
  TORCH_CHECK(target.numel() == rows && n_valid >= 0 && n_valid <= n, "megatron_llm ops: ce_stats target/n_valid");
  at::Tensor stats = at::empty({rows, 4}, logits.options().dtype(acc_type(logits)));
  MLLM_CALL(logits, ce_stats, dtype_code(logits), logits.data_ptr(), target.data_ptr<int64_t>(), stats.data_ptr(),
            rows, n, n_valid);
  return stats;
}

at::Tensor ce_grad(const at::Tensor& logits_, const at::Tensor& target_local, int64_t n_valid, const at::Tensor& lse,
                   const at::Tensor& gscale, double smoothing, double k) {
  at::Tensor logits = logits_.contiguous(), target = target_local.to(at::kLong).contiguous();
  check_rows(logits, "logits");
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor l = lse.to(acc_type(logits)).contiguous(), gs = gscale.to(acc_type(logits)).contiguous();
  TORCH_CHECK(l.numel() == rows && gs.numel() == rows, "megatron_llm ops: ce_grad lse/gscale size");
  at::Tensor grad = at::empty_like(logits);
  MLLM_CALL(logits, ce_grad, dtype_code(logits), logits.data_ptr(), target.data_ptr<int64_t>(), l.data_ptr(),
            gs.data_ptr(), grad.data_ptr(), rows, n, n_valid, smoothing, 1.0 / k);
  return grad;
}


// lightning attention: q, k [b, h, n, d], v [b, h, n, e] of one dtype, rates [h]; the output [b, h, n, e]
void check_lightning(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rates) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.sizes().slice(0, 3) == q.sizes().slice(0, 3),
              "megatron_llm ops: lightning attention expects q, k [b, h, n, d] and v [b, h, n, e]");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "megatron_llm ops: lightning attention q, k, v must share one dtype");
  TORCH_CHECK(rates.numel() == q.size(1), "megatron_llm ops: lightning attention needs one decay rate per head");
}

// out = LA(a, b, c) causal (reverse: anti-causal); a, b [b, h, n, d_ab], c [b, h, n, e]
at::Tensor lightning_call(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const at::Tensor& rates,
                          int64_t block, bool reverse) {
  const int64_t heads = a.size(1), bh = a.size(0) * heads, n = a.size(2), d = a.size(3), e = c.size(3);
  at::Tensor out = at::empty(c.sizes(), c.options());
  const int64_t B = std::max<int64_t>(1, std::min<int64_t>(block, n));
  at::Tensor ws = at::empty({bh, B * B + d * e + e}, a.options().dtype(acc_type(a)));
  if (bh == 0 || n == 0) return out.zero_();
  MLLM_CALL(a, lightning_attention, dtype_code(a), a.data_ptr(), b.data_ptr(), c.data_ptr(), out.data_ptr(),
            rates.data_ptr(), ws.data_ptr(), bh, heads, n, d, e, B, reverse);
  return out;
}

at::Tensor lightning_attention_fwd(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                   const at::Tensor& rates_, int64_t block) {
  TORCH_CHECK(block >= 1, "megatron_llm ops: lightning attention block size must be positive");
  at::Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  check_lightning(q, k, v, rates_);
  at::Tensor rates = rates_.to(q.device(), acc_type(q)).contiguous();
  return lightning_call(q, k, v, rates, block, false);
}

// dq = LA(do, v, k); dk = anti-causal LA(v, do, q); dv = anti-causal LA(k, q, do)
std::vector<at::Tensor> lightning_attention_bwd(const at::Tensor& g_, const at::Tensor& q_, const at::Tensor& k_,
                                                const at::Tensor& v_, const at::Tensor& rates_, int64_t block) {
  at::Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  check_lightning(q, k, v, rates_);
  at::Tensor g = g_.to(q.scalar_type()).contiguous();
  TORCH_CHECK(g.sizes() == v.sizes(), "megatron_llm ops: lightning attention grad and output shapes differ");
  at::Tensor rates = rates_.to(q.device(), acc_type(q)).contiguous();
  return {lightning_call(g, v, k, rates, block, false), lightning_call(v, g, q, rates, block, true),
          lightning_call(k, q, g, rates, block, true)};
}

void bind(pybind11::module_& m) {
  m.def("rms_norm_fwd", &rms_norm_fwd, "RMSNorm forward -> [y, rstd]");
  m.def("add_rms_norm_fwd", &add_rms_norm_fwd, "residual add + RMSNorm forward -> [y, x + residual, rstd]");
  m.def("rms_norm_bwd", &rms_norm_bwd, "RMSNorm backward -> [dx, dweight (fp32)]");
  m.def("rope_fwd", &rope_fwd, "rotate-half RoPE on [s, b, h, d] with angles [s, d_rot]");
  m.def("rope_bwd", &rope_bwd, "RoPE backward (transposed rotation)");
  m.def("swiglu_fwd", &swiglu_fwd, "silu(first half) * second half");
  m.def("swiglu_bwd", &swiglu_bwd, "SwiGLU backward");
  m.def("softmax_fwd", &softmax_fwd, "scaled (masked / causal) softmax");
  m.def("softmax_bwd", &softmax_bwd, "scaled softmax backward");
  m.def("ce_stats", &ce_stats, "cross-entropy shard stats [rows, 4]: max, sum exp, target logit, sum");
  m.def("ce_grad", &ce_grad, "cross-entropy gradient of a logits shard");
  m.def("lightning_attention_fwd", &lightning_attention_fwd, "decayed causal linear attention, block-wise");
  m.def("lightning_attention_bwd", &lightning_attention_bwd, "lightning attention backward -> [dq, dk, dv]");
}

MLLM_REGISTER_BINDINGS(bind);

}  // namespace
}  // namespace mllm
