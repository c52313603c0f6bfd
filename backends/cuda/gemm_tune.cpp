#include "cuda/gemm_tune.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/check.h"
#include "cuda/memory.h"
#include "rt/sdk/error.h"

namespace rt::cuda {
namespace {

constexpr double kMinFlops = 1e9;                       // below: microseconds, timing noise
constexpr size_t kMaxScratchBytes = size_t{64} << 20;  // the copy an accumulating GEMM is tuned on
constexpr size_t kCheckBytes = size_t{4} << 20;         // compared per edge of the output
constexpr int kTimedRuns = 3;
constexpr float kMinGain = 0.98f;  // a candidate must be 2% faster to replace the first choice

bool split_k(const cublasLtMatmulAlgo_t& algo) {
  uint32_t splits = 1;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof splits,
                                          &written) != CUBLAS_STATUS_SUCCESS)
    return true;  // unknown: not considered
  return splits > 1;
}

// The first and last rows of the output (columns of the column-major D), on the host.
std::vector<unsigned char> edge_rows(const GemmCall& c, const void* D, cudaStream_t stream) {
  const size_t width = c.m * c.elem_bytes, pitch = c.ld * c.elem_bytes;
  const size_t rows = std::min(c.n, std::max<size_t>(1, kCheckBytes / width));
  std::vector<unsigned char> h(2 * rows * width);
  CUDA_CHECK(cudaMemcpy2DAsync(h.data(), width, D, pitch, width, rows, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaMemcpy2DAsync(h.data() + rows * width, width, static_cast<const char*>(D) + (c.n - rows) * pitch,
                               pitch, width, rows, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return h;
}

// D's bytes, the gaps between its rows included.
size_t span_bytes(const GemmCall& c) { return ((c.n - 1) * c.ld + c.m) * c.elem_bytes; }

// B's and D's layouts for the first n rows of the output (columns of the column-major D; of B
// too, or B's rows when the matmul transposes it), owned.
struct Layouts {
  cublasLtMatrixLayout_t b = nullptr, d = nullptr;
  Layouts() = default;
  Layouts(const Layouts&) = delete;
  Layouts& operator=(const Layouts&) = delete;
  Layouts(Layouts&& o) noexcept { *this = std::move(o); }
  Layouts& operator=(Layouts&& o) noexcept {
    std::swap(b, o.b);
    std::swap(d, o.d);
    return *this;
  }
  ~Layouts() {
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};

cublasLtMatrixLayout_t layout_with(cublasLtMatrixLayout_t l, bool rows, uint64_t n) {
  uint32_t type = 0;
  uint64_t r = 0, cols = 0;
  int64_t ld = 0;
  size_t w = 0;
  CUBLAS_CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_TYPE, &type, sizeof type, &w));
  CUBLAS_CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &r, sizeof r, &w));
  CUBLAS_CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols, &w));
  CUBLAS_CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_LD, &ld, sizeof ld, &w));
  cublasLtMatrixLayout_t out = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&out, static_cast<cudaDataType_t>(type), rows ? n : r, rows ? cols : n, ld));
  return out;
}

Layouts slice_rows(const GemmCall& c, size_t n) {
  int32_t transb = CUBLAS_OP_N;
  size_t w = 0;
  CUBLAS_CHECK(cublasLtMatmulDescGetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb, &w));
  Layouts s;
  s.b = layout_with(c.b, transb != CUBLAS_OP_N, n);
  s.d = layout_with(c.d, false, n);
  return s;
}

struct Events {
  cudaEvent_t start = nullptr, stop = nullptr;
  Events() {
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~Events() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
};

}  // namespace

bool gemm_tuning_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("RT_GEMM_TUNE");
    if (v == nullptr || !*v) return true;
    const std::string s = v;
    RT_CHECK(s == "0" || s == "1", "RT_GEMM_TUNE='", s, "': expected 0 (the heuristic's first choice) or 1 (tuned)");
    return s == "1";
  }();
  return on;
}

cublasLtMatmulAlgo_t tuned_algo(const GemmCall& c, const cublasLtMatmulAlgo_t* candidates, int n_candidates,
                                double flops, cudaStream_t stream) {
  RT_CHECK(n_candidates >= 1, "GEMM tuning: no candidate algorithm");
  if (n_candidates < 2 || flops < kMinFlops || c.m == 0 || c.n == 0) return candidates[0];
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();
    return candidates[0];
  }
  if (capture != cudaStreamCaptureStatusNone) return candidates[0];  // no synchronization in a capture
  std::unique_ptr<Scratch> scratch;
  Layouts sliced;
  GemmCall run_on = c;  // the problem the candidates run: c, or (accumulating) its first rows on a copy
  try {
    if (c.beta != 0.f) {  // D is also an input: a copy of its first rows (at most kMaxScratchBytes)
      run_on.n = std::min(c.n, std::max<size_t>(1, kMaxScratchBytes / (c.ld * c.elem_bytes)));
      if (run_on.n < c.n) {
        sliced = slice_rows(c, run_on.n);
        run_on.b = sliced.b;
        run_on.d = sliced.d;
      }
      scratch = std::make_unique<Scratch>(span_bytes(run_on), stream, "GEMM tuning (a copy of the accumulated output)");
      run_on.D = scratch->get();
    }
    const size_t span = span_bytes(run_on);
    auto reset = [&] {
      if (scratch) CUDA_CHECK(cudaMemcpyAsync(run_on.D, c.D, span, cudaMemcpyDeviceToDevice, stream));
    };
    auto run = [&](const cublasLtMatmulAlgo_t& algo) {
      const float alpha = 1.f;
      const GemmCall& r = run_on;
      if (r.b != c.b) {  // an algorithm chosen for the whole problem may not take the slice
        cublasLtMatmulHeuristicResult_t check{};
        if (cublasLtMatmulAlgoCheck(r.handle, r.desc, r.a, r.b, r.d, r.d, &algo, &check) != CUBLAS_STATUS_SUCCESS)
          return false;
      }
      return cublasLtMatmul(r.handle, r.desc, &alpha, r.A, r.a, r.B, r.b, &r.beta, r.D, r.d, r.D, r.d, &algo,
                            r.workspace, r.workspace_bytes, stream) == CUBLAS_STATUS_SUCCESS;
    };
    Events ev;
    auto time_ms = [&](const cublasLtMatmulAlgo_t& algo) {
      CUDA_CHECK(cudaEventRecord(ev.start, stream));
      for (int r = 0; r < kTimedRuns; ++r) run(algo);
      CUDA_CHECK(cudaEventRecord(ev.stop, stream));
      CUDA_CHECK(cudaEventSynchronize(ev.stop));
      float ms = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
      return ms;
    };
    reset();
    if (!run(candidates[0])) return candidates[0];
    const std::vector<unsigned char> want = edge_rows(run_on, run_on.D, stream);
    int best = 0;
    float best_ms = time_ms(candidates[0]);
    for (int i = 1; i < n_candidates; ++i) {
      if (split_k(candidates[i])) continue;
      reset();
      if (!run(candidates[i]) || edge_rows(run_on, run_on.D, stream) != want) continue;  // (the run is the warm-up)
      const float ms = time_ms(candidates[i]);
      if (ms < best_ms * kMinGain) {
        best = i;
        best_ms = ms;
      }
    }
    if (scratch) scratch->release();
    return candidates[best];
  } catch (const Error&) {  // no scratch memory, or a failed copy: the first choice, untuned
    (void)cudaGetLastError();
    return candidates[0];
  }
}

}  // namespace rt::cuda
