// The LM head fused with cross-entropy, forward and backward in one call, chunked over rows so that
// at most [chunk_rows, V] f32 logits exist (never the full [N, V]). Per chunk of rows:
//   1. logits = h_c w^T                          cuBLASLt (GemmContext::matmul), f32 out
//   2. one block per row: max, log-sum-exp, loss = lse - logit[target]; then
//      G = grad_scale * (softmax - onehot(target)) (zero row where the target is ignored), written
//      in w's dtype (in place over the logits when that is f32; a separate bf16 buffer otherwise)
//   3. dh_c (=) G w,  dw += G^T h_c              cuBLASLt
// With bf16 weights the two gradient GEMMs run on bf16 G (relative rounding 2^-9 per element, fp32
// accumulation): the same precision as every other bf16 GEMM of the backward pass.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "cuda/linear.h"
#include "cuda/memory.h"

namespace rt::cuda {
namespace {

constexpr int32_t kIgnoreIndex = -100;
constexpr size_t kMaxLogitsBytes = size_t{256} << 20;
std::atomic<int64_t> g_chunk_rows_override{0};

__device__ __forceinline__ float block_max(float v) {
  __shared__ float warp_max[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  v = lane < nwarps ? warp_max[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max and sum in one pass (online: the sum is rescaled when the max grows).
__device__ __forceinline__ void online_add(float x, float& m, float& s) {
  if (x > m) {
    s = s * expf(m - x) + 1.f;  // m = -inf at first: 0 * 0 + 1
    m = x;
  } else if (x != -INFINITY) {
    s += expf(x - m);  // NaN propagates through here
  }
}

// Row r of the chunk (global row row0 + r) in two passes over the logits: the online max and sum,
// then the gradient; 16-byte loads where V % 4 == 0 (the chunk's rows are then 16-byte aligned).
// (A three-pass version, max then sum then gradient, spent 35 ms a 32K training step here; this
// one 17.5 ms, at its bytes' floor.) logits [rows, V] f32 contiguous; G [rows, V] contiguous in gdt
// (may be the logits themselves when gdt is f32: every element is read and written by the same
// thread, and the one cross-thread read, logit[target] by thread 0, happens before the first
// barrier). The loss is 0 where the target is ignored and NaN for a target out of range, whose
// first occurrence is reported through err.
__global__ void cross_entropy_kernel(const float* logits, int64_t V, const int32_t* targets, int64_t t_stride,
                                     int64_t row0, float grad_scale, void* losses, DType ldt, int64_t l_stride,
                                     void* G, DType gdt, EmbeddingError* err) {
  const int64_t r = blockIdx.x, n = row0 + r;
  const float* l = logits + r * V;
  const int64_t t = targets[n * t_stride];
  const bool ignored = t == kIgnoreIndex;
  const bool bad = !ignored && (t < 0 || t >= V);
  const float target_logit = threadIdx.x == 0 && !ignored && !bad ? l[t] : 0.f;
  const bool vec = V % 4 == 0;
  float m = -INFINITY, s = 0.f;
  if (vec) {
    for (int64_t i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 x = reinterpret_cast<const float4*>(l)[i];
      online_add(x.x, m, s);
      online_add(x.y, m, s);
      online_add(x.z, m, s);
      online_add(x.w, m, s);
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) online_add(l[i], m, s);
  }
  const float mx = block_max(m);
  s = block_sum(m == -INFINITY ? 0.f : s * expf(m - mx));
  const float lse = mx + logf(s);
  if (threadIdx.x == 0) {
    if (losses) store_f(losses, n * l_stride, ldt, ignored ? 0.f : (bad ? NAN : lse - target_logit));
    if (bad && err && atomicCAS(&err->flag, 0, kErrCrossEntropyTarget) == 0) {
      err->id = static_cast<int32_t>(t);
      err->pos = static_cast<int32_t>(n);
      err->vocab = static_cast<int32_t>(V);
    }
  }
  if (!G) return;
  const int64_t go = r * V;
  const bool zero = ignored || bad;
  auto grad = [&](int64_t i, float x) {
    const float p = expf(x - lse);
    return zero ? 0.f : grad_scale * (i == t ? p - 1.f : p);
  };
  if (vec && (gdt == DType::F32 || gdt == DType::BF16)) {
    for (int64_t i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 x = reinterpret_cast<const float4*>(l)[i];
      const float4 g = make_float4(grad(4 * i, x.x), grad(4 * i + 1, x.y), grad(4 * i + 2, x.z), grad(4 * i + 3, x.w));
      if (gdt == DType::F32) {
        reinterpret_cast<float4*>(static_cast<float*>(G) + go)[i] = g;  // in place over the logits: this thread's own
      } else {
        __nv_bfloat162 lo = __floats2bfloat162_rn(g.x, g.y), hi = __floats2bfloat162_rn(g.z, g.w);
        uint2 packed;
        packed.x = *reinterpret_cast<uint32_t*>(&lo);
        packed.y = *reinterpret_cast<uint32_t*>(&hi);
        reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(G) + go)[i] = packed;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) store_f(G, go + i, gdt, grad(i, l[i]));
  }
}

TensorView dev_view(void* p, DType dt, int64_t rows, int64_t cols) {
  return TensorView::contiguous(p, dt, Device::CUDA, {rows, cols});
}

}  // namespace

void set_lm_head_chunk_rows(int64_t rows) { g_chunk_rows_override.store(rows > 0 ? rows : 0); }

int64_t lm_head_chunk_rows(int64_t N, int64_t V) {
  const int64_t forced = g_chunk_rows_override.load();
  int64_t rows = forced > 0 ? forced
                            : static_cast<int64_t>(kMaxLogitsBytes / (static_cast<size_t>(std::max<int64_t>(V, 1)) *
                                                                      sizeof(float)));
  return std::max<int64_t>(1, std::min<int64_t>(rows, std::max<int64_t>(N, 1)));
}

void lm_head_cross_entropy(GemmContext& ctx, TensorView h, TensorView w, TensorView targets, float grad_scale,
                           TensorView losses, TensorView dh, TensorView dw, TensorView is_greedy, EmbeddingError* err,
                           cudaStream_t stream) {
  const char* op = "lm_head_cross_entropy";
  check_cuda(op, "h", h);
  check_cuda(op, "w", w);
  check_float(op, "h", h);
  check_float(op, "w", w);
  check_ndim(op, "h", h, 2);
  check_ndim(op, "w", w, 2);
  check_unit_inner_stride(op, "h", h);
  check_unit_inner_stride(op, "w", w);
  const int64_t N = h.shape[0], hidden = h.shape[1], V = w.shape[0];
  check_dim(op, "w", w, 1, hidden, "hidden size, h.shape[1]");
  RT_CHECK(V > 0, op, ": argument 'w' has no rows (vocabulary of size 0), shape ", w.shape_str());
  RT_CHECK(V <= INT32_MAX, op, ": vocabulary of ", V, " rows exceeds the i32 target range");
  check_view(op, "targets", targets);
  check_dtype(op, "targets", targets, DType::I32);
  RT_CHECK(targets.ndim == 1 && targets.shape[0] == N, op, ": argument 'targets' must have shape [", N,
           "] (rows of h), found ", targets.shape_str());
  RT_CHECK(std::isfinite(grad_scale), op, ": grad_scale must be finite, found ", grad_scale);
  const bool want_loss = !is_empty_output(losses), want_dh = !is_empty_output(dh), want_dw = !is_empty_output(dw);
  const bool want_greedy = !is_empty_output(is_greedy);
  if (want_greedy) {
    check_cuda(op, "is_greedy", is_greedy);
    check_dtype(op, "is_greedy", is_greedy, DType::I32);
    RT_CHECK(is_greedy.ndim == 1 && is_greedy.shape[0] == N, op, ": argument 'is_greedy' must have shape [", N,
             "] (rows of h), found ", is_greedy.shape_str());
  }
  if (want_loss) {
    check_cuda(op, "losses", losses);
    check_float(op, "losses", losses);
    RT_CHECK(losses.ndim == 1 && losses.shape[0] == N, op, ": argument 'losses' must have shape [", N,
             "] (rows of h), found ", losses.shape_str());
  }
  if (want_dh) {
    check_cuda(op, "dh", dh);
    check_float(op, "dh", dh);
    check_ndim(op, "dh", dh, 2);
    check_same_shape(op, "h", h, "dh", dh);
    check_unit_inner_stride(op, "dh", dh);
  }
  if (want_dw) {
    check_cuda(op, "dw", dw);
    check_not_f64(op, "dw", dw);
    check_dtype(op, "dw", dw, DType::F32);
    check_ndim(op, "dw", dw, 2);
    check_same_shape(op, "w", w, "dw", dw);
    check_unit_inner_stride(op, "dw", dw);
  }
  {
    const std::pair<const char*, const TensorView*> outs[] = {
        {"losses", &losses}, {"dh", &dh}, {"dw", &dw}, {"is_greedy", &is_greedy}};
    const std::pair<const char*, const TensorView*> all[] = {{"h", &h},   {"w", &w},   {"targets", &targets},
                                                             {"losses", &losses}, {"dh", &dh}, {"dw", &dw},
                                                             {"is_greedy", &is_greedy}};
    for (const auto& [on, o] : outs) {
      if (is_empty_output(*o)) continue;
      for (const auto& [in, i] : all) {
        if (i == o || is_empty_output(*i) || i->device != Device::CUDA) continue;
        RT_CHECK(!views_overlap(*o, *i), op, ": output '", on, "' overlaps '", in, "'");
      }
    }
  }
  if (N == 0 || (!want_loss && !want_dh && !want_dw && !want_greedy)) return;

  // Targets: host targets are validated here (nothing is computed on a bad one) and uploaded.
  const int32_t* dev_targets = targets.ptr<int32_t>();
  int64_t t_stride = targets.stride[0];
  std::unique_ptr<Scratch> staged;
  if (targets.device == Device::CPU) {
    std::vector<int32_t> host(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) {
      const int32_t t = targets.ptr<int32_t>()[n * t_stride];
      RT_CHECK(t == kIgnoreIndex || (t >= 0 && t < V), op, ": target ", t, " at row ", n,
               " is out of range for a vocabulary of size ", V, " (valid: 0..", V - 1, ", or -100 to ignore the row)");
      host[static_cast<size_t>(n)] = t;
    }
    staged = std::make_unique<Scratch>(host.size() * sizeof(int32_t), stream, "lm_head_cross_entropy targets");
    CUDA_CHECK(cudaMemcpyAsync(staged->get(), host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies at scope end
    dev_targets = static_cast<const int32_t*>(staged->get());
    t_stride = 1;
  }

  const int64_t chunk = lm_head_chunk_rows(N, V);
  const DType gdt = w.dtype;  // G feeds GEMMs against w and h (converted to w's dtype)
  const bool want_grad = want_dh || want_dw;
  const bool convert_h = h.dtype != w.dtype;
  const bool dh_direct = want_dh && (dh.dtype == DType::F32 || (dh.dtype == gdt && gdt != DType::F32));
  Scratch logits(static_cast<size_t>(chunk * V) * sizeof(float), stream, "lm_head_cross_entropy logits chunk");
  std::unique_ptr<Scratch> g_buf, h_buf, dh_buf;
  if (want_grad && gdt != DType::F32)
    g_buf = std::make_unique<Scratch>(static_cast<size_t>(chunk * V) * dtype_size(gdt), stream,
                                      "lm_head_cross_entropy gradient chunk");
  if (convert_h)
    h_buf = std::make_unique<Scratch>(static_cast<size_t>(chunk * hidden) * dtype_size(gdt), stream,
                                      "lm_head_cross_entropy h chunk (converted to w's dtype)");
  if (want_dh && !dh_direct)
    dh_buf = std::make_unique<Scratch>(static_cast<size_t>(chunk * hidden) * sizeof(float), stream,
                                       "lm_head_cross_entropy f32 dh chunk");
  void* g_ptr = want_grad ? (g_buf ? g_buf->get() : logits.get()) : nullptr;
  const int threads = V >= 8192 ? 1024 : 256;

  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t n = std::min(chunk, N - r0);
    TensorView hc = h.rows(r0, r0 + n);
    if (convert_h) {
      const TensorView conv = dev_view(h_buf->get(), gdt, n, hidden);
      copy_forward(hc, conv, stream);
      hc = conv;
    }
    const TensorView lg = dev_view(logits.get(), DType::F32, n, V);
    ctx.matmul(hc, false, w, true, lg, false, stream);
    // Greedy first: with an f32 head the gradient overwrites the logits in place.
    if (want_greedy)
      greedy_rows_async(static_cast<const float*>(logits.get()), n, V, dev_targets + r0 * t_stride, t_stride,
                        is_greedy.ptr<int32_t>() + r0 * is_greedy.stride[0], is_greedy.stride[0], stream);
    if (!want_loss && !want_grad) continue;
    cross_entropy_kernel<<<static_cast<unsigned>(n), threads, 0, stream>>>(
        static_cast<const float*>(logits.get()), V, dev_targets, t_stride, r0, grad_scale, losses.data, losses.dtype,
        want_loss ? losses.stride[0] : 0, g_ptr, gdt, err);
    CUDA_CHECK_LAUNCH();
    if (!want_grad) continue;
    const TensorView g = dev_view(g_ptr, gdt, n, V);
    if (want_dh) {
      const TensorView dhc = dh.rows(r0, r0 + n);
      if (dh_direct) {
        ctx.matmul(g, false, w, false, dhc, false, stream);
      } else {
        const TensorView tmp = dev_view(dh_buf->get(), DType::F32, n, hidden);
        ctx.matmul(g, false, w, false, tmp, false, stream);
        copy_forward(tmp, dhc, stream);
      }
    }
    if (want_dw) ctx.matmul(g, true, hc, false, dw, true, stream);
  }
}

}  // namespace rt::cuda
