// The CUDA backend: rt::Ops on Device::CUDA. Activations and weights are bf16, the residual
// stream and logits f32; accumulation is fp32 everywhere (cuBLASLt GEMMs, own kernels).
// All work of one CudaOps is queued on its own stream; tensor memory comes from a stream-ordered
// caching pool (cuda/memory.h).
//
//   #include "cuda/cuda_ops.h"
//   if (rt::cuda_device_available()) ops = rt::make_cuda_ops();
//
// The kernels are free functions in cuda/kernels.h (one file per op family); the argmax below is
// not part of rt::Ops and is called directly.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
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
  // Gradients, optimizer state, losses and the residual stream: f32 (there is no f64 path on the
  // device; f64 views and alloc(F64) are rejected with an rt::Error).
  DType accum_dtype() const override { return DType::F32; }
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
  void rmsnorm_keep_input(TensorView x, TensorView w, float eps, TensorView y, TensorView x_copy) override;
  void rope(TensorView x, int64_t pos0, double theta) override;
  void attention(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) override;
  void add(TensorView a, TensorView b, TensorView out) override;
  void swiglu(TensorView gate, TensorView up, TensorView out) override;
  // Routed rows (L2A) on the device, the count never read back (cuda/routing.cu, rope.cu).
  void compact_rows(TensorView flags, TensorView index, TensorView count) override;
  void gate_from_position_at(TensorView pos, int64_t first, TensorView gate, TensorView out) override;
  void rmsnorm_route_at(TensorView x, TensorView g, float eps, TensorView w, float z_min, TensorView pos, int64_t first,
                        TensorView y, TensorView d, TensorView steps) override;
  void position_draw_at(TensorView pos, uint64_t key, double below, TensorView out) override;
  void position_draw_rows(int64_t pos0, uint64_t key, double below, TensorView out) override;
  void gather_rows(TensorView x, TensorView index, TensorView count, TensorView out) override;
  void scatter_add_rows(TensorView src, TensorView index, TensorView count, TensorView dst) override;
  void rope_rows(TensorView x, TensorView index, TensorView count, int64_t pos0, double theta, bool backward) override;
  // One GEMM with beta = 1 into y (the f32 residual): no separate add.
  void linear_accumulate(TensorView x, TensorView w, TensorView y) override;
  // One kernel: split, RoPE on q and k (the rope kernel's angles, bit for bit), write k/v anywhere.
  void qkv_rope_split(TensorView qkv, int64_t pos0, double theta, TensorView q, TensorView k, TensorView v) override;
  // Decode at a device-held position: the rope/split kernel and the split-KV decode kernel read
  // the position themselves, with a split grid fixed by the cache's capacity.
  void qkv_rope_split_at(TensorView qkv, TensorView pos, double theta, TensorView q, TensorView k_cache,
                         TensorView v_cache, int64_t ring) override;
  void decode_attention_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                           const AttentionSpec& spec, TensorView o) override;
  void decode_attention_gated_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                                 TensorView gate, const AttentionSpec& spec, TensorView o) override;
  // A CUDA graph of the stream's work (cuda/graph.h).
  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override;
  int64_t argmax(TensorView x) override;
  const char* last_attention_impl() const override;  // on the device; copies back one index

  // ---- Training (rt::Ops). The flash kernels serve attention_forward_lse / attention_backward for
  // bf16 head dims 64 and 128; other head dims, mixed dtypes or unaligned views run the exact f32
  // kernels on f32 copies.
  void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                             const AttentionSpec& spec) override;
  void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                          TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec) override;
  void linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                       bool accumulate_dx) override;
  void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw) override;
  void rope_backward(TensorView dx, int64_t pos0, double theta) override;
  void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup) override;
  // Device ids are checked on the device: a bad one drops its row and is reported at the next
  // synchronizing call.
  void embedding_backward(TensorView ids, TensorView dout, TensorView dtable) override;
  // Chunked over rows (see cuda/linear.h); device targets out of range are reported at the next
  // synchronizing call.
  void lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale, TensorView losses,
                             TensorView dh, TensorView dw, TensorView is_greedy) override;
  void sigmoid(TensorView x, float scale, TensorView y) override;
  void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx) override;
  void step(TensorView x, float threshold, TensorView y) override;
  void row_scale(TensorView x, TensorView s, TensorView out) override;
  void row_dot(TensorView a, TensorView b, TensorView out, bool accumulate) override;
  void row_dot_rows(TensorView a, TensorView b, TensorView index, TensorView count, TensorView out) override;
  void axpby(float alpha, TensorView x, float beta, TensorView y, TensorView out) override;
  void reduce_sum(TensorView x, int power, TensorView out) override;
  void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                  const AdamW& hp) override;

  // RT_CUDA_CONCURRENT=0 runs the branches one after the other on the one stream (A/B runs).
  void concurrently(const std::function<void()>& first, const std::function<void()>& second) override;

  cudaStream_t stream() const;

 private:
  void check_device_errors();  // after a synchronization: throws what the device recorded
  void fetch_device_errors();  // queues the copy of the device's error record to err_host_
  Tensor f32_copy(TensorView t);  // an f32 copy of an attention tensor [T, H, D]
  // decode_attention_(gated_)at on the device kernels; gate may be empty.
  void decode_attention_device(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                               TensorView gate, const AttentionSpec& spec, TensorView o);

  int device_ = 0;
  std::shared_ptr<cuda::StreamHandle> stream_;
  std::unique_ptr<cuda::GemmContext> gemm_;
  // cuBLASLt's workspace is one buffer per context: GEMMs of a concurrent second branch take their
  // own context (made at the first such GEMM).
  std::unique_ptr<cuda::GemmContext> gemm_side_;
  cuda::GemmContext& gemm();
  cudaEvent_t fork_ = nullptr, join_ = nullptr;  // concurrently's ordering between the two streams
  std::unique_ptr<cuda::AttentionDispatch> attention_dispatch_;
  cuda::EmbeddingError* err_dev_ = nullptr;   // written by kernels
  cuda::EmbeddingError* err_host_ = nullptr;  // pinned mirror, copied after each checked kernel
};

// A CudaOps on the given device; throws rt::Error when there is no such device.
std::unique_ptr<Ops> make_cuda_ops(int device = 0);

// True when a CUDA driver and at least one device are present. Never throws or aborts.
bool cuda_device_available() noexcept;

namespace cuda {
// Greedy sampling: argmax of the last row of f32 logits ([V] or [rows, V]) on the device; copies
// the one index back (synchronizes the stream). First index wins ties; NaNs are skipped.
int32_t argmax_last_row(const TensorView& logits_f32, cudaStream_t stream);
}  // namespace cuda
using cuda::argmax_last_row;

}  // namespace rt
