#include "cuda/memory.h"

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>

#include "cuda/check.h"
#include "cuda/memory_limit.h"
#include "rt/sdk/error.h"

namespace rt::cuda {

StreamHandle::StreamHandle(int device) : device_(device) {
  CUDA_CHECK(cudaSetDevice(device));
  // Non-blocking: no implicit synchronization with the legacy default stream of other libraries.
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
}

StreamHandle::~StreamHandle() {
  // Destructors must not throw; at process exit the runtime may already be unloading.
  for (cudaStream_t s : {side_, stream_}) {
    if (s == nullptr) continue;
    (void)cudaStreamSynchronize(s);
    (void)cudaStreamDestroy(s);
    (void)cudaGetLastError();
  }
}

namespace {

std::string gib(size_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// Any allocation failure names what was requested and what the device has left.
[[noreturn]] void fail_alloc(size_t bytes, const std::string& what, cudaError_t e) {
  size_t free_b = 0, total_b = 0;
  const bool info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
  (void)cudaGetLastError();
  int dev = -1;
  (void)cudaGetDevice(&dev);
  std::string mem = info ? gib(free_b) + " free of " + gib(total_b) : std::string("free/total unknown");
  fail(e == cudaErrorMemoryAllocation ? "out of GPU memory" : "GPU allocation failed", " allocating ", what, ": ",
       bytes, " bytes (", gib(bytes), ") requested, ", mem, " on cuda device ", dev, " (", cudaGetErrorName(e),
       ": ", cudaGetErrorString(e), ")");
}

}  // namespace

namespace {

// RT_CUDA_MEMORY_LIMIT (memory_limit.h): the pool's bytes in use plus this request must fit.
// Not checked while the stream is captured into a graph (a decode step's few small temporaries):
// the pool is not queried inside a capture.
void check_memory_limit(size_t bytes, cudaStream_t stream, const std::function<std::string()>& what) {
  const size_t limit = memory_limit_bytes();
  if (limit == 0) return;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
    (void)cudaGetLastError();
    return;
  }
  int dev = 0;
  cudaMemPool_t pool = nullptr;
  uint64_t used = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess ||
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  if (used + bytes <= limit) return;
  fail("out of GPU memory allocating ", what(), ": ", bytes, " bytes (", gib(bytes), ") requested, ", gib(used),
       " in use of the ", gib(limit), " that RT_CUDA_MEMORY_LIMIT allows on cuda device ", dev);
}

}  // namespace

void* malloc_async(size_t bytes, cudaStream_t stream, const std::function<std::string()>& what) {
  check_memory_limit(bytes, stream, what);
  void* p = nullptr;
  cudaError_t e = cudaMallocAsync(&p, bytes, stream);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    // The pool may hold freed blocks that other allocators (cuBLAS, cuDNN) cannot use: give them
    // back to the driver once and retry before reporting.
    int dev = 0;
    cudaMemPool_t pool = nullptr;
    if (cudaStreamSynchronize(stream) == cudaSuccess && cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess)
      (void)cudaMemPoolTrimTo(pool, 0);
    (void)cudaGetLastError();
    e = cudaMallocAsync(&p, bytes, stream);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail_alloc(bytes, what(), e);
  }
  return p;
}

Tensor device_alloc(const std::shared_ptr<StreamHandle>& stream, DType dtype, std::initializer_list<int64_t> shape) {
  RT_CHECK(shape.size() <= static_cast<size_t>(TensorView::kMaxDims), "alloc: at most ", TensorView::kMaxDims,
           " dimensions are supported, found ", shape.size());
  const TensorView shown = TensorView::contiguous(nullptr, dtype, Device::CUDA, shape);
  size_t count = 1;
  for (int64_t d : shape) {
    RT_CHECK(d >= 0, "alloc: dimensions must be >= 0, found shape ", shown.shape_str());
    RT_CHECK(d == 0 || count <= std::numeric_limits<size_t>::max() / 16 / static_cast<size_t>(d),
             "alloc: a ", dtype_name(dtype), " tensor of shape ", shown.shape_str(), " overflows size_t");
    count *= static_cast<size_t>(d);
  }
  const size_t bytes = count * dtype_size(dtype);
  // Never 0 bytes, so that data is non-null like the CPU backend's; 256 keeps every row aligned.
  const size_t padded = bytes == 0 ? 256 : (bytes + 255) / 256 * 256;
  void* p = malloc_async(padded, stream->get(), [&] {
    return std::string("a ") + dtype_name(dtype) + " tensor of shape " + shown.shape_str();
  });
  Tensor t;
  std::shared_ptr<StreamHandle> keep = stream;
  t.storage = std::shared_ptr<void>(p, [keep](void* q) {
    (void)cudaFreeAsync(q, keep->get());  // may fail at process teardown: nothing to do then
    (void)cudaGetLastError();
  });
  t.view = TensorView::contiguous(p, dtype, Device::CUDA, shape);
  return t;
}

Scratch::Scratch(size_t bytes, cudaStream_t stream, const char* what) : bytes_(bytes), stream_(stream) {
  ptr_ = malloc_async(bytes == 0 ? 256 : bytes, stream, [what] { return std::string("scratch for ") + what; });
}

void Scratch::release() {
  if (ptr_ == nullptr) return;
  void* p = ptr_;
  ptr_ = nullptr;
  CUDA_CHECK(cudaFreeAsync(p, stream_));
}

Scratch::~Scratch() {
  if (ptr_) {
    (void)cudaFreeAsync(ptr_, stream_);
    (void)cudaGetLastError();
  }
}

TensorView Scratch::view(DType dtype, const TensorView& shape_like) const {
  TensorView v = shape_like;
  v.data = ptr_;
  v.dtype = dtype;
  v.device = Device::CUDA;
  int64_t s = 1;
  for (int j = v.ndim - 1; j >= 0; --j) {
    v.stride[j] = s;
    s *= v.shape[j];
  }
  RT_CHECK(v.nbytes() <= (bytes_ == 0 ? 256 : bytes_), "internal: scratch of ", bytes_,
           " bytes too small for shape ", v.shape_str());
  return v;
}

}  // namespace rt::cuda
