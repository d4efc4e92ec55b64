// The extension module: whatever every csrc/ .cpp registered (mllm/registry.h), plus build facts.
#include "mllm/registry.h"

#ifndef MLLM_SOURCE_HASH
#define MLLM_SOURCE_HASH unknown
#endif
#define MLLM_STR_(x) #x
#define MLLM_STR(x) MLLM_STR_(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megatron_llm csrc kernels (see megatron_llm/ops)";
#ifdef MLLM_NO_CUDA
  m.def("with_cuda", []() { return false; }, "whether the CUDA kernels are built in");
#else
  m.def("with_cuda", []() { return true; }, "whether the CUDA kernels are built in");
#endif
  m.def("source_hash", []() { return std::string(MLLM_STR(MLLM_SOURCE_HASH)); }, "hash of the csrc/ sources built");
  for (auto bind : mllm::binders()) bind(m);
}
