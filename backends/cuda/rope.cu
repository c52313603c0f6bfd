// rope: in-place rotate-half rotary embedding on x [T, H, D] (f32/bf16/f16). One thread per
// (position, frequency) pair computes cos/sin once and rotates that pair in every head.
// qkv_rope_split: the same rotation fused with splitting a QKV projection's output into q, k, v.
//
// The angle is computed step by step as backends/cpu/rope.cpp does (see the reasoning there):
// the exponent 2i/D as an IEEE fp32 division, theta^expo in double rounded to fp32, an fp32
// reciprocal, one fp32 product with the fp32 position; then cos/sin of that fp32 angle in double,
// rounded to fp32. The rotation uses __fmul_rn/__fadd_rn so the compiler cannot contract it into
// FMAs: on f32 inputs the result matches the CPU path bit for bit (barring a last-ulp
// difference in the device's double cos/sin, which is then rounded away).
#include <cmath>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"

namespace rt::cuda {
namespace {

// cos and sin of the angle of frequency pair i at position pos (see the top of the file).
__device__ __forceinline__ void rope_cos_sin(int64_t pos, int64_t i, int64_t D, float base, float& c, float& s) {
  const float expo = __fdiv_rn(static_cast<float>(2 * i), static_cast<float>(D));
  const float p = static_cast<float>(pow(static_cast<double>(base), static_cast<double>(expo)));
  const float inv_freq = __fdiv_rn(1.0f, p);
  const float angle = __fmul_rn(static_cast<float>(pos), inv_freq);
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  c = static_cast<float>(cd);
  s = static_cast<float>(sd);
}

// Rotates the pair (x1, x2) = (src[i], src[i + half]) into dst; kInverse: by minus the angle.
template <bool kInverse>
__device__ __forceinline__ void rotate_pair(const void* src, int64_t so, void* dst, int64_t dO, DType sdt, DType ddt,
                                            int64_t half, float c, float s) {
  const float x1 = load_f(src, so, sdt), x2 = load_f(src, so + half, sdt);
  if constexpr (kInverse) {
    store_f(dst, dO, ddt, __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    store_f(dst, dO + half, ddt, __fsub_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  } else {
    store_f(dst, dO, ddt, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    store_f(dst, dO + half, ddt, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  }
}

// Row t at position pos0 + t, or (routed rows, index != nullptr) pos0 + index[t] for t < *count
// (rows past the count are left alone).
template <bool kInverse>
__global__ void rope_kernel(void* x, DType dt, int64_t T, int64_t H, int64_t D, int64_t s0, int64_t s1, int64_t pos0,
                            float base, const int32_t* index, const int32_t* count) {
  const int64_t half = D / 2;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= T * half) return;
  const int64_t t = idx / half, i = idx % half;
  if (index != nullptr && t >= *count) return;
  float c, s;
  rope_cos_sin(pos0 + (index != nullptr ? index[t] : t), i, D, base, c, s);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t o = t * s0 + h * s1 + i;
    rotate_pair<kInverse>(x, o, x, o, dt, dt, half, c, s);
  }
}

struct HeadsOut {  // an output [T, H, D] view
  void* data;
  DType dtype;
  int64_t H, s0, s1;
};

// qkv row t = [q heads | k heads | v heads], each head D wide: q and k rotated into their outputs,
// v copied. A block takes kSplitRows positions: its threads first compute their (cos, sin) pairs
// into shared memory, one pair each, then share out the (row, head, pair) elements. (One thread
// per pair looping over the heads, as rope_kernel does, makes a decode step's single position a
// chain of 18 dependent load/store round trips.) This kernel is the general one (any dtype mix,
// any strides); qkv_rope_split_vec_kernel below takes the model's layout. pos_dev != nullptr: one
// token whose position is read from the device, its k and v going to row pos (or pos % ring) of k
// and v, the whole KV caches.
constexpr int kSplitRows = 8, kSplitThreads = 256;

// Row t's position: pos0 + t, or the device-held one of a decode step.
__device__ __forceinline__ int64_t split_position(int64_t t, int64_t pos0, const int32_t* pos_dev) {
  return pos_dev != nullptr ? static_cast<int64_t>(*pos_dev) : pos0 + t;
}
// The cache row that row t's k and v go to: t, or (decode at a device-held position) that
// position, modulo the ring's length for a sliding-window cache.
__device__ __forceinline__ int64_t split_kv_row(int64_t t, int64_t pos0, const int32_t* pos_dev, int64_t ring) {
  if (pos_dev == nullptr) return t;
  const int64_t p = split_position(t, pos0, pos_dev);
  return ring > 0 ? p % ring : p;
}
// The (cos, sin) pairs of the block's rows t0.. (kSplitRows, fewer at the end) into cos_sin, one
// pair a thread, then a barrier; returns the block's row count.
__device__ __forceinline__ int split_block_angles(float* cos_sin, int64_t t0, int64_t T, int D, int64_t pos0,
                                                  const int32_t* pos_dev, float base) {
  const int half = D / 2;
  const int rows = static_cast<int>(T - t0 < kSplitRows ? T - t0 : kSplitRows);
  for (int e = threadIdx.x; e < rows * half; e += blockDim.x) {
    const int r = e / half, i = e - r * half;
    rope_cos_sin(split_position(t0 + r, pos0, pos_dev), i, D, base, cos_sin[r * D + i], cos_sin[r * D + half + i]);
  }
  __syncthreads();
  return rows;
}
__global__ void __launch_bounds__(kSplitThreads)
    qkv_rope_split_kernel(const void* qkv, DType dt, int64_t ld, int64_t T, int D, HeadsOut q, HeadsOut k, HeadsOut v,
                          int64_t pos0, const int32_t* pos_dev, int64_t ring, float base) {
  extern __shared__ float cos_sin[];  // per row of the block: [D/2] cos, then [D/2] sin
  const int half = D / 2;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kSplitRows;
  const int rows = split_block_angles(cos_sin, t0, T, D, pos0, pos_dev, base);
  const int hq = static_cast<int>(q.H), hk = static_cast<int>(k.H);
  const int per_row = (hq + hk + static_cast<int>(v.H)) * half;
  for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
    const int r = e / per_row, rest = e - r * per_row, h = rest / half, i = rest - h * half;
    const int64_t t = t0 + r;
    const int64_t kv_row = split_kv_row(t, pos0, pos_dev, ring);
    const int64_t src = t * ld + static_cast<int64_t>(h) * D + i;
    const float c = cos_sin[r * D + i], s = cos_sin[r * D + half + i];
    if (h < hq) {
      rotate_pair<false>(qkv, src, q.data, t * q.s0 + h * q.s1 + i, dt, q.dtype, half, c, s);
    } else if (h < hq + hk) {
      rotate_pair<false>(qkv, src, k.data, kv_row * k.s0 + (h - hq) * k.s1 + i, dt, k.dtype, half, c, s);
    } else {
      const int64_t o = kv_row * v.s0 + (h - hq - hk) * v.s1 + i;
      store_f(v.data, o, v.dtype, load_f(qkv, src, dt));
      store_f(v.data, o + half, v.dtype, load_f(qkv, src + half, dt));
    }
  }
}

// The split above in 16-byte accesses, for one dtype T throughout: a thread takes 8 adjacent pairs
// (i..i+7 and their partners i+half..) of one head. The same products and sums per element, so the
// same bits. Where every view is T, half % 8 == 0 and rows and heads start 16-byte aligned. (The
// general kernel's 2-byte accesses paced it, not its fp64 angles: 155 us for 32K rows of 0.5B on
// an H100, this one 56 us; eight positions a block alone changed nothing.)
template <class T>
__global__ void __launch_bounds__(kSplitThreads)
    qkv_rope_split_vec_kernel(const T* qkv, int64_t ld, int64_t T_rows, int D, HeadsOut q, HeadsOut k, HeadsOut v,
                              int64_t pos0, const int32_t* pos_dev, int64_t ring, float base) {
  extern __shared__ float cos_sin[];  // per row of the block: [D/2] cos, then [D/2] sin
  using V8 = Vec<T, 8>;
  const int half = D / 2, groups = half / 8;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kSplitRows;
  const int rows = split_block_angles(cos_sin, t0, T_rows, D, pos0, pos_dev, base);
  const int hq = static_cast<int>(q.H), hk = static_cast<int>(k.H);
  const int per_row = (hq + hk + static_cast<int>(v.H)) * groups;
  for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
    const int r = e / per_row, rest = e - r * per_row, h = rest / groups, i = (rest - h * groups) * 8;
    const int64_t t = t0 + r;
    const int64_t kv_row = split_kv_row(t, pos0, pos_dev, ring);
    const T* src = qkv + t * ld + static_cast<int64_t>(h) * D + i;
    const V8 a = *reinterpret_cast<const V8*>(src), b = *reinterpret_cast<const V8*>(src + half);
    T* dst;
    if (h < hq) dst = static_cast<T*>(q.data) + t * q.s0 + h * q.s1 + i;
    else if (h < hq + hk) dst = static_cast<T*>(k.data) + kv_row * k.s0 + (h - hq) * k.s1 + i;
    else dst = static_cast<T*>(v.data) + kv_row * v.s0 + (h - hq - hk) * v.s1 + i;
    if (h >= hq + hk) {
      *reinterpret_cast<V8*>(dst) = a;
      *reinterpret_cast<V8*>(dst + half) = b;
      continue;
    }
    V8 o1, o2;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x1 = to_f(a.v[j]), x2 = to_f(b.v[j]);
      const float c = cos_sin[r * D + i + j], sn = cos_sin[r * D + half + i + j];
      o1.v[j] = from_f<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, sn)));
      o2.v[j] = from_f<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, sn)));
    }
    *reinterpret_cast<V8*>(dst) = o1;
    *reinterpret_cast<V8*>(dst + half) = o2;
  }
}

