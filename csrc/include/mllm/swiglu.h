// SwiGLU element arithmetic: y = silu(a) * b with a the first and b the second half of a row (megatron-core's
// chunk order).
#pragma once

#include "mllm/common.h"

namespace mllm {

template <class A> MLLM_HD A sigmoid(A a) { return A(1) / (A(1) + exp(-a)); }

template <class A> MLLM_HD A swiglu_value(A a, A b) { return a * sigmoid(a) * b; }

// d/da (a sig(a) b) = b sig(a) (1 + a (1 - sig(a))), d/db = a sig(a)
template <class A> MLLM_HD void swiglu_grad(A a, A b, A g, A& da, A& db) {
  A sg = sigmoid(a);
  da = g * b * sg * (A(1) + a * (A(1) - sg));
  db = g * a * sg;
}

}  // namespace mllm
