// linear on cuBLASLt. Row-major y = x W^T is column-major y^T = W x^T: with W [out, in] row-major
// (= column-major [in, out], ld = w.stride[0]) as A with TRANSA = T, x [N, in] row-major
// (= column-major [in, N]) as B, and y [N, out] (= column-major [out, N]) as D, m = out, n = N,
// k = in. The bias then runs along m, which is exactly CUBLASLT_EPILOGUE_BIAS.
#include "cuda/linear.h"

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "cuda/check.h"
#include "cuda/gemm_tune.h"
#include "cuda/kernels.h"
#include "cuda/memory.h"

namespace rt::cuda {
namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: fail("linear: dtype ", dtype_name(t), " is not a float type");
  }
}

// Largest power of two (<= 256) dividing the address: the alignment cuBLASLt may assume.
int64_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int64_t al = 256;
  while (al > 1 && a % static_cast<uintptr_t>(al)) al >>= 1;
  return al;
}

// Leading dimension of a 2-D row-major view; a single row may carry any stride.
int64_t ld_of(const TensorView& v) { return v.shape[0] > 1 ? v.stride[0] : v.shape[1]; }


template <typename T>
void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T& v) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, a, &v, sizeof v));
}

}  // namespace

GemmContext::GemmContext() : GemmContext(gemm_tuning_enabled()) {}

GemmContext::GemmContext(bool tune) : tune_(tune) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  const cudaError_t e = cudaMalloc(&workspace_, kWorkspaceBytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    cublasLtDestroy(handle_);
    fail("out of GPU memory allocating the 32 MiB cuBLASLt workspace: ", cudaGetErrorName(e));
  }
}

GemmContext::~GemmContext() {
  for (auto* plans : {&plans_, &matmul_plans_})
    for (auto& [k, p] : *plans) p.release();
  (void)cudaFree(workspace_);  // synchronizes the device: no queued GEMM still uses it
  (void)cudaGetLastError();
  cublasLtDestroy(handle_);
}

bool GemmContext::find_algo(Plan& p, uint32_t align_a, uint32_t align_b, uint32_t align_d) {
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d);
  cublasLtMatmulHeuristicResult_t res[kTuneCandidates]{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.d, p.d, pref, kTuneCandidates, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) return false;
  p.algo = res[0].algo;
  p.n_candidates = 0;
  for (int i = 0; i < found; ++i)
    if (i == 0 || res[i].state == CUBLAS_STATUS_SUCCESS) p.candidates[p.n_candidates++] = res[i].algo;
  return true;
}

void GemmContext::tune(Plan& p, const void* A, const void* B, void* D, float beta, size_t m, size_t n, size_t ld,
                       size_t elem_bytes, double flops, cudaStream_t stream) {
  if (p.n_candidates == 0) return;  // tuned already (or a plan without candidates)
  if (tune_)
    p.algo = tuned_algo(GemmCall{handle_, p.desc, p.a, p.b, p.d, A, B, D, beta, m, n, ld, elem_bytes, workspace_,
                                 kWorkspaceBytes},
                        p.candidates, p.n_candidates, flops, stream);
  p.n_candidates = 0;
}

// Key: x, w, y dtypes, bias dtype (-1: none), N, in, out, ld x, ld w, ld y, alignments x, w, y,
// fuse-bias flag.
const GemmContext::Plan& GemmContext::plan(const Key& key, bool want_bias) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto xt = static_cast<DType>(key[0]), wt = static_cast<DType>(key[1]), yt = static_cast<DType>(key[2]);
  const int64_t N = key[4], in = key[5], out = key[6];

  auto build = [&](bool fuse, Plan& p) -> bool {
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
    if (fuse) {
      set_attr(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
      set_attr(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, cuda_type(static_cast<DType>(key[3])));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(wt), in, out, key[8]));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(xt), in, N, key[7]));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, cuda_type(yt), out, N, key[9]));
    if (find_algo(p, static_cast<uint32_t>(key[11]), static_cast<uint32_t>(key[10]), static_cast<uint32_t>(key[12]))) {
      p.bias_fused = fuse;
      return true;
    }
    p.release();
    return false;
  };

  Plan p;
  // A bias dtype the epilogue does not take falls back to a plain GEMM plus a bias kernel; a
  // layout with no cuBLASLt algorithm at all to the simple kernel (p.desc stays null).
  if (!(want_bias && build(true, p))) build(false, p);
  return plans_.emplace(key, p).first->second;
}