void check_rope_range(const char* op, int64_t pos0, int64_t T, double theta) {
  RT_CHECK(pos0 >= 0, op, ": pos0 must be >= 0, found ", pos0);
  RT_CHECK(pos0 + T <= (int64_t{1} << 24), op, ": positions up to ", pos0 + T,
           " exceed 2^24, past which fp32 positions are not exact");
  RT_CHECK(std::isfinite(theta) && theta > 0, op, ": theta must be a finite number > 0, found ", theta);
}

template <bool kInverse>
void rope_launch(const char* op, const char* arg, TensorView x, int64_t pos0, double theta, cudaStream_t stream,
                 const int32_t* index = nullptr, const int32_t* count = nullptr) {
  check_cuda(op, arg, x);
  check_float(op, arg, x);
  check_ndim(op, arg, x, 3);
  check_unit_inner_stride(op, arg, x);
  const int64_t T = x.shape[0], H = x.shape[1], D = x.shape[2];
  RT_CHECK(D % 2 == 0, op, ": head dim (", arg, ".shape[2]) must be even, found shape ", x.shape_str());
  check_rope_range(op, pos0, T, theta);
  if (T == 0 || H == 0 || D == 0) return;
  const int64_t n = T * (D / 2);
  const int threads = 128;
  rope_kernel<kInverse><<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      x.data, x.dtype, T, H, D, x.stride[0], x.stride[1], pos0, static_cast<float>(theta), index, count);
  CUDA_CHECK_LAUNCH();
}

