#include "cuda/attention_dispatch.h"

#include <cstdlib>
#include <cstring>

#include "cuda/attention/attention.h"
#include "cuda/attention/attention_backward.h"
#include "cuda/check.h"
#include "cuda/cudnn_sdpa/cudnn_sdpa.h"

namespace rt::cuda {

namespace {

enum class Impl { Auto, Flash, Cudnn };

Impl forced_impl() {
  const char* v = std::getenv("RT_ATTENTION_IMPL");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return Impl::Auto;
  if (std::strcmp(v, "flash") == 0) return Impl::Flash;
  if (std::strcmp(v, "cudnn") == 0) return Impl::Cudnn;
  fail("RT_ATTENTION_IMPL='", v, "': expected flash, cudnn or auto");
}

template <typename F>
float time_once_ms(cudaStream_t stream, F&& f) {
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  CUDA_CHECK(cudaEventRecord(a, stream));
  f();
  CUDA_CHECK(cudaEventRecord(b, stream));
  CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

}  // namespace

AttentionDispatch::Key AttentionDispatch::key_of(int64_t call, TensorView q, TensorView k, const AttentionSpec& spec) {
  return {call, q.shape[0], k.shape[0], q.shape[1], k.shape[1], q.shape[2], spec.causal ? 1 : 0, spec.window,
          spec.q_pos0 - spec.k_pos0, static_cast<int64_t>(spec.scale * 1e6f)};
}

template <typename Flash, typename Cudnn>
bool AttentionDispatch::pick_cudnn(const Key& key, Flash&& flash, Cudnn&& cudnn, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = choice_.find(key);
  if (it != choice_.end()) return it->second;
  // One warm run each (graph build, caches), then one timed run each.
  flash();
  cudnn();
  const float t_flash = time_once_ms(stream, flash);
  const float t_cudnn = time_once_ms(stream, cudnn);
  const bool use = t_cudnn < t_flash;
  choice_.emplace(key, use);
  return use;
}

namespace {
// The training forward/backward pair when it must be bit-reproducible: cuDNN (its deterministic
// backward) for full causal attention, our flash kernels for windowed masks, where cuDNN's
// deterministic backward does not skip the tiles outside the band (H200, T = 32K, W = 2048: 14.8 ms
// against 2.2 ms for its default algorithm; BENCHMARKS.md).
bool deterministic_rule(const AttentionSpec& spec) { return spec.window == 0; }

// The forward of that pair: our Hopper kernel wherever it runs (head dims 64 and 128 on sm_90),
// which is faster than cuDNN's at every causal length we measured since the 192-row blocks at head
// dim 64 (H100, tenth session of 2026-12-06: 3.70 against 4.10 ms at 32K), and takes the same
// bits every run; cuDNN's for full causal attention elsewhere, as the backward.
bool deterministic_forward_rule(TensorView q, const AttentionSpec& spec) {
  return !hopper_forward_runs(q.shape[2]) && deterministic_rule(spec);
}

// Below this many query rows attention is a few microseconds on either implementation, while the
// first call of each new shape would build a cuDNN graph and time both (tens of milliseconds): an
// evaluation batch of documents of a hundred different lengths paid that a hundred times. So short
// blocks (decode, packed documents, short training sequences) always run our kernels, as do other
// dtypes; RT_ATTENTION_IMPL=cudnn still forces cuDNN where it supports the shape.
constexpr int64_t kCudnnMinRows = 1024;
bool cudnn_candidate(TensorView q, Impl impl) {
  if (q.dtype != DType::BF16 || q.ndim != 3 || q.shape[0] <= 16 || impl == Impl::Flash) return false;
  return impl == Impl::Cudnn || q.shape[0] >= kCudnnMinRows;
}
}  // namespace

void AttentionDispatch::run(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec,
                            cudaStream_t stream) {
  const Impl impl = forced_impl();
  bool cudnn = cudnn_candidate(q, impl) && cudnn_sdpa_supported(q, k, v, spec);
  if (cudnn && impl == Impl::Auto)
    cudnn = pick_cudnn(
        key_of(0, q, k, spec), [&] { attention_forward(q, k, v, o, spec, stream); },
        [&] { cudnn_sdpa_forward(q, k, v, o, spec, stream); }, stream);
  if (cudnn) {
    cudnn_sdpa_forward(q, k, v, o, spec, stream);
    last_ = "cudnn";
  } else {
    attention_forward(q, k, v, o, spec, stream);
    last_ = "flash";
  }
}

void AttentionDispatch::forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                    const AttentionSpec& spec, cudaStream_t stream) {
  const Impl impl = forced_impl();
  bool cudnn = cudnn_candidate(q, impl) && o.is_contiguous() && cudnn_sdpa_supported(q, k, v, spec, true);
  auto flash = [&] { attention_forward_lse(q, k, v, o, lse, spec, stream); };
  auto cud = [&] { cudnn_sdpa_forward(q, k, v, o, spec, stream, lse); };
  // Training: a fixed rule when deterministic (see attention_deterministic), so a resumed run
  // picks what the first one did.
  if (cudnn && impl == Impl::Auto)
    cudnn = attention_deterministic() ? deterministic_forward_rule(q, spec)
                                      : pick_cudnn(key_of(1, q, k, spec), flash, cud, stream);
  if (cudnn) cud();
  else flash();
  last_ = cudnn ? "cudnn" : "flash";
}

void AttentionDispatch::backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                 TensorView dout, TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec,
                                 cudaStream_t stream) {
  const Impl impl = forced_impl();
  bool cudnn = cudnn_candidate(q, impl) && o.is_contiguous() && dout.is_contiguous() && dq.is_contiguous() &&
               dk.is_contiguous() && dv.is_contiguous() && cudnn_sdpa_backward_supported(q, k, v, spec);
  auto flash = [&] { attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec, stream); };
  auto cud = [&] { cudnn_sdpa_backward(q, k, v, o, lse, dout, dq, dk, dv, spec, stream); };
  if (cudnn && impl == Impl::Auto)
    cudnn = attention_deterministic() ? deterministic_rule(spec) : pick_cudnn(key_of(2, q, k, spec), flash, cud, stream);
  if (cudnn) cud();
  else flash();
}

}  // namespace rt::cuda
