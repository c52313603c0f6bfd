#include "cuda/cuda_ops.h"

#include <cstdint>
#include <exception>
#include <initializer_list>
#include <utility>

#include "cuda/check.h"
#include "cuda/env_switch.h"
#include "cuda/graph.h"
#include "cuda/kernels.h"
#include "cuda/linear.h"
#include "cuda/memory.h"
#include "rt/sdk/error.h"

#include "cuda/attention/attention.h"
#include "cuda/attention/attention_backward.h"
#include "cuda/attention/dense_attention.h"
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
  // A block freed on one stream may serve an allocation on the other (concurrently's two streams)
  // only once the free has completed or the streams' own events order them, never by a wait the
  // allocator inserts: that wait would make the second branch wait for the first (its workspace,
  // freed on the main stream, is the size the other branch's asks for).
  int internal_dependencies = 0;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolReuseAllowInternalDependencies, &internal_dependencies));
  stream_ = std::make_shared<cuda::StreamHandle>(device);
  gemm_ = std::make_unique<cuda::GemmContext>();
  attention_dispatch_ = std::make_unique<cuda::AttentionDispatch>();
  CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming));
  CUDA_CHECK(cudaMalloc(&err_dev_, sizeof(cuda::EmbeddingError)));
  CUDA_CHECK(cudaMemset(err_dev_, 0, sizeof(cuda::EmbeddingError)));
  CUDA_CHECK(cudaMallocHost(&err_host_, sizeof(cuda::EmbeddingError)));
  *err_host_ = cuda::EmbeddingError{0, 0, 0, 0};
}

CudaOps::~CudaOps() {
  (void)cudaStreamSynchronize(stream_->main_stream());
  (void)cudaStreamSynchronize(stream_->side_stream());
  gemm_.reset();
  gemm_side_.reset();
  for (cudaEvent_t e : {fork_, join_})
    if (e) (void)cudaEventDestroy(e);
  (void)cudaFree(err_dev_);
  (void)cudaFreeHost(err_host_);
  (void)cudaGetLastError();
}

cudaStream_t CudaOps::stream() const { return stream_->get(); }

cuda::GemmContext& CudaOps::gemm() {
  if (!stream_->side_active()) return *gemm_;
  if (!gemm_side_) gemm_side_ = std::make_unique<cuda::GemmContext>();
  return *gemm_side_;
}

void CudaOps::concurrently(const std::function<void()>& first, const std::function<void()>& second) {
  static const bool off = cuda::env_switch("RT_CUDA_CONCURRENT", "1", "0");
  // RT_CUDA_CONCURRENT_SWAP=1 queues `second` (on the side stream) before `first`: the GPU hands
  // out a kernel's thread blocks in launch order, so the branch queued first gets the SMs and the
  // other fills its tail. For measuring which order suits a pair of branches.
  static const bool swap = cuda::env_switch("RT_CUDA_CONCURRENT_SWAP", "0", "1");
  if (off || stream_->side_active()) {  // (nested: the branch's own stream already runs beside another)
    first();
    second();
    return;
  }
  const cudaStream_t main = stream_->main_stream(), side = stream_->side_stream();
  CUDA_CHECK(cudaEventRecord(fork_, main));
  CUDA_CHECK(cudaStreamWaitEvent(side, fork_, 0));
  // The join is queued whatever happens, so that the main stream never runs ahead of the side's
  // work; after a branch's error that error is the one to report, not the join's.
  auto join = [&](bool report) {
    stream_->set_side_active(false);
    const cudaError_t e = cudaEventRecord(join_, side);
    const cudaError_t w = e == cudaSuccess ? cudaStreamWaitEvent(main, join_, 0) : e;
    if (report) CUDA_CHECK(w);
    else (void)cudaGetLastError();
  };
  try {
    if (swap) {  // (`first` runs even when `second` throws, as it does unswapped)
      std::exception_ptr second_error;
      stream_->set_side_active(true);
      try {
        second();
      } catch (...) {
        second_error = std::current_exception();
      }
      stream_->set_side_active(false);
      first();
      if (second_error) std::rethrow_exception(second_error);
    } else {
      first();
      stream_->set_side_active(true);
      second();
    }
  } catch (...) {
    join(false);
    throw;
  }
  join(true);
}

