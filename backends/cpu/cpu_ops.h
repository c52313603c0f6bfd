// The CPU backend: rt::Ops on Device::CPU. fp32 compute (Eigen GEMM, SSE4.2 at most), threads
// via OpenMP (OMP_NUM_THREADS caps them; the default is one per core).
//
//   #include "cpu/cpu_ops.h"
//   std::unique_ptr<rt::Ops> ops = rt::make_cpu_ops();
//
// The kernels themselves are free functions in cpu/kernels.h (one file per op family).
#pragma once

#include <initializer_list>
#include <memory>

#include "rt/sdk/ops.h"

namespace rt {

class CpuOps final : public Ops {
 public:
  Device device() const override { return Device::CPU; }

  // 64-byte aligned host memory owned by Tensor::storage; contents uninitialized.
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override;
  void copy(TensorView src, TensorView dst) override;
  void fill(TensorView dst, float value) override;
  void embedding(TensorView table, TensorView ids, TensorView out) override;
  void linear(TensorView x, TensorView w, TensorView bias, TensorView y) override;
  void rmsnorm(TensorView x, TensorView w, float eps, TensorView y) override;
  void rope(TensorView x, int64_t pos0, double theta) override;
  void attention(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) override;
  void add(TensorView a, TensorView b, TensorView out) override;
  void swiglu(TensorView gate, TensorView up, TensorView out) override;
};

std::unique_ptr<Ops> make_cpu_ops();

}  // namespace rt
