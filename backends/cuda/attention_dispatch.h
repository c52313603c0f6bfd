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
  // Training: the forward that also writes lse, and the backward, each the faster of the two per
  // shape (the lse of either feeds the backward of either). bf16 views as the flash kernels take.
  void forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, const AttentionSpec& spec,
                   cudaStream_t stream);
  void backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout, TensorView dq,
                TensorView dk, TensorView dv, const AttentionSpec& spec, cudaStream_t stream);
  // "flash" or "cudnn": what the last call ran (for reports).
  const char* last_choice() const { return last_; }

 private:
  using Key = std::array<int64_t, 10>;  // shape, mask, offset, scale, and which call
  static Key key_of(int64_t call, TensorView q, TensorView k, const AttentionSpec& spec);
  // Whether cuDNN wins for this key: the first time, runs each once to warm up and once timed.
  template <typename Flash, typename Cudnn>
  bool pick_cudnn(const Key& key, Flash&& flash, Cudnn&& cudnn, cudaStream_t stream);
  std::mutex mu_;
  std::map<Key, bool> choice_;
  const char* last_ = "flash";
};

}  // namespace rt::cuda