void CudaOps::check_device_errors() {
  if (err_host_->flag == 0) return;
  const cuda::EmbeddingError e = *err_host_;
  *err_host_ = cuda::EmbeddingError{0, 0, 0, 0};
  CUDA_CHECK(cudaMemsetAsync(err_dev_, 0, sizeof(cuda::EmbeddingError), stream_->get()));
  if (e.flag == cuda::kErrEmbeddingBackward)
    fail("embedding_backward: token id ", e.id, " at position ", e.pos, " is out of range for a vocabulary of size ",
         e.vocab, " (valid ids are 0..", e.vocab - 1, "); detected on the device, that row's gradient was dropped");
  if (e.flag == cuda::kErrCrossEntropyTarget)
    fail("lm_head_cross_entropy: target ", e.id, " at row ", e.pos, " is out of range for a vocabulary of size ",
         e.vocab, " (valid: 0..", e.vocab - 1, ", or -100 to ignore the row); detected on the device, that row's ",
         "loss is NaN and its gradient zero");
  fail("embedding: token id ", e.id, " at position ", e.pos, " is out of range for a vocabulary of size ", e.vocab,
       " (valid ids are 0..", e.vocab - 1, "); detected on the device, the output rows are NaN");
}

void CudaOps::fetch_device_errors() {
  // The record travels back with the stream, so any later synchronization can read it.
  CUDA_CHECK(cudaMemcpyAsync(err_host_, err_dev_, sizeof(cuda::EmbeddingError), cudaMemcpyDeviceToHost, stream()));
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
  RT_CHECK(dtype != DType::F64, "alloc: dtype f64 is not supported on the CUDA backend (f64 is for CPU gradient ",
           "checks, make_cpu_ops(DType::F64)); use f32");
  return cuda::device_alloc(stream_, dtype, shape);
}

void CudaOps::copy(TensorView src, TensorView dst) {
  cuda::check_not_f64("copy", "src", src);
  cuda::check_not_f64("copy", "dst", dst);
  cuda::copy_forward(src, dst, stream());
  // A copy touching host memory has synchronized the stream: report what the device recorded.
  if (src.device == Device::CPU || dst.device == Device::CPU) check_device_errors();
}

void CudaOps::fill(TensorView dst, float value) { cuda::fill_forward(dst, value, stream()); }

void CudaOps::embedding(TensorView table, TensorView ids, TensorView out) {
  cuda::embedding_forward(table, ids, out, err_dev_, stream());
  fetch_device_errors();
}

void CudaOps::linear(TensorView x, TensorView w, TensorView bias, TensorView y) {
  cuda::linear_forward(gemm(), x, w, bias, y, stream());
}

void CudaOps::rmsnorm(TensorView x, TensorView w, float eps, TensorView y) {
  cuda::rmsnorm_forward(x, w, eps, y, stream());
}
void CudaOps::rmsnorm_keep_input(TensorView x, TensorView w, float eps, TensorView y, TensorView x_copy) {
  // RT_RMSNORM_KEEP_INPUT=0: the copy, then the norm (the same bits; for timing the fusion).
  static const bool unfused = cuda::env_switch("RT_RMSNORM_KEEP_INPUT", "1", "0");
  if (unfused) Ops::rmsnorm_keep_input(x, w, eps, y, x_copy);
  else cuda::rmsnorm_keep_input_forward(x, w, eps, y, x_copy, stream());
}

void CudaOps::linear_accumulate(TensorView x, TensorView w, TensorView y) {
  cuda::linear_accumulate(gemm(), x, w, y, stream());
}

void CudaOps::rope(TensorView x, int64_t pos0, double theta) { cuda::rope_forward(x, pos0, theta, stream()); }

