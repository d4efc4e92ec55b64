// Shared by the C++ CPU and the CUDA kernels: host+device qualifiers, dtype codes, accumulation types and the
// load/store conversions (the CUDA half/bfloat16 ones are specialised in csrc/cuda/dispatch.cuh, since torch's
// nvcc flags switch off their implicit conversions). No torch and no CUDA headers here.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MLLM_HD __host__ __device__ __forceinline__
#else
#define MLLM_HD inline
#endif

namespace mllm {

// dtype codes passed from the bindings to the launchers
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

// fp32 accumulation, fp64 for fp64 inputs (gradcheck)
template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <class T> struct Conv {
  template <class A> static MLLM_HD A load(T v) { return static_cast<A>(v); }
  template <class A> static MLLM_HD T store(A v) { return static_cast<T>(v); }
};

template <class A, class T> MLLM_HD A load(const T* p, int64_t i) { return Conv<T>::template load<A>(p[i]); }
template <class T, class A> MLLM_HD void store(T* p, int64_t i, A v) { p[i] = Conv<T>::template store<A>(v); }

template <class A> MLLM_HD A neg_inf() { return static_cast<A>(-INFINITY); }

// online softmax: running max m and sum s of exp(x - m)
template <class A> MLLM_HD void online_add(A& m, A& s, A x) {
  if (x > m) {
    s = s * exp(m - x) + A(1);
    m = x;
  } else {
    s += exp(x - m);
  }
}

template <class A> MLLM_HD void online_merge(A& m, A& s, A m2, A s2) {
  if (m2 == neg_inf<A>()) return;
  if (m == neg_inf<A>()) {
    m = m2;
    s = s2;
    return;
  }
  A big = m > m2 ? m : m2;
  s = s * exp(m - big) + s2 * exp(m2 - big);
  m = big;
}

}  // namespace mllm
