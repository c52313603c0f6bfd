// Recording device work as a CUDA graph and replaying it (rt::Ops::capture on the CUDA backend).
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <memory>

#include "rt/sdk/ops.h"

namespace rt::cuda {

// Runs `work` with `stream` in capture mode and returns the instantiated graph; `keep` is held
// for as long as the graph lives (the stream it launches on). Temporaries that work allocates
// with cudaMallocAsync and frees again become the graph's own allocations. When work throws, the
// capture is ended and discarded and the exception passes on.
std::unique_ptr<Ops::CapturedWork> capture_graph(cudaStream_t stream, std::shared_ptr<void> keep,
                                                 const std::function<void()>& work);

}  // namespace rt::cuda
