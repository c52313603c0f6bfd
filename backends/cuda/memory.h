// Device memory for the CUDA backend: stream-ordered allocation (cudaMallocAsync) from the
// device's default memory pool, whose release threshold CudaOps raises so freed blocks are cached
// and reused instead of going back to the driver at every synchronization (a caching allocator
// for free). Tensors are freed with cudaFreeAsync on the stream that used them, so a Tensor may
// be dropped while kernels that read it are still queued.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "rt/sdk/tensor.h"

namespace rt::cuda {

// The one stream a CudaOps runs on. Shared with the deleters of the tensors it allocated, so
// memory is returned in stream order even after the CudaOps itself is gone.
// A second stream serves CudaOps::concurrently: while its second branch is queued, get() is that
// stream, so every op, allocation and free of the branch goes there.
class StreamHandle {
 public:
  explicit StreamHandle(int device);
  ~StreamHandle();
  StreamHandle(const StreamHandle&) = delete;
  StreamHandle& operator=(const StreamHandle&) = delete;
  cudaStream_t get() const { return side_active_ ? side_ : stream_; }
  cudaStream_t main_stream() const { return stream_; }
  cudaStream_t side_stream() const { return side_; }
  bool side_active() const { return side_active_; }
  void set_side_active(bool on) { side_active_ = on; }
  int device() const { return device_; }

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr, side_ = nullptr;
  bool side_active_ = false;
};

// Uninitialized device tensor, contiguous. Out of memory throws rt::Error naming the shape,
// dtype, bytes requested and the device's free/total memory.
Tensor device_alloc(const std::shared_ptr<StreamHandle>& stream, DType dtype, std::initializer_list<int64_t> shape);

// Raw device bytes in stream order, for temporaries inside one op; freed (stream-ordered) by the
// destructor. `what` names the purpose in an out-of-memory error.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream, const char* what);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }
  // Frees the memory now, in stream order, instead of at scope exit; a failure is reported.
  void release();
  // A contiguous device view of this memory (must fit).
  TensorView view(DType dtype, const TensorView& shape_like) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Stream-ordered allocation that throws the descriptive out-of-memory error. On OOM it first
// returns the pool's cached blocks to the driver and retries once. `what` (called only on failure,
// so a decode step's many small allocations build no strings) names what was being allocated.
void* malloc_async(size_t bytes, cudaStream_t stream, const std::function<std::string()>& what);

}  // namespace rt::cuda
