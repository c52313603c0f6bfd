// Picks, per attention shape, the faster of our flash kernels and cuDNN SDPA, and runs it.
//
// The first call for a shape (Tq, Tk, heads, head dim, mask, window, position offset) times both
// once with CUDA events and remembers the winner; later calls go straight to it. Shapes cuDNN
// does not support, decode (Tq <= 16: our split-KV kernel, and cuDNN would build a graph per
// cache length) and non-bf16 inputs always use our kernels.
// RT_ATTENTION_IMPL=flash|cudnn|auto (default auto) forces a choice, e.g. to report both.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <map>
#include <mutex>
#include <string>

#include "rt/sdk/ops.h"

namespace rt::cuda {

class AttentionDispatch {
 public:
  void run(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec, cudaStream_t stream);
  // "flash" or "cudnn": what the last call ran (for reports).
  const char* last_choice() const { return last_; }

 private:
  using Key = std::array<int64_t, 9>;
  bool pick_cudnn(const Key& key, TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec,
                  cudaStream_t stream);
  std::mutex mu_;
  std::map<Key, bool> choice_;
  const char* last_ = "flash";
};

}  // namespace rt::cuda