// x and w share a dtype; y is that dtype or f32 (f32 when w is f32).
void GemmContext::gemm(const TensorView& x, const TensorView& w, const TensorView& bias, const TensorView& y,
                       cudaStream_t stream) {
  const bool has_bias = bias.data != nullptr;
  const bool fusable = has_bias && (bias.stride[0] == 1 || bias.shape[0] == 1) && alignment(bias.data) >= 16;
  const Key key{static_cast<int64_t>(x.dtype), static_cast<int64_t>(w.dtype), static_cast<int64_t>(y.dtype),
                fusable ? static_cast<int64_t>(bias.dtype) : -1, x.shape[0], x.shape[1], w.shape[0],
                ld_of(x), ld_of(w), ld_of(y), alignment(x.data), alignment(w.data), alignment(y.data),
                fusable ? 1 : 0};
  std::lock_guard<std::mutex> lock(mu_);
  const float alpha = 1.f, beta = 0.f;
  bool fuse = fusable;
  for (;;) {
    Plan& p = const_cast<Plan&>(plan(key, fuse));
    if (!p.desc) {  // no cuBLASLt algorithm for this layout
      gemm_simple_forward(x, w, bias, y, stream);
      return;
    }
    if (p.bias_fused) set_attr(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias.data);
    tune(p, w.data, x.data, y.data, beta, static_cast<size_t>(w.shape[0]), static_cast<size_t>(x.shape[0]),
         static_cast<size_t>(ld_of(y)), dtype_size(y.dtype),
         2.0 * static_cast<double>(x.shape[0]) * static_cast<double>(x.shape[1]) * static_cast<double>(w.shape[0]),
         stream);
    const cublasStatus_t st = cublasLtMatmul(handle_, p.desc, &alpha, w.data, p.a, x.data, p.b, &beta, y.data, p.d,
                                             y.data, p.d, &p.algo, workspace_, kWorkspaceBytes, stream);
    if (st == CUBLAS_STATUS_SUCCESS) {
      if (has_bias && !p.bias_fused) bias_add_forward(y, bias, stream);
      return;
    }
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE && st != CUBLAS_STATUS_ARCH_MISMATCH)
      fail("linear: cublasLtMatmul failed for x ", dtype_name(x.dtype), " ", x.shape_str(), " times W ",
           dtype_name(w.dtype), " ", w.shape_str(), "^T into ", dtype_name(y.dtype), ": ", cublasLtGetStatusName(st),
           " (", cublasLtGetStatusString(st), ")");
    // The heuristic's choice was refused at run time: demote this shape's plan for good, first
    // to a plain GEMM plus the bias kernel, then to the simple kernel.
    const bool was_fused = p.bias_fused;
    p.release();
    if (was_fused) {
      plans_.erase(key);
      fuse = false;
    }
  }
}

void GemmContext::linear(TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream) {
  const char* op = "linear";
  check_cuda(op, "x", x);
  check_cuda(op, "w", w);
  check_cuda(op, "y", y);
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_float(op, "y", y);
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w", w, 2);
  check_ndim(op, "y", y, 2);
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  check_dim(op, "w", w, 1, in, "in features, x.shape[1]");
  check_dim(op, "y", y, 0, N, "rows, x.shape[0]");
  check_dim(op, "y", y, 1, out, "out features, w.shape[0]");
  const bool has_bias = bias.data != nullptr;
  if (has_bias) {
    check_cuda(op, "bias", bias);
    check_float(op, "bias", bias);
    RT_CHECK(bias.ndim == 1 && bias.shape[0] == out, "linear: argument 'bias' must have shape [", out,
             "] (out features, w.shape[0]), found ", bias.shape_str());
  }
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "w", w);
  check_unit_inner_stride(op, "y", y);
  RT_CHECK(ld_of(x) >= in && ld_of(w) >= in && ld_of(y) >= out,
           "linear: rows of x, W or y overlap (row stride smaller than the row length): x ", x.shape_str(),
           " stride ", x.stride[0], ", W ", w.shape_str(), " stride ", w.stride[0], ", y ", y.shape_str(), " stride ",
           y.stride[0]);
  RT_CHECK(!views_overlap(y, x), "linear: output 'y' overlaps input 'x' (in-place linear is not supported)");
  RT_CHECK(!views_overlap(y, w), "linear: output 'y' overlaps weight 'w'");
  if (N == 0 || out == 0) return;
  if (in == 0) {  // an empty sum: y = bias (or 0); cuBLASLt does not take k = 0
    fill_forward(y, 0.f, stream);
    if (has_bias) bias_add_forward(y, bias, stream);
    return;
  }

  if (gemv_applies(x, w, y)) {  // a decode step: one launch, no cublasLtMatmul host cost
    gemv_forward(x, w, bias, y, /*accumulate=*/false, stream);
    return;
  }
  // Bring x to W's dtype (W is the big operand: never convert it), and compute into an f32
  // buffer when y's dtype is not one cuBLASLt writes for this input type.
  std::unique_ptr<Scratch> xs, ys;
  TensorView xg = x, yg = y;
  if (x.dtype != w.dtype) {
    xs = std::make_unique<Scratch>(static_cast<size_t>(N * in) * dtype_size(w.dtype), stream, "linear (x convert)");
    xg = xs->view(w.dtype, x);
    copy_forward(x, xg, stream);
  }
  const bool y_ok = y.dtype == DType::F32 || (y.dtype == w.dtype && w.dtype != DType::F32);
  if (!y_ok) {
    ys = std::make_unique<Scratch>(static_cast<size_t>(N * out) * sizeof(float), stream, "linear (f32 output)");
    yg = ys->view(DType::F32, y);
  }
  gemm(xg, w, bias, yg, stream);
  if (!y_ok) copy_forward(yg, y, stream);
}

