// linear on cuBLASLt: y[N, out] = x[N, in] W^T (+ b), fp32 accumulation (CUBLAS_COMPUTE_32F, no
// TF32, so f32 results stay within rounding of the CPU's). GemmContext owns the cuBLASLt handle,
// a 32 MiB workspace and a per-shape cache of matmul descriptors and the heuristic's algorithm,
// so a repeated shape (every layer, every decode step) costs no descriptor setup or search.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <map>
#include <mutex>

#include "rt/sdk/tensor.h"

namespace rt::cuda {

class GemmContext {
 public:
  GemmContext();
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  // Supported natively: bf16 x bf16 -> bf16 or f32, f16 x f16 -> f16 or f32, f32 x f32 -> f32.
  // Other combinations convert x to W's dtype (and/or go through an f32 output) first.
  void linear(TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream);

  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool bias_fused = false;
  };
  using Key = std::array<int64_t, 14>;
  const Plan& plan(const Key& key, bool want_bias);
  void gemm(const TensorView& x, const TensorView& w, const TensorView& bias, const TensorView& y,
            cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::mutex mu_;
  std::map<Key, Plan> plans_;
};

void linear_forward(GemmContext& ctx, TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream);

}  // namespace rt::cuda
