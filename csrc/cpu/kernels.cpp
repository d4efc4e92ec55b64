// C++ CPU kernels: a row (or a chunk of rows) per task of at::parallel_for, the arithmetic from csrc/include/mllm/
// called with one worker per row (start 0, stride 1) — the same functions the CUDA kernels call per thread.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <stdexcept>
#include <vector>

#include "mllm/cross_entropy.h"
#include "mllm/launchers.h"
#include "mllm/lightning_attention.h"
#include "mllm/rms_norm.h"
#include "mllm/rope.h"
#include "mllm/softmax.h"
#include "mllm/swiglu.h"

namespace mllm {
namespace cpu {
namespace {

template <class F> void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case kF32: f(float{}); break;
    case kF16: f(c10::Half{}); break;
    case kBF16: f(c10::BFloat16{}); break;
    case kF64: f(double{}); break;
    default: throw std::invalid_argument("mllm: unsupported dtype code");
  }
}

// rows per parallel task: enough work per task to amortise the scheduling
inline int64_t grain(int64_t row_len) { return row_len >= 4096 ? 1 : (4096 + row_len - 1) / row_len; }

}  // namespace

void rms_norm_fwd(int dtype, const void* x_, const void* res_, void* total_, const void* w_, void* y_, void* rstd_,
                  int64_t rows, int64_t n, double eps) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* x = static_cast<const T*>(x_);
    const T* res = static_cast<const T*>(res_);
    T* total = static_cast<T*>(total_);
    const A* w = static_cast<const A*>(w_);
    T* y = static_cast<T*>(y_);
    A* rstd = static_cast<A*>(rstd_);
    at::parallel_for(0, rows, grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T* src = x + r * n;
        A ss;
        if (res != nullptr) {
          ss = rms_partial_add_sumsq<T, A>(src, res + r * n, total + r * n, n, 0, 1);
          src = total + r * n;
        } else {
          ss = rms_partial_sumsq<T, A>(src, n, 0, 1);
        }
        A rs = rms_rstd<A>(ss, n, static_cast<A>(eps));
        rstd[r] = rs;
        rms_partial_apply<T, A>(src, w, y + r * n, rs, n, 0, 1);
      }
    });
  });
}

void rms_norm_bwd(int dtype, const void* g_, const void* x_, const void* w_, const void* rstd_, void* dx_,
                  void* dw_partial_, int64_t parts, int64_t rows, int64_t n) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* g = static_cast<const T*>(g_);
    const T* x = static_cast<const T*>(x_);
    const A* w = static_cast<const A*>(w_);
    const A* rstd = static_cast<const A*>(rstd_);
    T* dx = static_cast<T*>(dx_);
    A* dw = static_cast<A*>(dw_partial_);  // zeroed by the caller; part p owns rows [p*per, (p+1)*per)
    const int64_t per = (rows + parts - 1) / parts;
    at::parallel_for(0, parts, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        for (int64_t r = p * per; r < rows && r < (p + 1) * per; ++r) {
          A dot = rms_partial_dot<T, A>(g + r * n, x + r * n, w, n, 0, 1);
          rms_partial_backward<T, A>(g + r * n, x + r * n, w, dx + r * n, dw + p * n, rstd[r], dot, n, 0, 1);
        }
      }
    });
  });
}

void rope(int dtype, const void* in_, void* out_, const void* angles_, int64_t s, int64_t bh, int64_t d,
          int64_t d_rot, bool backward) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* in = static_cast<const T*>(in_);
    T* out = static_cast<T*>(out_);
    const A* angles = static_cast<const A*>(angles_);
    at::parallel_for(0, s, 1, [&](int64_t lo, int64_t hi) {
      std::vector<A> c(d_rot), sn(d_rot);
      for (int64_t p = lo; p < hi; ++p) {
        rope_angles<A>(angles + p * d_rot, c.data(), sn.data(), d_rot, 0, 1);
        for (int64_t r = 0; r < bh; ++r) {
          const int64_t off = (p * bh + r) * d;
          rope_row<T, A>(in + off, out + off, c.data(), sn.data(), d, d_rot, backward, 0, 1);
        }
      }
    });
  });
}

void swiglu_fwd(int dtype, const void* x_, void* y_, int64_t rows, int64_t f) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* x = static_cast<const T*>(x_);
    T* y = static_cast<T*>(y_);
    at::parallel_for(0, rows, grain(f), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t j = 0; j < f; ++j)
          store(y, r * f + j, swiglu_value<A>(load<A>(x, r * 2 * f + j), load<A>(x, r * 2 * f + f + j)));
    });
  });
}

