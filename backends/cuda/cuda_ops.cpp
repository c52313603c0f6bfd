#include "cuda/cuda_ops.h"

#include <cstdint>

#include "cuda/check.h"
#include "cuda/kernels.h"
#include "cuda/linear.h"
#include "cuda/memory.h"
#include "rt/sdk/error.h"

#include "cuda/attention/attention.h"
#include "cuda/attention_dispatch.h"

namespace rt {

bool cuda_device_available() noexcept {
  // Computed once: cudaGetDeviceCount reports a missing driver or device as an error code
  // (cudaErrorNoDevice, cudaErrorInsufficientDriver), which is cleared so later calls start clean.
  static const bool available = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    (void)cudaGetLastError();
    return e == cudaSuccess && n > 0;
  }();
  return available;
}

CudaOps::CudaOps(int device) : device_(device) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  (void)cudaGetLastError();
  RT_CHECK(e == cudaSuccess, "CUDA backend: no usable CUDA driver/device (", cudaGetErrorName(e), ": ",
           cudaGetErrorString(e), ")");
  RT_CHECK(device >= 0 && device < n, "CUDA backend: device ", device, " requested, but ", n,
           " CUDA device(s) are present");
  CUDA_CHECK(cudaSetDevice(device));
  // Cache freed blocks in the default pool instead of returning them to the driver at every
  // synchronization: stream-ordered allocation then behaves as a caching allocator.
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t threshold = UINT64_MAX;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  stream_ = std::make_shared<cuda::StreamHandle>(device);
  gemm_ = std::make_unique<cuda::GemmContext>();
  attention_dispatch_ = std::make_unique<cuda::AttentionDispatch>();
  CUDA_CHECK(cudaMalloc(&err_dev_, sizeof(cuda::EmbeddingError)));
  CUDA_CHECK(cudaMemset(err_dev_, 0, sizeof(cuda::EmbeddingError)));
  CUDA_CHECK(cudaMallocHost(&err_host_, sizeof(cuda::EmbeddingError)));
  *err_host_ = cuda::EmbeddingError{0, 0, 0, 0};
}

CudaOps::~CudaOps() {
  (void)cudaStreamSynchronize(stream_->get());
  gemm_.reset();
  (void)cudaFree(err_dev_);
  (void)cudaFreeHost(err_host_);
  (void)cudaGetLastError();
}

cudaStream_t CudaOps::stream() const { return stream_->get(); }

void CudaOps::check_device_errors() {
  if (err_host_->flag == 0) return;
  const cuda::EmbeddingError e = *err_host_;
  *err_host_ = cuda::EmbeddingError{0, 0, 0, 0};
  CUDA_CHECK(cudaMemsetAsync(err_dev_, 0, sizeof(cuda::EmbeddingError), stream_->get()));
  fail("embedding: token id ", e.id, " at position ", e.pos, " is out of range for a vocabulary of size ", e.vocab,
       " (valid ids are 0..", e.vocab - 1, "); detected on the device, the output rows are NaN");
}

void CudaOps::synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(stream_->get()));
  check_device_errors();
}

Ops::MemoryStats CudaOps::memory_stats() {
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
  uint64_t used = 0, high = 0;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high));
  return {static_cast<size_t>(used), static_cast<size_t>(high)};
}

void CudaOps::reset_peak_memory() {
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
  uint64_t zero = 0;  // the only value the high-water mark accepts: resets it to the current use
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
}

Tensor CudaOps::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  return cuda::device_alloc(stream_, dtype, shape);
}

void CudaOps::copy(TensorView src, TensorView dst) {
  cuda::copy_forward(src, dst, stream());
  // A copy touching host memory has synchronized the stream: report what the device recorded.
  if (src.device == Device::CPU || dst.device == Device::CPU) check_device_errors();
}

void CudaOps::fill(TensorView dst, float value) { cuda::fill_forward(dst, value, stream()); }

void CudaOps::embedding(TensorView table, TensorView ids, TensorView out) {
  cuda::embedding_forward(table, ids, out, err_dev_, stream());
  // The record travels back with the stream, so any later synchronization can read it.
  CUDA_CHECK(cudaMemcpyAsync(err_host_, err_dev_, sizeof(cuda::EmbeddingError), cudaMemcpyDeviceToHost, stream()));
}

void CudaOps::linear(TensorView x, TensorView w, TensorView bias, TensorView y) {
  cuda::linear_forward(*gemm_, x, w, bias, y, stream());
}

void CudaOps::rmsnorm(TensorView x, TensorView w, float eps, TensorView y) {
  cuda::rmsnorm_forward(x, w, eps, y, stream());
}

void CudaOps::rmsnorm_residual(TensorView x_residual, TensorView delta, TensorView w, float eps, TensorView y) {
  cuda::rmsnorm_residual_forward(x_residual, delta, w, eps, y, stream());
}

void CudaOps::rope(TensorView x, int64_t pos0, double theta) { cuda::rope_forward(x, pos0, theta, stream()); }

void CudaOps::attention(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) {
  const int64_t D = q.ndim == 3 ? q.shape[2] : 0;
  if (q.dtype != DType::BF16 || D == 64 || D == 128) {
    attention_dispatch_->run(q, k, v, o, spec, stream());
    return;
  }
  // The tensor-core kernels are instantiated for the head dims of real models (64, 128). Other
  // head dims (tiny test models) run through the exact fp32 kernel on f32 copies.
  auto f32 = [&](TensorView t) {
    Tensor c = alloc(DType::F32, {t.shape[0], t.shape[1], t.shape[2]});
    copy(t, c.view);
    return c;
  };
  Tensor q32 = f32(q), k32 = f32(k), v32 = f32(v);
  Tensor o32 = alloc(DType::F32, {o.shape[0], o.shape[1], o.shape[2]});
  cuda::attention_forward(q32, k32, v32, o32, spec, stream());
  copy(o32.view, o);
}

void CudaOps::add(TensorView a, TensorView b, TensorView out) { cuda::add_forward(a, b, out, stream()); }

void CudaOps::swiglu(TensorView gate, TensorView up, TensorView out) {
  cuda::swiglu_forward(gate, up, out, stream());
}

const char* CudaOps::last_attention_impl() const { return attention_dispatch_->last_choice(); }

std::string CudaOps::description() const {
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, device_) == cudaSuccess ? std::string(prop.name) : std::string("cuda");
}

int64_t CudaOps::argmax(TensorView x) { return cuda::argmax_last_row(x, stream()); }

std::unique_ptr<Ops> make_cuda_ops(int device) { return std::make_unique<CudaOps>(device); }

}  // namespace rt