void linear_forward(GemmContext& ctx, TensorView x, TensorView w, TensorView bias, TensorView y,
                    cudaStream_t stream) {
  ctx.linear(x, w, bias, y, stream);
}

// ---- matmul (backward GEMMs) ------------------------------------------------------------------
//
// Row-major d [M, N] = op(a) op(b) is column-major d^T = op(b)^T op(a)^T. A row-major [r, c] view
// with row stride ld is the column-major [c, r] matrix with leading dimension ld. So cuBLASLt's A
// is our b (column-major [b.shape[1], b.shape[0]], TRANSA = T when trans_b), its B is our a
// (column-major [a.shape[1], a.shape[0]], TRANSB = T when trans_a), and D is d (column-major
// [N, M]); m = N, n = M, k = K. Check with linear: y = x W^T is a = x, b = W, trans_b, which gives
// the forward's TRANSA = T, TRANSB = N and layouts above.
void GemmContext::matmul(TensorView a, bool trans_a, TensorView b, bool trans_b, TensorView d, bool accumulate,
                         cudaStream_t stream) {
  const char* op = "matmul";
  check_matmul_operands(op, a, b, d);
  RT_CHECK(a.dtype == b.dtype, "matmul: operands 'a' and 'b' must share a dtype, found ", dtype_name(a.dtype), " and ",
           dtype_name(b.dtype));
  RT_CHECK(d.dtype == DType::F32 || (d.dtype == a.dtype && a.dtype != DType::F32), "matmul: output 'd' must be f32 or ",
           dtype_name(a.dtype), " (the operands' 16-bit dtype), found ", dtype_name(d.dtype));
  const int64_t M = trans_a ? a.shape[1] : a.shape[0], K = trans_a ? a.shape[0] : a.shape[1];
  const int64_t N = trans_b ? b.shape[0] : b.shape[1], Kb = trans_b ? b.shape[1] : b.shape[0];
  RT_CHECK(Kb == K, "matmul: inner dimensions differ: op(a) is [", M, ", ", K, "] (a ", a.shape_str(),
           trans_a ? " transposed" : "", "), op(b) is [", Kb, ", ", N, "] (b ", b.shape_str(),
           trans_b ? " transposed" : "", ")");
  RT_CHECK(d.shape[0] == M && d.shape[1] == N, "matmul: output 'd' must have shape [", M, ", ", N, "], found ",
           d.shape_str());
  RT_CHECK(ld_of(a) >= a.shape[1] && ld_of(b) >= b.shape[1] && ld_of(d) >= N,
           "matmul: rows of a, b or d overlap (row stride smaller than the row length)");
  RT_CHECK(!views_overlap(d, a) && !views_overlap(d, b), "matmul: output 'd' overlaps an input");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum
    if (!accumulate) fill_forward(d, 0.f, stream);
    return;
  }
  const MatmulKey key{static_cast<int64_t>(a.dtype), static_cast<int64_t>(b.dtype), static_cast<int64_t>(d.dtype),
                      trans_a ? 1 : 0, trans_b ? 1 : 0, M, N, K, ld_of(a), ld_of(b), ld_of(d), alignment(a.data),
                      alignment(b.data), alignment(d.data)};
  std::lock_guard<std::mutex> lock(mu_);
  auto it = matmul_plans_.find(key);
  if (it == matmul_plans_.end()) {
    Plan p;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(b.dtype), static_cast<uint64_t>(b.shape[1]),
                                            static_cast<uint64_t>(b.shape[0]), ld_of(b)));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(a.dtype), static_cast<uint64_t>(a.shape[1]),
                                            static_cast<uint64_t>(a.shape[0]), ld_of(a)));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, cuda_type(d.dtype), static_cast<uint64_t>(N),
                                            static_cast<uint64_t>(M), ld_of(d)));
    // cuBLASLt's A is our b and its B our a (row-major through column-major).
    if (!find_algo(p, static_cast<uint32_t>(key[12]), static_cast<uint32_t>(key[11]), static_cast<uint32_t>(key[13])))
      p.release();  // no algorithm: the simple kernel runs this shape (p.desc stays null)
    it = matmul_plans_.emplace(key, p).first;
  }
  Plan& p = it->second;
  if (p.desc) {
    const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
    tune(p, b.data, a.data, d.data, beta, static_cast<size_t>(N), static_cast<size_t>(M), static_cast<size_t>(ld_of(d)),
         dtype_size(d.dtype), 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K), stream);
    const cublasStatus_t st = cublasLtMatmul(handle_, p.desc, &alpha, b.data, p.a, a.data, p.b, &beta, d.data, p.d,
                                             d.data, p.d, &p.algo, workspace_, kWorkspaceBytes, stream);
    if (st == CUBLAS_STATUS_SUCCESS) return;
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE && st != CUBLAS_STATUS_ARCH_MISMATCH)
      fail("matmul: cublasLtMatmul failed for ", dtype_name(a.dtype), " a ", a.shape_str(), trans_a ? "^T" : "",
           " times b ", b.shape_str(), trans_b ? "^T" : "", " into ", dtype_name(d.dtype), " ", d.shape_str(), ": ",
           cublasLtGetStatusName(st), " (", cublasLtGetStatusString(st), ")");
    // Refused at run time: demote this shape to the simple kernel for good.
    p.release();
  }
  gemm_simple_matmul(a, trans_a, b, trans_b, d, accumulate, stream);
}