void CudaOps::qkv_rope_split(TensorView qkv, int64_t pos0, double theta, TensorView q, TensorView k, TensorView v) {
  cuda::qkv_rope_split_forward(qkv, pos0, theta, q, k, v, stream());
}

// An f32 copy of an attention tensor [T, H, D], for the exact fp32 kernel.
Tensor CudaOps::f32_copy(TensorView t) {
  Tensor c = alloc(DType::F32, {t.shape[0], t.shape[1], t.shape[2]});
  copy(t, c.view);
  return c;
}

void CudaOps::attention(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) {
  RT_CHECK(!(spec.materialize && spec.routed()), "attention: routed queries (q_index) run on the flash kernels; ",
           "the materialized path computes every row");
  spec.check_routed_options("attention", false);
  if (spec.materialize) {  // scores materialized by GEMMs (cuda/attention/dense_attention.h)
    cuda::dense_attention_forward("attention", q, k, v, o, TensorView{}, spec, stream());
    return;
  }
  const int64_t D = q.ndim == 3 ? q.shape[2] : 0;
  if (spec.routed() && (q.dtype != DType::BF16 || D == 64 || D == 128)) {  // only our kernels take routed rows
    cuda::attention_forward(q, k, v, o, spec, stream());
    return;
  }
  if (q.dtype != DType::BF16 || D == 64 || D == 128) {
    attention_dispatch_->run(q, k, v, o, spec, stream());
    return;
  }
  // The tensor-core kernels are instantiated for the head dims of real models (64, 128). Other
  // head dims (tiny test models) run through the exact fp32 kernel on f32 copies.
  Tensor q32 = f32_copy(q), k32 = f32_copy(k), v32 = f32_copy(v);
  // inactive_unwritten: the rows past the count go back into o as they were
  Tensor o32 = spec.inactive_unwritten ? f32_copy(o) : alloc(DType::F32, {o.shape[0], o.shape[1], o.shape[2]});
  cuda::attention_forward(q32, k32, v32, o32, spec, stream());
  copy(o32.view, o);
}

void CudaOps::add(TensorView a, TensorView b, TensorView out) { cuda::add_forward(a, b, out, stream()); }

void CudaOps::gate_from_position_at(TensorView pos, int64_t first, TensorView gate, TensorView out) {
  cuda::gate_from_position_at_forward(pos, first, gate, out, stream());
}

void CudaOps::rmsnorm_route_at(TensorView x, TensorView g, float eps, TensorView w, float z_min, TensorView pos,
                               int64_t first, TensorView y, TensorView d, TensorView steps) {
  cuda::rmsnorm_route_at_forward(x, g, eps, w, z_min, pos, first, y, d, steps, stream());
}

void CudaOps::position_draw_at(TensorView pos, uint64_t key, double below, TensorView out) {
  cuda::position_draw_at_forward(pos, key, below, out, stream());
}

void CudaOps::position_draw_rows(int64_t pos0, uint64_t key, double below, TensorView out) {
  cuda::position_draw_rows_forward(pos0, key, below, out, stream());
}

void CudaOps::compact_rows(TensorView flags, TensorView index, TensorView count) {
  cuda::compact_rows_forward(flags, index, count, stream());
}

void CudaOps::gather_rows(TensorView x, TensorView index, TensorView count, TensorView out) {
  cuda::gather_rows_forward(x, index, count, out, stream());
}

void CudaOps::scatter_add_rows(TensorView src, TensorView index, TensorView count, TensorView dst) {
  cuda::scatter_add_rows_forward(src, index, count, dst, stream());
}

void CudaOps::rope_rows(TensorView x, TensorView index, TensorView count, int64_t pos0, double theta, bool backward) {
  cuda::rope_rows_forward(x, index, count, pos0, theta, backward, stream());
}

void CudaOps::swiglu(TensorView gate, TensorView up, TensorView out) {
  cuda::swiglu_forward(gate, up, out, stream());
}

const char* CudaOps::last_attention_impl() const { return attention_dispatch_->last_choice(); }

