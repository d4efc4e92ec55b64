// The kernels' entry points: raw pointers, sizes and a dtype code (mllm::DType), the same for the C++ CPU
// launchers (namespace mllm::cpu, csrc/cpu/) and the CUDA ones (mllm::cuda, csrc/cuda/, plus the stream as void*).
// All row-major and contiguous. Free of torch and CUDA headers, so .cu files compile with a bare CUDA toolkit.
#pragma once

#include <stdint.h>

#define MLLM_LAUNCHERS(STREAM)                                                                                    \
  /* y = rms_norm(x or x + residual); total = x + residual when residual != nullptr; rstd [rows] (acc type) */    \
  void rms_norm_fwd(int dtype, const void* x, const void* residual, void* total, const void* w, void* y,          \
                    void* rstd, int64_t rows, int64_t n, double eps STREAM);                                      \
  /* dx [rows, n]; dw_partial [parts, n] acc type: per-worker partial weight gradients (summed by the caller) */  \
  void rms_norm_bwd(int dtype, const void* g, const void* x, const void* w, const void* rstd, void* dx,           \
                    void* dw_partial, int64_t parts, int64_t rows, int64_t n STREAM);                             \
  /* rows of [s, bh, d]; angles [s, d_rot] (acc type) */                                                         \
  void rope(int dtype, const void* in, void* out, const void* angles, int64_t s, int64_t bh, int64_t d,           \
            int64_t d_rot, bool backward STREAM);                                                                 \
  void swiglu_fwd(int dtype, const void* x, void* y, int64_t rows, int64_t f STREAM);                             \
  void swiglu_bwd(int dtype, const void* g, const void* x, void* dx, int64_t rows, int64_t f STREAM);             \
  /* x [rows = batches * heads * sq, sk]; mask [mask_batches, sq, sk] or nullptr */                               \
  void softmax_fwd(int dtype, const void* x, const uint8_t* mask, int64_t mask_batches, void* y, int64_t rows,    \
                   int64_t heads, int64_t sq, int64_t sk, double scale, bool causal STREAM);                      \
  void softmax_bwd(int dtype, const void* g, const void* y, void* dx, int64_t rows, int64_t sk,                   \
                   double scale STREAM);                                                                          \
  /* stats [rows, 4] acc type: shard max, sum exp(x - max), target logit (0 when off-shard: target < 0), sum */    \
  void ce_stats(int dtype, const void* x, const int64_t* target, void* stats, int64_t rows, int64_t n,            \
                int64_t n_valid STREAM);                                                                          \
  void ce_grad(int dtype, const void* x, const int64_t* target, const void* lse, const void* gscale, void* grad,  \
               int64_t rows, int64_t n, int64_t n_valid, double smoothing, double inv_k STREAM);               \
  /* lightning attention over bh = batch * heads problems: q, k [bh, n, d], v, o [bh, n, e]; rates [heads] and   \
     workspace [bh, block^2 + d * e + e] acc type; reverse: anti-causal (the backward's dk, dv) */           \
  void lightning_attention(int dtype, const void* q, const void* k, const void* v, void* o, const void* rates,     \
                           void* workspace, int64_t bh, int64_t heads, int64_t n, int64_t d, int64_t e,           \
                           int64_t block, bool reverse STREAM);

#define MLLM_NO_STREAM
#define MLLM_WITH_STREAM , void* stream

namespace mllm {
namespace cpu {
MLLM_LAUNCHERS(MLLM_NO_STREAM)
}  // namespace cpu
namespace cuda {
MLLM_LAUNCHERS(MLLM_WITH_STREAM)
}  // namespace cuda
}  // namespace mllm