// ---- linear_backward ----------------------------------------------------------------------------

namespace {

// v in dtype `want`: v itself, or a converted contiguous copy kept alive in `keep`.
TensorView as_dtype(const TensorView& v, DType want, std::vector<std::unique_ptr<Scratch>>& keep, cudaStream_t stream,
                    const char* what) {
  if (v.dtype == want) return v;
  keep.push_back(std::make_unique<Scratch>(static_cast<size_t>(v.numel()) * dtype_size(want), stream, what));
  const TensorView c = keep.back()->view(want, v);
  copy_forward(v, c, stream);
  return c;
}

// The dtype a GEMM of operands p and q runs in: theirs when they agree; the 16-bit one when the
// other is f32 (as linear() converts x to W's dtype: tensor-core GEMMs, the f32 operand rounded
// once, e.g. an f32 residual-stream gradient against bf16 weights); f32 for bf16 with f16.
DType common_dtype(const TensorView& p, const TensorView& q) {
  if (p.dtype == q.dtype) return p.dtype;
  if (p.dtype == DType::F32) return q.dtype;
  if (q.dtype == DType::F32) return p.dtype;
  return DType::F32;
}

}  // namespace

void linear_accumulate(GemmContext& ctx, TensorView x, TensorView w, TensorView y, cudaStream_t stream) {
  const char* op = "linear_accumulate";
  for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"w", &w}, std::pair{"y", &y}}) {
    check_cuda(op, name, *t);
    check_float(op, name, *t);
    check_ndim(op, name, *t, 2);
  }
  check_dim(op, "w", w, 1, x.shape[1], "in features, x.shape[1]");
  check_dim(op, "y", y, 0, x.shape[0], "rows, x.shape[0]");
  check_dim(op, "y", y, 1, w.shape[0], "out features, w.shape[0]");
  RT_CHECK(!views_overlap(y, x) && !views_overlap(y, w), "linear_accumulate: output 'y' overlaps an input");
  if (x.shape[0] == 0 || w.shape[0] == 0) return;
  if (gemv_applies(x, w, y)) {
    gemv_forward(x, w, TensorView{}, y, /*accumulate=*/true, stream);
    return;
  }
  std::vector<std::unique_ptr<Scratch>> keep;
  const TensorView xg = as_dtype(x, w.dtype, keep, stream, "linear_accumulate (x convert)");
  if (y.dtype == DType::F32 || (y.dtype == w.dtype && w.dtype != DType::F32)) {
    ctx.matmul(xg, false, w, true, y, true, stream);
    return;
  }
  const TensorView yf = as_dtype(y, DType::F32, keep, stream, "linear_accumulate (f32 output)");
  ctx.matmul(xg, false, w, true, yf, true, stream);
  copy_forward(yf, y, stream);
}