void swiglu_bwd(int dtype, const void* g_, const void* x_, void* dx_, int64_t rows, int64_t f) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* g = static_cast<const T*>(g_);
    const T* x = static_cast<const T*>(x_);
    T* dx = static_cast<T*>(dx_);
    at::parallel_for(0, rows, grain(f), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t j = 0; j < f; ++j) {
          A da, db;
          swiglu_grad<A>(load<A>(x, r * 2 * f + j), load<A>(x, r * 2 * f + f + j), load<A>(g, r * f + j), da, db);
          store(dx, r * 2 * f + j, da);
          store(dx, r * 2 * f + f + j, db);
        }
    });
  });
}

void softmax_fwd(int dtype, const void* x_, const uint8_t* mask, int64_t mask_batches, void* y_, int64_t rows,
                 int64_t heads, int64_t sq, int64_t sk, double scale_, bool causal) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* x = static_cast<const T*>(x_);
    T* y = static_cast<T*>(y_);
    const A scale = static_cast<A>(scale_);
    at::parallel_for(0, rows, grain(sk), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t i = r % sq;
        const uint8_t* mrow = nullptr;
        if (mask != nullptr) mrow = mask + ((mask_batches == 1 ? 0 : r / (heads * sq)) * sq + i) * sk;
        const int64_t active = causal ? (i + 1 < sk ? i + 1 : sk) : sk;
        const T* xr = x + r * sk;
        A m = softmax_partial_max<T, A>(xr, mrow, active, scale, 0, 1);
        A s = softmax_partial_sum<T, A>(xr, mrow, active, scale, m, 0, 1);
        softmax_partial_write<T, A>(xr, mrow, y + r * sk, active, sk, scale, m, A(1) / s, 0, 1);
      }
    });
  });
}

void softmax_bwd(int dtype, const void* g_, const void* y_, void* dx_, int64_t rows, int64_t sk, double scale_) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* g = static_cast<const T*>(g_);
    const T* y = static_cast<const T*>(y_);
    T* dx = static_cast<T*>(dx_);
    at::parallel_for(0, rows, grain(sk), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        A dot = softmax_partial_dot<T, A>(g + r * sk, y + r * sk, sk, 0, 1);
        softmax_partial_backward<T, A>(g + r * sk, y + r * sk, dx + r * sk, sk, dot, static_cast<A>(scale_), 0, 1);
      }
    });
  });
}

void ce_stats(int dtype, const void* x_, const int64_t* target, void* stats_, int64_t rows, int64_t n,
              int64_t n_valid) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* x = static_cast<const T*>(x_);
    A* stats = static_cast<A*>(stats_);
    at::parallel_for(0, rows, grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        A m = neg_inf<A>(), s = 0, sum = 0;
        ce_partial_stats<T, A>(x + r * n, n_valid, m, s, sum, 0, 1);
        stats[r * 4 + 0] = m;
        stats[r * 4 + 1] = s;
        stats[r * 4 + 2] = target[r] >= 0 ? load<A>(x, r * n + target[r]) : A(0);
        stats[r * 4 + 3] = sum;
      }
    });
  });
}

void ce_grad(int dtype, const void* x_, const int64_t* target, const void* lse_, const void* gscale_, void* grad_,
             int64_t rows, int64_t n, int64_t n_valid, double smoothing, double inv_k) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* x = static_cast<const T*>(x_);
    const A* lse = static_cast<const A*>(lse_);
    const A* gscale = static_cast<const A*>(gscale_);
    T* grad = static_cast<T*>(grad_);
    at::parallel_for(0, rows, grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        ce_partial_grad<T, A>(x + r * n, grad + r * n, n_valid, n, target[r], lse[r], gscale[r],
                              static_cast<A>(smoothing), static_cast<A>(inv_k), 0, 1);
    });
  });
}

void lightning_attention(int dtype, const void* q_, const void* k_, const void* v_, void* o_, const void* rates_,
                         void* workspace_, int64_t bh, int64_t heads, int64_t n, int64_t d, int64_t e, int64_t block,
                         bool reverse) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* q = static_cast<const T*>(q_);
    const T* k = static_cast<const T*>(k_);
    const T* v = static_cast<const T*>(v_);
    T* o = static_cast<T*>(o_);
    const A* rates = static_cast<const A*>(rates_);
    A* ws = static_cast<A*>(workspace_);
    const int64_t ws_size = block * block + d * e + e;
    at::parallel_for(0, bh, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        A* P = ws + p * ws_size;
        A* S = P + block * block;
        A* R = S + d * e;
        const A rate = rates[p % heads];
        la_zero<A>(S, d * e, 0, 1);
        for (int64_t s0 = 0; s0 < n; s0 += block) {
          const int64_t m = n - s0 < block ? n - s0 : block;
          la_block_scores<T, A>(q + p * n * d, k + p * n * d, P, s0, m, n, d, rate, reverse, 0, 1);
          la_block_columns<T, A>(q + p * n * d, k + p * n * d, v + p * n * e, o + p * n * e, P, S, R, s0, m, n, d,
                                 e, rate, reverse, 0, 1);
        }
      }
    });
  });
}

}  // namespace cpu
}  // namespace mllm