std::string CudaOps::description() const {
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, device_) == cudaSuccess ? std::string(prop.name) : std::string("cuda");
}

void CudaOps::qkv_rope_split_at(TensorView qkv, TensorView pos, double theta, TensorView q, TensorView k_cache,
                                TensorView v_cache, int64_t ring) {
  cuda::qkv_rope_split_at_forward(qkv, pos, theta, q, k_cache, v_cache, ring, stream());
}

// A materialized spec (l2a_dense's naive path) decodes on the decode kernels too: one query row
// has no score matrix to materialize, and reading the position on the host cannot be captured.
void CudaOps::decode_attention_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                                  const AttentionSpec& spec, TensorView o) {
  decode_attention_device(q, k_cache, v_cache, ring, pos, TensorView{}, spec, o);
}

void CudaOps::decode_attention_gated_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring,
                                        TensorView pos, TensorView gate, const AttentionSpec& spec, TensorView o) {
  decode_attention_device(q, k_cache, v_cache, ring, pos, gate, spec, o);
}

void CudaOps::decode_attention_device(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring,
                                      TensorView pos, TensorView gate, const AttentionSpec& spec, TensorView o) {
  const int64_t D = q.ndim == 3 ? q.shape[2] : 0;
  if (q.dtype != DType::BF16 || D == 64 || D == 128) {
    cuda::decode_attention_at(q, k_cache, v_cache, ring, pos, spec, o, stream(), gate);
    return;
  }
  // Head dims without a tensor-core kernel (tiny test models): the fp32 kernel on f32 copies of
  // the whole cache, still reading the position (and gate) on the device.
  Tensor q32 = f32_copy(q), k32 = f32_copy(k_cache), v32 = f32_copy(v_cache);
  Tensor o32 = alloc(DType::F32, {o.shape[0], o.shape[1], o.shape[2]});
  cuda::decode_attention_at(q32, k32, v32, ring, pos, spec, o32, stream(), gate);
  copy(o32.view, o);
}

std::unique_ptr<Ops::CapturedWork> CudaOps::capture(const std::function<void()>& work) {
  return cuda::capture_graph(stream(), stream_, work);
}

int64_t CudaOps::argmax(TensorView x) { return cuda::argmax_last_row(x, stream()); }

// ---- Training ----------------------------------------------------------------------------------

namespace {

// True when the bf16 flash kernels take these views as they are: every one bf16, head dim 64 or
// 128, rows 16-byte aligned (inputs) / 4-byte aligned (outputs), as attention_launch.h checks.
bool flash_bf16_ok(std::initializer_list<const TensorView*> inputs, std::initializer_list<const TensorView*> outputs) {
  auto ok = [](const TensorView& v, uintptr_t bytes, int64_t elems) {
    if (v.dtype != DType::BF16 || v.ndim != 3 || (v.shape[2] != 64 && v.shape[2] != 128)) return false;
    if (v.numel() == 0) return true;
    return reinterpret_cast<uintptr_t>(v.data) % bytes == 0 && (v.shape[0] <= 1 || v.stride[0] % elems == 0) &&
           (v.shape[1] <= 1 || v.stride[1] % elems == 0) && v.stride[2] == 1;
  };
  for (const TensorView* v : inputs)
    if (!ok(*v, 16, 8)) return false;
  for (const TensorView* v : outputs)
    if (!ok(*v, 4, 2)) return false;
  return true;
}

void check_attention_view(const char* op, const char* arg, const TensorView& v) {
  cuda::check_cuda(op, arg, v);
  cuda::check_float(op, arg, v);
  RT_CHECK(v.ndim == 3, op, ": argument '", arg, "' must have 3 dimensions [T, heads, head_dim], found shape ",
           v.shape_str());
}

}  // namespace

