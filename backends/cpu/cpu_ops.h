// The CPU backend: rt::Ops on Device::CPU. fp32 compute (Eigen GEMM, SSE4.2 at most), threads
// via OpenMP (OMP_NUM_THREADS caps them; the default is one per core). Made with DType::F64, it
// computes in double throughout (activation_dtype() == accum_dtype() == F64): the reference for
// finite-difference gradient checks of training code.
//
//   #include "cpu/cpu_ops.h"
//   std::unique_ptr<rt::Ops> ops = rt::make_cpu_ops();            // f32
//   std::unique_ptr<rt::Ops> ref = rt::make_cpu_ops(rt::DType::F64);
//
// The kernels themselves are free functions in cpu/kernels.h (one file per op family); they
// compute in the dtype of the tensors they are given (f32 or f64), whatever the CpuOps' dtype.
#pragma once

#include <initializer_list>
#include <memory>

#include "rt/sdk/ops.h"

namespace rt {

class CpuOps final : public Ops {
 public:
  // compute: DType::F32 or DType::F64.
  explicit CpuOps(DType compute = DType::F32);

  Device device() const override { return Device::CPU; }
  DType activation_dtype() const override { return compute_; }
  DType accum_dtype() const override { return compute_; }
  std::string description() const override;

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

  void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                             const AttentionSpec& spec) override;
  void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                          TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec) override;
  void linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                       bool accumulate_dx) override;
  void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw) override;
  void rope_backward(TensorView dx, int64_t pos0, double theta) override;
  void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup) override;
  void embedding_backward(TensorView ids, TensorView dout, TensorView dtable) override;
  void lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale, TensorView losses,
                             TensorView dh, TensorView dw, TensorView is_greedy) override;
  void sigmoid(TensorView x, float scale, TensorView y) override;
  void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx) override;
  void step(TensorView x, float threshold, TensorView y) override;
  void row_scale(TensorView x, TensorView s, TensorView out) override;
  void row_dot(TensorView a, TensorView b, TensorView out, bool accumulate) override;
  void axpby(float alpha, TensorView x, float beta, TensorView y, TensorView out) override;
  void reduce_sum(TensorView x, int power, TensorView out) override;
  void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                  const AdamW& hp) override;

  // Reads f32, f64, bf16 or f16 rows directly (first index on ties).
  int64_t argmax(TensorView x) override;

 private:
  DType compute_;
};

// compute: DType::F32 (default) or DType::F64.
std::unique_ptr<Ops> make_cpu_ops(DType compute = DType::F32);

}  // namespace rt