// pos_dev == nullptr: positions pos0.., k and v [T, Hkv, D]. Else one token at the position in
// pos_dev, k and v the whole caches [capacity, Hkv, D] (row pos, or pos % ring).
void qkv_rope_split_launch(const char* op, TensorView qkv, int64_t pos0, const int32_t* pos_dev, int64_t ring,
                           double theta, TensorView q, TensorView k, TensorView v, cudaStream_t stream) {
  check_cuda(op, "qkv", qkv);
  check_float(op, "qkv", qkv);
  check_ndim(op, "qkv", qkv, 2);
  check_unit_inner_stride(op, "qkv", qkv);
  const int64_t T = qkv.shape[0];
  const struct {
    const char* name;
    TensorView* t;
  } outs[] = {{"q", &q}, {"k", &k}, {"v", &v}};
  for (const auto& [name, t] : outs) {
    check_cuda(op, name, *t);
    check_float(op, name, *t);
    check_ndim(op, name, *t, 3);
    check_unit_inner_stride(op, name, *t);
    const bool cache = pos_dev != nullptr && t != &q;
    RT_CHECK((cache || t->shape[0] == T) && t->shape[2] == q.shape[2], op, ": argument '", name,
             "' must have shape [", cache ? "capacity" : std::to_string(T), ", H, ", q.shape[2], "] (",
             cache ? "a KV cache" : "qkv rows", ", q's head dim), found ", t->shape_str());
    RT_CHECK(!views_overlap(*t, qkv), op, ": output '", name, "' overlaps 'qkv'");
  }
  const int64_t D = q.shape[2];
  RT_CHECK(D % 2 == 0, op, ": head dim must be even, found q shape ", q.shape_str());
  const int64_t n = (q.shape[1] + k.shape[1] + v.shape[1]) * D;
  RT_CHECK(qkv.shape[1] == n, op, ": qkv has ", qkv.shape[1], " columns; q ", q.shape_str(), ", k ", k.shape_str(),
           " and v ", v.shape_str(), " need ", n);
  check_rope_range(op, pos0, T, theta);
  if (T == 0 || D == 0) return;
  RT_CHECK(T <= INT32_MAX && n <= INT32_MAX, op, ": ", T, " rows of ", n, " columns exceed the launch limits");
  auto heads = [](const TensorView& t) { return HeadsOut{t.data, t.dtype, t.shape[1], t.stride[0], t.stride[1]}; };
  RT_CHECK(n * kSplitRows <= INT32_MAX && D <= 1024, op, ": ", n, " columns of head dim ", D,
           " exceed the launch limits (head dim at most 1024)");
  const auto grid = static_cast<unsigned>((T + kSplitRows - 1) / kSplitRows);
  const size_t smem = static_cast<size_t>(kSplitRows * D) * sizeof(float);
  auto aligned = [](const void* p, int64_t s0, int64_t s1, size_t es) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (s0 * static_cast<int64_t>(es)) % 16 == 0 &&
           (s1 * static_cast<int64_t>(es)) % 16 == 0;
  };
  const size_t es = dtype_size(qkv.dtype);
  if ((D / 2) % 8 == 0 && q.dtype == qkv.dtype && k.dtype == qkv.dtype && v.dtype == qkv.dtype &&
      aligned(qkv.data, qkv.stride[0], D, es) && aligned(q.data, q.stride[0], q.stride[1], es) &&
      aligned(k.data, k.stride[0], k.stride[1], es) && aligned(v.data, v.stride[0], v.stride[1], es)) {
    with_float_type(qkv.dtype, [&](auto tag) {
      using E = decltype(tag);
      qkv_rope_split_vec_kernel<E><<<grid, kSplitThreads, smem, stream>>>(
          static_cast<const E*>(qkv.data), qkv.stride[0], T, static_cast<int>(D), heads(q), heads(k), heads(v), pos0,
          pos_dev, ring, static_cast<float>(theta));
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
  qkv_rope_split_kernel<<<grid, kSplitThreads, smem, stream>>>(
      qkv.data, qkv.dtype, qkv.stride[0], T, static_cast<int>(D), heads(q), heads(k), heads(v), pos0, pos_dev, ring,
      static_cast<float>(theta));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward(TensorView x, int64_t pos0, double theta, cudaStream_t stream) {
  rope_launch<false>("rope", "x", x, pos0, theta, stream);
}

void qkv_rope_split_forward(TensorView qkv, int64_t pos0, double theta, TensorView q, TensorView k, TensorView v,
                            cudaStream_t stream) {
  qkv_rope_split_launch("qkv_rope_split", qkv, pos0, nullptr, 0, theta, q, k, v, stream);
}

void qkv_rope_split_at_forward(TensorView qkv, TensorView pos, double theta, TensorView q, TensorView k_cache,
                               TensorView v_cache, int64_t ring, cudaStream_t stream) {
  const char* op = "qkv_rope_split_at";
  check_cuda(op, "pos", pos);
  RT_CHECK(pos.dtype == DType::I32 && pos.numel() == 1, op, ": argument 'pos' must be I32 [1], found ",
           dtype_name(pos.dtype), " ", pos.shape_str());
  RT_CHECK(qkv.ndim == 2 && qkv.shape[0] == 1 && q.ndim == 3 && q.shape[0] == 1, op,
           ": one token expected, qkv [1, n] and q [1, Hq, D]; found ", qkv.shape_str(), " and ", q.shape_str());
  RT_CHECK(k_cache.ndim == 3 && v_cache.ndim == 3 && k_cache.shape[0] == v_cache.shape[0], op,
           ": k_cache and v_cache must be [capacity, Hkv, D] alike, found ", k_cache.shape_str(), " and ",
           v_cache.shape_str());
  RT_CHECK(ring >= 0 && (ring == 0 || ring == k_cache.shape[0]), op, ": ring ", ring,
           " must be 0 or the cache's row count ", k_cache.shape[0]);
  qkv_rope_split_launch(op, qkv, 0, static_cast<const int32_t*>(pos.data), ring, theta, q, k_cache, v_cache, stream);
}

void rope_rows_forward(TensorView x, TensorView index, TensorView count, int64_t pos0, double theta, bool inverse,
                       cudaStream_t stream) {
  const char* op = inverse ? "rope_rows (backward)" : "rope_rows";
  check_cuda(op, "index", index);
  check_cuda(op, "count", count);
  RT_CHECK(index.dtype == DType::I32 && index.ndim == 1 && index.is_contiguous() && count.dtype == DType::I32 &&
               count.numel() == 1,
           op, ": expected index I32 [cap] (contiguous) and count I32 [1], found ", dtype_name(index.dtype), " ",
           index.shape_str(), " and ", dtype_name(count.dtype), " ", count.shape_str());
  RT_CHECK(x.ndim == 3 && x.shape[0] <= index.shape[0], op, ": argument 'x' [cap, H, D] has more rows than the index (",
           index.shape[0], "), found ", x.shape_str());
  // Positions are index values (< 2^24 is checked where the index is made: a sequence length).
  const auto* idx = static_cast<const int32_t*>(index.data);
  const auto* cnt = static_cast<const int32_t*>(count.data);
  if (inverse) rope_launch<true>(op, "x", x, pos0, theta, stream, idx, cnt);
  else rope_launch<false>(op, "x", x, pos0, theta, stream, idx, cnt);
}

// x1' = x1 c + x2 s, x2' = x2 c - x1 s: R(-angle), the transpose of the forward's R(angle).
void rope_backward(TensorView dx, int64_t pos0, double theta, cudaStream_t stream) {
  rope_launch<true>("rope_backward", "dx", dx, pos0, theta, stream);
}

}  // namespace rt::cuda