void CudaOps::attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                    const AttentionSpec& spec) {
  const char* op = "attention_forward_lse";
  for (const auto& [name, t] : {std::pair{"q", &q}, std::pair{"k", &k}, std::pair{"v", &v}, std::pair{"o", &o}})
    check_attention_view(op, name, *t);
  RT_CHECK(!(spec.materialize && spec.routed()), op, ": routed queries (q_index) run on the flash kernels; ",
           "the materialized path computes every row");
  spec.check_routed_options(op, false);
  if (spec.materialize) {  // scores materialized by GEMMs (cuda/attention/dense_attention.h)
    cuda::dense_attention_forward(op, q, k, v, o, lse, spec, stream());
    return;
  }
  const bool all_f32 =
      q.dtype == DType::F32 && k.dtype == DType::F32 && v.dtype == DType::F32 && o.dtype == DType::F32;
  if (all_f32) {
    cuda::attention_forward_lse(q, k, v, o, lse, spec, stream());
    return;
  }
  if (flash_bf16_ok({&q, &k, &v}, {&o})) {  // flash or cuDNN, whichever is faster for the shape
    if (spec.routed()) cuda::attention_forward_lse(q, k, v, o, lse, spec, stream());
    else attention_dispatch_->forward_lse(q, k, v, o, lse, spec, stream());
    return;
  }
  // The exact f32 kernel on f32 copies (other head dims, mixed dtypes, unaligned views).
  Tensor q32 = f32_copy(q), k32 = f32_copy(k), v32 = f32_copy(v);
  // inactive_unwritten: the rows past the count go back into o as they were
  Tensor o32 = spec.inactive_unwritten ? f32_copy(o) : alloc(DType::F32, {o.shape[0], o.shape[1], o.shape[2]});
  cuda::attention_forward_lse(q32, k32, v32, o32, lse, spec, stream());
  copy(o32.view, o);
}

void CudaOps::attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                 TensorView dout, TensorView dq, TensorView dk, TensorView dv,
                                 const AttentionSpec& spec) {
  const char* op = "attention_backward";
  for (const auto& [name, t] : {std::pair{"q", &q}, std::pair{"k", &k}, std::pair{"v", &v}, std::pair{"o", &o},
                                std::pair{"dout", &dout}})
    check_attention_view(op, name, *t);
  const bool want[3] = {!cuda::is_empty_output(dq), !cuda::is_empty_output(dk), !cuda::is_empty_output(dv)};
  TensorView* outs[3] = {&dq, &dk, &dv};
  const TensorView* like[3] = {&q, &k, &k};
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    if (!want[i]) continue;
    check_attention_view(op, names[i], *outs[i]);
    cuda::check_same_shape(op, i == 0 ? "q" : "k", *like[i], names[i], *outs[i]);
  }
  if (!want[0] && !want[1] && !want[2]) return;
  RT_CHECK(!(spec.materialize && spec.routed()), op, ": routed queries (q_index) run on the flash kernels; ",
           "the materialized path computes every row");
  spec.check_routed_options(op, true);
  if (spec.materialize) {  // scores materialized by GEMMs (cuda/attention/dense_attention.h)
    cuda::dense_attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec, stream());
    return;
  }
  const bool all_f32 = q.dtype == DType::F32 && k.dtype == DType::F32 && v.dtype == DType::F32 &&
                       o.dtype == DType::F32 && dout.dtype == DType::F32 &&
                       (!want[0] || dq.dtype == DType::F32) && (!want[1] || dk.dtype == DType::F32) &&
                       (!want[2] || dv.dtype == DType::F32);
  const bool bf16 = !all_f32 && flash_bf16_ok({&q, &k, &v, &dout}, {&o}) &&
                    (!want[0] || flash_bf16_ok({}, {&dq})) && (!want[1] || flash_bf16_ok({}, {&dk})) &&
                    (!want[2] || flash_bf16_ok({}, {&dv}));
  if (all_f32 || bf16) {
    // Outputs not asked for still have to be written somewhere: scratch of the same dtype.
    const DType dt = q.dtype;
    Tensor tmp[3];
    TensorView use[3];
    for (int i = 0; i < 3; ++i) {
      if (want[i]) {
        use[i] = *outs[i];
      } else {
        tmp[i] = alloc(dt, {like[i]->shape[0], like[i]->shape[1], like[i]->shape[2]});
        use[i] = tmp[i].view;
      }
    }
    if (bf16 && !spec.routed())
      attention_dispatch_->backward(q, k, v, o, lse, dout, use[0], use[1], use[2], spec, stream());
    else
      cuda::attention_backward(q, k, v, o, lse, dout, use[0], use[1], use[2], spec, stream());
    return;
  }
  // The exact f32 kernels on f32 copies, results converted into the outputs asked for.
  Tensor q32 = f32_copy(q), k32 = f32_copy(k), v32 = f32_copy(v), o32 = f32_copy(o), do32 = f32_copy(dout);
  Tensor dq32 = alloc(DType::F32, {q.shape[0], q.shape[1], q.shape[2]});
  Tensor dk32 = alloc(DType::F32, {k.shape[0], k.shape[1], k.shape[2]});
  Tensor dv32 = alloc(DType::F32, {k.shape[0], k.shape[1], k.shape[2]});
  cuda::attention_backward(q32, k32, v32, o32, lse, do32, dq32, dk32, dv32, spec, stream());
  if (want[0]) copy(dq32.view, dq);
  if (want[1]) copy(dk32.view, dk);
  if (want[2]) copy(dv32.view, dv);
}