void linear_backward(GemmContext& ctx, TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw,
                     TensorView db, bool accumulate_dx, cudaStream_t stream) {
  const char* op = "linear_backward";
  for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"w", &w}, std::pair{"dy", &dy}}) {
    check_cuda(op, name, *t);
    check_float(op, name, *t);
    check_ndim(op, name, *t, 2);
    check_unit_inner_stride(op, name, *t);
  }
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  check_dim(op, "w", w, 1, in, "in features, x.shape[1]");
  check_dim(op, "dy", dy, 0, N, "rows, x.shape[0]");
  check_dim(op, "dy", dy, 1, out, "out features, w.shape[0]");
  const bool want_dx = !is_empty_output(dx), want_dw = !is_empty_output(dw), want_db = !is_empty_output(db);
  if (want_dx) {
    check_cuda(op, "dx", dx);
    check_float(op, "dx", dx);
    check_ndim(op, "dx", dx, 2);
    check_same_shape(op, "x", x, "dx", dx);
    check_unit_inner_stride(op, "dx", dx);
    for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"w", &w}, std::pair{"dy", &dy}})
      RT_CHECK(!views_overlap(dx, *t), op, ": output 'dx' overlaps input '", name, "'");
  }
  if (want_dw) {
    check_cuda(op, "dw", dw);
    check_not_f64(op, "dw", dw);
    check_dtype(op, "dw", dw, DType::F32);
    check_ndim(op, "dw", dw, 2);
    check_same_shape(op, "w", w, "dw", dw);
    check_unit_inner_stride(op, "dw", dw);
    for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"w", &w}, std::pair{"dy", &dy}, std::pair{"dx", &dx}})
      RT_CHECK(!views_overlap(dw, *t), op, ": output 'dw' overlaps '", name, "'");
  }
  if (want_db) {
    check_cuda(op, "db", db);
    check_not_f64(op, "db", db);
    check_dtype(op, "db", db, DType::F32);
    RT_CHECK(db.ndim == 1 && db.shape[0] == out, op, ": argument 'db' must have shape [", out,
             "] (out features, w.shape[0]), found ", db.shape_str());
    for (const auto& [name, t] : {std::pair{"dy", &dy}, std::pair{"dx", &dx}, std::pair{"dw", &dw}})
      RT_CHECK(!views_overlap(db, *t), op, ": output 'db' overlaps '", name, "'");
  }

  std::vector<std::unique_ptr<Scratch>> keep;
  if (want_dx && N > 0 && in > 0) {
    const DType ct = common_dtype(dy, w);
    const TensorView dyc = as_dtype(dy, ct, keep, stream, "linear_backward (dy convert)");
    const TensorView wc = as_dtype(w, ct, keep, stream, "linear_backward (w convert)");
    if (dx.dtype == DType::F32 || (dx.dtype == ct && ct != DType::F32)) {
      ctx.matmul(dyc, false, wc, false, dx, accumulate_dx, stream);
    } else {  // through an f32 buffer
      Scratch buf(static_cast<size_t>(N * in) * sizeof(float), stream, "linear_backward (f32 dx)");
      const TensorView dxf = buf.view(DType::F32, dx);
      if (accumulate_dx) copy_forward(dx, dxf, stream);
      ctx.matmul(dyc, false, wc, false, dxf, accumulate_dx, stream);
      copy_forward(dxf, dx, stream);
    }
  }
  if (want_dw && N > 0 && out > 0 && in > 0) {
    const DType ct = common_dtype(dy, x);
    const TensorView dyc = as_dtype(dy, ct, keep, stream, "linear_backward (dy convert)");
    const TensorView xc = as_dtype(x, ct, keep, stream, "linear_backward (x convert)");
    ctx.matmul(dyc, true, xc, false, dw, true, stream);
  }
  if (want_db && N > 0 && out > 0) column_sum_accumulate(dy, TensorView{}, nullptr, db, stream);
}

}  // namespace rt::cuda
