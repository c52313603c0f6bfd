// linear on cuBLASLt: y[N, out] = x[N, in] W^T (+ b), fp32 accumulation (CUBLAS_COMPUTE_32F, no
// TF32, so f32 results stay within rounding of the CPU's). GemmContext owns the cuBLASLt handle,
// a 32 MiB workspace and a per-shape cache of matmul descriptors and the algorithm (the heuristic's
// candidates timed on the shape's first call, keeping the first choice's bits: gemm_tune.h), so a
// repeated shape (every layer, every decode step) costs no descriptor setup or search.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <map>
#include <mutex>

#include "rt/sdk/tensor.h"

namespace rt::cuda {

class GemmContext {
 public:
  // tune: time the heuristic's candidates on each large shape's first call (gemm_tune.h); the
  // default follows RT_GEMM_TUNE (on unless 0).
  GemmContext();
  explicit GemmContext(bool tune);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  // Supported natively: bf16 x bf16 -> bf16 or f32, f16 x f16 -> f16 or f32, f32 x f32 -> f32.
  // Other combinations convert x to W's dtype (and/or go through an f32 output) first.
  void linear(TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream);

  // General row-major GEMM for the backward passes: d [M, N] = op(a) op(b), or d += op(a) op(b)
  // when accumulate (beta = 1), fp32 accumulation. op(a) is a [M, K], or a^T when trans_a (a is
  // [K, M]); op(b) is b [K, N], or b^T when trans_b (b is [N, K]). a and b share a dtype (bf16,
  // f16 or f32); d is f32, or a's dtype when that is 16-bit. Every operand is a 2-D cuda view with
  // a contiguous last dimension (any row stride). Other combinations are the caller's to convert
  // (linear_backward, lm_head_cross_entropy do). K = 0 writes zeros (or leaves d when accumulating).
  // Falls back to a simple tiled kernel when cuBLASLt has no algorithm for a layout.
  void matmul(TensorView a, bool trans_a, TensorView b, bool trans_b, TensorView d, bool accumulate,
              cudaStream_t stream);

  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  static constexpr int kTuneCandidates = 8;  // the heuristic's top algorithms a shape is tuned over

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    // The heuristic's ranked algorithms until the shape's first call times them (gemm_tune.h).
    cublasLtMatmulAlgo_t candidates[kTuneCandidates]{};
    int n_candidates = 0;
    bool bias_fused = false;
    // Destroys the cuBLASLt handles (if any) and resets to "no plan: the simple kernel".
    void release() {
      if (desc) {
        cublasLtMatrixLayoutDestroy(a);
        cublasLtMatrixLayoutDestroy(b);
        cublasLtMatrixLayoutDestroy(d);
        cublasLtMatmulDescDestroy(desc);
      }
      *this = Plan{};
    }
  };
  // The heuristic's first algorithm for p's descriptors (workspace and alignments given), into
  // p.algo, and its next ones into p.candidates; false when cuBLASLt has none.
  bool find_algo(Plan& p, uint32_t align_a, uint32_t align_b, uint32_t align_d);
  // On a plan's first call: the fastest candidate with the first choice's bits (gemm_tune.h).
  void tune(Plan& p, const void* A, const void* B, void* D, float beta, size_t m, size_t n, size_t ld,
            size_t elem_bytes, double flops, cudaStream_t stream);
  using Key = std::array<int64_t, 14>;
  const Plan& plan(const Key& key, bool want_bias);
  void gemm(const TensorView& x, const TensorView& w, const TensorView& bias, const TensorView& y,
            cudaStream_t stream);

  bool tune_ = true;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::mutex mu_;
  std::map<Key, Plan> plans_;
  // matmul's plans: a, b, d dtypes, trans_a, trans_b, M, N, K, ld a, ld b, ld d, alignments a, b, d.
  using MatmulKey = std::array<int64_t, 14>;
  std::map<MatmulKey, Plan> matmul_plans_;
};

void linear_forward(GemmContext& ctx, TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream);

// y += x W^T (x [N, in], W [out, in], y [N, out]): one cuBLASLt GEMM with beta = 1, so adding a
// projection into the f32 residual stream costs no separate pass. x is converted to W's dtype
// first when they differ; a y cuBLASLt cannot write goes through an f32 copy.
void linear_accumulate(GemmContext& ctx, TensorView x, TensorView w, TensorView y, cudaStream_t stream);

// Backward of y = x W^T + b (x [N, in], W [out, in], dy [N, out]):
//   dx (= or += when accumulate_dx) dy W    dx [N, in], any float dtype
//   dw += dy^T x                            dw [out, in] f32
//   db += column sums of dy                 db [out] f32 (deterministic reduction)
// An output passed as an empty view (data == nullptr) is skipped. x, w, dy: bf16 or f32 (f16
// works too). A GEMM whose two operands differ in dtype runs in the 16-bit one, the f32 operand
// converted (rounded) first, as linear() converts x to W's dtype: an f32 dy against bf16 W is a
// bf16 tensor-core GEMM, not an f32 one.
void linear_backward(GemmContext& ctx, TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw,
                     TensorView db, bool accumulate_dx, cudaStream_t stream);

// The LM head fused with cross-entropy (cross_entropy.cu), never holding more than
// [chunk_rows, V] logits: for h [N, hidden], w [V, hidden], targets [N] i32 (-100: ignored row;
// on the device, or on the host where they are validated before any work), per chunk of rows
//   logits = h_c w^T (f32, cuBLASLt), then per row max / log-sum-exp / loss and
//   G = grad_scale * (softmax - onehot(target)) (0 rows where ignored), stored in w's dtype
//   (bf16 for bf16 weights: the GEMMs below run on bf16 G, a relative rounding of 2^-9 per element),
//   dh_c (=) G w, dw += G^T h_c.
// losses [N] (=) f32 (0 for ignored rows; NaN for an out-of-range target, which is also recorded in
// `err` when the targets live on the device, see CudaOps::check_device_errors). dh [N, hidden] (any
// float dtype), dw [V, hidden] f32 and is_greedy [N] i32 (Ops::lm_head_cross_entropy) are optional
// (empty view: skipped), and so are the losses. h is converted to w's
// dtype per chunk when they differ.
struct EmbeddingError;
void lm_head_cross_entropy(GemmContext& ctx, TensorView h, TensorView w, TensorView targets, float grad_scale,
                           TensorView losses, TensorView dh, TensorView dw, TensorView is_greedy, EmbeddingError* err,
                           cudaStream_t stream);
// Rows per chunk of lm_head_cross_entropy: 0 (the default) picks them so that the f32 logits of a
// chunk take at most 256 MiB; n > 0 forces n (tests exercise the multi-chunk path with it).
void set_lm_head_chunk_rows(int64_t rows);
int64_t lm_head_chunk_rows(int64_t N, int64_t V);

}  // namespace rt::cuda
