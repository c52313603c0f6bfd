// The CUDA backend: rt::Ops on Device::CUDA. Activations and weights are bf16, the residual
// stream and logits f32; accumulation is fp32 everywhere (cuBLASLt GEMMs, own kernels).
// All work of one CudaOps is queued on its own stream; tensor memory comes from a stream-ordered
// caching pool (cuda/memory.h).
//
//   #include "cuda/cuda_ops.h"
//   if (rt::cuda_device_available()) ops = rt::make_cuda_ops();
//
// The kernels are free functions in cuda/kernels.h (one file per op family); the fused
// rmsnorm_residual_forward and the argmax below are not part of rt::Ops and are called directly.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "rt/sdk/ops.h"

namespace rt {

namespace cuda {
class StreamHandle;
class GemmContext;
class AttentionDispatch;
struct EmbeddingError;
}  // namespace cuda

class CudaOps final : public Ops {
 public:
  explicit CudaOps(int device = 0);
  ~CudaOps() override;
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  Device device() const override { return Device::CUDA; }
  DType activation_dtype() const override { return DType::BF16; }
  std::string description() const override;  // the GPU's name
  // Waits for the stream, then reports any error recorded on the device (e.g. a bad token id).
  void synchronize() override;

  // Bytes held by tensors (the stream-ordered pool's used memory; the cuBLASLt workspace is not
  // counted) now and at most since the last reset_peak_memory().
  MemoryStats memory_stats() override;
  void reset_peak_memory() override;

  // Out of memory throws rt::Error naming the shape, dtype, bytes and free/total device memory.
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
  int64_t argmax(TensorView x) override;
  const char* last_attention_impl() const override;  // on the device; copies back one index

  // x_residual (f32) += delta, then y = rmsnorm(x_residual): one pass instead of add + rmsnorm.
  void rmsnorm_residual(TensorView x_residual, TensorView delta, TensorView w, float eps, TensorView y);

  int device_index() const { return device_; }
  cudaStream_t stream() const;

 private:
  void check_device_errors();  // after a synchronization: throws what the device recorded

  int device_ = 0;
  std::shared_ptr<cuda::StreamHandle> stream_;
  std::unique_ptr<cuda::GemmContext> gemm_;
  std::unique_ptr<cuda::AttentionDispatch> attention_dispatch_;
  cuda::EmbeddingError* err_dev_ = nullptr;   // written by kernels
  cuda::EmbeddingError* err_host_ = nullptr;  // pinned mirror, copied after each checked kernel
};

// A CudaOps on the given device; throws rt::Error when there is no such device.
std::unique_ptr<Ops> make_cuda_ops(int device = 0);

// True when a CUDA driver and at least one device are present. Never throws or aborts.
bool cuda_device_available() noexcept;

namespace cuda {
// Fused residual add + RMSNorm (see cuda/kernels.h), re-declared here for callers of this header.
void rmsnorm_residual_forward(TensorView x_residual, TensorView delta, TensorView w, float eps, TensorView y,
                              cudaStream_t stream);
// Greedy sampling: argmax of the last row of f32 logits ([V] or [rows, V]) on the device; copies
// the one index back (synchronizes the stream). First index wins ties; NaNs are skipped.
int32_t argmax_last_row(const TensorView& logits_f32, cudaStream_t stream);
}  // namespace cuda
using cuda::argmax_last_row;

}  // namespace rt