void CudaOps::linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                              bool accumulate_dx) {
  cuda::linear_backward(gemm(), x, w, dy, dx, dw, db, accumulate_dx, stream());
}

void CudaOps::rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw) {
  cuda::rmsnorm_backward(x, w, eps, dy, dx, dw, stream());
}

void CudaOps::rope_backward(TensorView dx, int64_t pos0, double theta) {
  cuda::rope_backward(dx, pos0, theta, stream());
}

void CudaOps::swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup) {
  cuda::swiglu_backward(gate, up, dout, dgate, dup, stream());
}

void CudaOps::embedding_backward(TensorView ids, TensorView dout, TensorView dtable) {
  cuda::embedding_backward(ids, dout, dtable, err_dev_, stream());
  if (ids.device == Device::CUDA) fetch_device_errors();
}

void CudaOps::lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale,
                                    TensorView losses, TensorView dh, TensorView dw, TensorView is_greedy) {
  cuda::lm_head_cross_entropy(gemm(), h, w, targets, grad_scale, losses, dh, dw, is_greedy, err_dev_, stream());
  if (targets.device == Device::CUDA) fetch_device_errors();
}

void CudaOps::sigmoid(TensorView x, float scale, TensorView y) { cuda::sigmoid_forward(x, scale, y, stream()); }

void CudaOps::sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx) {
  cuda::sigmoid_backward(y, dy, scale, dx, stream());
}

void CudaOps::step(TensorView x, float threshold, TensorView y) { cuda::step_forward(x, threshold, y, stream()); }

void CudaOps::row_scale(TensorView x, TensorView s, TensorView out) { cuda::row_scale_forward(x, s, out, stream()); }

void CudaOps::row_dot(TensorView a, TensorView b, TensorView out, bool accumulate) {
  cuda::row_dot_forward(a, b, out, accumulate, stream());
}
void CudaOps::row_dot_rows(TensorView a, TensorView b, TensorView index, TensorView count, TensorView out) {
  cuda::row_dot_rows_forward(a, b, index, count, out, stream());
}

void CudaOps::axpby(float alpha, TensorView x, float beta, TensorView y, TensorView out) {
  cuda::axpby_forward(alpha, x, beta, y, out, stream());
}

void CudaOps::reduce_sum(TensorView x, int power, TensorView out) { cuda::reduce_sum_forward(x, power, out, stream()); }

void CudaOps::adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                         const AdamW& hp) {
  cuda::adamw_step(master, grad, m, v, param, hp, stream());
}

std::unique_ptr<Ops> make_cuda_ops(int device) { return std::make_unique<CudaOps>(device); }

}  // namespace rt
