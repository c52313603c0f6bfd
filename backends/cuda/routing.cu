// L2A's routed rows on the device: the router's decisions compacted into an ascending index list
// and a count (CUB's DeviceSelect, a decoupled-lookback prefix sum), and the gather / scatter-add
// of activation rows through that list. The count never leaves the device: every kernel that uses
// it reads it, so a routed layer needs no host synchronization (and can be captured in a graph).
// Grids are sized for the capacity (all T rows); blocks past the count return at once.
#include <string>
#include <type_traits>

#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "cuda/memory.h"
#include "rt/sdk/position_hash.h"

namespace rt::cuda {
namespace {

// A flag is set when the decision is non-zero (d is exactly 0 or 1; a NaN decision counts as set,
// so it propagates into the routed output instead of silently dropping the row).
struct NonZero {
  const float* flags;
  __device__ __forceinline__ bool operator()(int32_t t) const { return !(flags[t] == 0.f); }
};

void check_index(const char* op, const TensorView& index, const TensorView& count, int64_t rows) {
  check_cuda(op, "index", index);
  check_cuda(op, "count", count);
  RT_CHECK(index.dtype == DType::I32 && index.ndim == 1 && index.is_contiguous(), op,
           ": argument 'index' must be a contiguous I32 [cap] tensor, found ", dtype_name(index.dtype), " ",
           index.shape_str());
  RT_CHECK(count.dtype == DType::I32 && count.numel() == 1, op, ": argument 'count' must be I32 [1], found ",
           dtype_name(count.dtype), " ", count.shape_str());
  RT_CHECK(rows <= index.shape[0], op, ": ", rows, " rows but the index has only ", index.shape[0], " entries");
}

// One block per row of the capacity; row i < count copies x[index[i]] (gather) or adds into
// dst[index[i]] (scatter), rows past the count write zeros (gather) or nothing (scatter).
template <bool kScatter>
__global__ void routed_rows_kernel(RowsDesc a, RowsDesc b, int64_t cols, int64_t cap, int64_t limit,
                                   const int32_t* index, const int32_t* count) {
  const int n = *count;
  for (int64_t i = blockIdx.x; i < cap; i += gridDim.x) {
    if constexpr (kScatter) {
      if (i >= n) return;
      if (index[i] < 0 || index[i] >= limit) continue;  // an index list not made by compact_rows: skip, never fault
      const int64_t so = a.row_offset(i), dO = b.row_offset(index[i]);
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const int64_t d = dO + c * b.col_stride;
        store_f(b.data, d, b.dtype, load_f(b.data, d, b.dtype) + load_f(a.data, so + c * a.col_stride, a.dtype));
      }
    } else {
      const int64_t dO = b.row_offset(i);
      if (i < n && index[i] >= 0 && index[i] < limit) {
        const int64_t so = a.row_offset(index[i]);
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
          store_f(b.data, dO + c * b.col_stride, b.dtype, load_f(a.data, so + c * a.col_stride, a.dtype));
      } else {
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) store_f(b.data, dO + c * b.col_stride, b.dtype, 0.f);
      }
    }
  }
}

// The common case, rows with unit column stride and 16-byte aligned rows, in vectors of 16 bytes
// of the narrower type and several rows per block (one block per row of 896 bf16 columns ran at a
// tenth of the bandwidth: 0.26 ms a call at T = 32K). The two sides may differ in type: the paper
// layout scatter-adds bf16 o_proj rows into the f32 residual (24 calls, 7.7 ms of a 32K prefill on
// the block-per-row kernel). Each element goes through the same float conversions as load_f /
// store_f, so the result is the generic kernel's to the bit.
template <class TA, class TB>
constexpr int vec_elems() {
  return 16 / static_cast<int>(sizeof(TA) < sizeof(TB) ? sizeof(TA) : sizeof(TB));
}
template <class TA, class TB, bool kScatter>
__global__ void routed_rows_vec_kernel(const TA* a, int64_t a_row, TB* b, int64_t b_row, int vecs,
                                       int rows_per_block, int64_t cap, int64_t limit, const int32_t* index,
                                       const int32_t* count) {
  constexpr int kPer = vec_elems<TA, TB>();
  using PA = Vec<TA, kPer>;
  using PB = Vec<TB, kPer>;
  const int64_t n = *count;
  const int64_t span = static_cast<int64_t>(rows_per_block) * vecs;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block; r0 < cap;
       r0 += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    if (kScatter && r0 >= n) return;
    for (int64_t e = threadIdx.x; e < span; e += blockDim.x) {
      const int64_t i = r0 + e / vecs;
      const int v = static_cast<int>(e % vecs);
      if (i >= cap) break;
      const int32_t src = i < n ? index[i] : -1;
      const bool valid = i < n && src >= 0 && src < limit;
      if constexpr (kScatter) {
        if (!valid) continue;  // past the count, or an index list not made by compact_rows: skip, never fault
        PB* dp = reinterpret_cast<PB*>(b + src * b_row) + v;
        PB dv = *dp;
        const PA sv = reinterpret_cast<const PA*>(a + i * a_row)[v];
#pragma unroll
        for (int k = 0; k < kPer; ++k) dv.v[k] = from_f<TB>(to_f(dv.v[k]) + to_f(sv.v[k]));
        *dp = dv;
      } else {
        PB out;
        if (valid) {
          const PA sv = reinterpret_cast<const PA*>(a + src * a_row)[v];
#pragma unroll
          for (int k = 0; k < kPer; ++k) out.v[k] = from_f<TB>(to_f(sv.v[k]));
        } else {
#pragma unroll
          for (int k = 0; k < kPer; ++k) out.v[k] = from_f<TB>(0.f);
        }
        reinterpret_cast<PB*>(b + i * b_row)[v] = out;
      }
    }
  }
}

// Whether launch_routed_rows may take the vector kernel: float types, unit column stride, one row
// stride, every row start 16-byte aligned and rows a whole number of vectors.
bool vector_rows(const RowsDesc& a, const RowsDesc& b, int64_t cols) {
  auto vector_type = [](DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; };
  if (!vector_type(a.dtype) || !vector_type(b.dtype)) return false;
  const auto per = static_cast<int64_t>(16 / std::min(dtype_size(a.dtype), dtype_size(b.dtype)));
  return cols % per == 0 && rows_16b_aligned(a) && rows_16b_aligned(b);
}

// Rows too narrow for the vector kernel and for a block each (the gate gradient's [T, 1]
// scatter-add took 3.6 ms of a 0.5B training step at 32K on routed_rows_kernel), a thread per
// element. The same arithmetic per element as routed_rows_kernel.
template <bool kScatter>
__global__ void routed_rows_flat_kernel(RowsDesc a, RowsDesc b, int64_t cols, int64_t cap, int64_t limit,
                                        const int32_t* index, const int32_t* count) {
  const int64_t n = *count, total = cap * cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, c = e % cols;
    const bool valid = i < n && index[i] >= 0 && index[i] < limit;
    if constexpr (kScatter) {
      if (i >= n) return;  // e only grows
      if (!valid) continue;
      const int64_t d = b.row_offset(index[i]) + c * b.col_stride;
      const float add = load_f(a.data, a.row_offset(i) + c * a.col_stride, a.dtype);
      store_f(b.data, d, b.dtype, load_f(b.data, d, b.dtype) + add);
    } else {
      const float v = valid ? load_f(a.data, a.row_offset(index[i]) + c * a.col_stride, a.dtype) : 0.f;
      store_f(b.data, b.row_offset(i) + c * b.col_stride, b.dtype, v);
    }
  }
}

// Columns of a [rows, ...] view: everything after the first dimension, which must be contiguous
// among itself (a row is one run of `cols` elements, unit or constant stride).
int64_t row_width(const char* op, const char* arg, const TensorView& v) {
  check_cuda(op, arg, v);
  check_float(op, arg, v);
  RT_CHECK(v.ndim >= 1, op, ": argument '", arg, "' must have a row dimension, found a scalar");
  int64_t cols = 1;
  for (int i = 1; i < v.ndim; ++i) cols *= v.shape[i];
  for (int i = 1; i + 1 < v.ndim; ++i)
    RT_CHECK(v.shape[i] <= 1 || v.stride[i] == v.stride[i + 1] * v.shape[i + 1], op, ": argument '", arg,
             "' must have contiguous rows past its first dimension, found shape ", v.shape_str());
  return cols;
}

// The view as [rows, cols] for RowsDesc.
TensorView as_matrix(const TensorView& v, int64_t cols) {
  TensorView m = v;
  m.ndim = 2;
  m.shape = {v.shape[0], cols, 0, 0};
  m.stride = {v.stride[0], v.ndim > 1 ? v.stride[v.ndim - 1] : 1, 0, 0};
  return m;
}

template <bool kScatter>
void launch_routed_rows(const char* op, const TensorView& a, const char* a_name, const TensorView& b,
                        const char* b_name, int64_t cap, const TensorView& index, const TensorView& count,
                        cudaStream_t stream) {
  const int64_t ca = row_width(op, a_name, a), cb = row_width(op, b_name, b);
  RT_CHECK(ca == cb, op, ": '", a_name, "' ", a.shape_str(), " and '", b_name, "' ", b.shape_str(),
           " must have rows of the same width");
  check_index(op, index, count, cap);
  RT_CHECK(!views_overlap(a, b), op, ": '", a_name, "' and '", b_name, "' overlap");
  if (cap == 0 || ca == 0) return;
  const RowsDesc da = rows_desc(as_matrix(a, ca)), db = rows_desc(as_matrix(b, cb));
  const int64_t limit = kScatter ? b.shape[0] : a.shape[0];
  const auto* idx = static_cast<const int32_t*>(index.data);
  const auto* cnt = static_cast<const int32_t*>(count.data);
  if (vector_rows(da, db, ca)) {
    const int per = static_cast<int>(16 / std::min(dtype_size(a.dtype), dtype_size(b.dtype)));
    const int vecs = static_cast<int>(ca / per);
    const int threads = 256;
    const int rows_per_block = std::max(1, threads / vecs);
    const int64_t groups = (cap + rows_per_block - 1) / rows_per_block;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(groups, 1 << 20));
    auto go = [&](auto ta, auto tb) {
      using TA = decltype(ta);
      using TB = decltype(tb);
      routed_rows_vec_kernel<TA, TB, kScatter><<<blocks, threads, 0, stream>>>(
          static_cast<const TA*>(da.data), da.stride[0], static_cast<TB*>(db.data), db.stride[0], vecs,
          rows_per_block, cap, limit, idx, cnt);
    };
    with_float_type(a.dtype, [&](auto ta) { with_float_type(b.dtype, [&](auto tb) { go(ta, tb); }); });
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (ca < 64) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((cap * ca + 255) / 256, 1 << 20));
    routed_rows_flat_kernel<kScatter><<<blocks, 256, 0, stream>>>(da, db, ca, cap, limit, idx, cnt);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const int threads = ca >= 512 ? 256 : 128;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(cap, 1 << 20));
  routed_rows_kernel<kScatter><<<blocks, threads, 0, stream>>>(da, db, ca, cap, limit, idx, cnt);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace {
__global__ void gate_from_position_kernel(const int32_t* pos, int64_t first, const float* gate, float* out) {
  out[0] = static_cast<int64_t>(pos[0]) >= first ? gate[0] : 0.f;
}
__global__ void position_draw_kernel(const int32_t* pos, uint64_t key, double below, float* out) {
  out[0] = rt::position_draw(key, pos[0], below) ? 1.f : 0.f;
}
__global__ void position_draw_rows_kernel(int64_t pos0, int64_t n, uint64_t key, double below, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = rt::position_draw(key, pos0 + i, below) ? 1.f : 0.f;
}
}  // namespace

void position_draw_rows_forward(int64_t pos0, uint64_t key, double below, TensorView out, cudaStream_t stream) {
  const char* op = "position_draw_rows";
  check_cuda(op, "out", out);
  RT_CHECK(out.dtype == DType::F32 && out.ndim == 1 && out.stride[0] == 1, op,
           ": argument 'out' must be a contiguous f32 [T], found ", dtype_name(out.dtype), " ", out.shape_str());
  RT_CHECK(pos0 >= 0, op, ": pos0 must be >= 0, found ", pos0);
  const int64_t n = out.shape[0];
  if (n == 0) return;
  const int threads = 256;
  RT_CHECK((n + threads - 1) / threads <= INT32_MAX, op, ": ", n, " rows exceed the launch limit");
  position_draw_rows_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      pos0, n, key, below, static_cast<float*>(out.data));
  CUDA_CHECK_LAUNCH();
}

void position_draw_at_forward(TensorView pos, uint64_t key, double below, TensorView out, cudaStream_t stream) {
  const char* op = "position_draw_at";
  check_cuda(op, "pos", pos);
  check_cuda(op, "out", out);
  RT_CHECK(pos.dtype == DType::I32 && pos.numel() == 1, op, ": argument 'pos' must be I32 [1], found ",
           dtype_name(pos.dtype), " ", pos.shape_str());
  RT_CHECK(out.dtype == DType::F32 && out.numel() == 1, op, ": argument 'out' must be f32 [1], found ",
           dtype_name(out.dtype), " ", out.shape_str());
  position_draw_kernel<<<1, 1, 0, stream>>>(static_cast<const int32_t*>(pos.data), key, below,
                                            static_cast<float*>(out.data));
  CUDA_CHECK_LAUNCH();
}

void gate_from_position_at_forward(TensorView pos, int64_t first, TensorView gate, TensorView out,
                                   cudaStream_t stream) {
  const char* op = "gate_from_position_at";
  check_cuda(op, "pos", pos);
  check_cuda(op, "gate", gate);
  check_cuda(op, "out", out);
  RT_CHECK(pos.dtype == DType::I32 && pos.numel() == 1, op, ": argument 'pos' must be I32 [1], found ",
           dtype_name(pos.dtype), " ", pos.shape_str());
  RT_CHECK(gate.dtype == DType::F32 && gate.numel() == 1 && out.dtype == DType::F32 && out.numel() == 1, op,
           ": arguments 'gate' and 'out' must be f32 [1], found ", dtype_name(gate.dtype), " ", gate.shape_str(),
           " and ", dtype_name(out.dtype), " ", out.shape_str());
  gate_from_position_kernel<<<1, 1, 0, stream>>>(static_cast<const int32_t*>(pos.data), first,
                                                 static_cast<const float*>(gate.data), static_cast<float*>(out.data));
  CUDA_CHECK_LAUNCH();
}

void compact_rows_forward(TensorView flags, TensorView index, TensorView count, cudaStream_t stream) {
  const char* op = "compact_rows";
  check_cuda(op, "flags", flags);
  RT_CHECK(flags.dtype == DType::F32 && flags.ndim == 1 && flags.is_contiguous(), op,
           ": argument 'flags' must be a contiguous f32 [T] tensor, found ", dtype_name(flags.dtype), " ",
           flags.shape_str());
  const int64_t T = flags.shape[0];
  check_index(op, index, count, T);
  RT_CHECK(index.shape[0] == T, op, ": argument 'index' must have T = ", T, " entries, found ", index.shape_str());
  RT_CHECK(T <= INT32_MAX, op, ": ", T, " rows exceed the int32 index range");
  auto* idx = static_cast<int32_t*>(index.data);
  auto* cnt = static_cast<int32_t*>(count.data);
  CUDA_CHECK(cudaMemsetAsync(idx, 0, static_cast<size_t>(T) * sizeof(int32_t), stream));
  if (T == 0) {
    CUDA_CHECK(cudaMemsetAsync(cnt, 0, sizeof(int32_t), stream));
    return;
  }
  const thrust::counting_iterator<int32_t> rows(0);
  const NonZero pred{static_cast<const float*>(flags.data)};
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceSelect::If(nullptr, bytes, rows, idx, cnt, static_cast<int>(T), pred, stream));
  void* temp = malloc_async(bytes == 0 ? 256 : bytes, stream, [&] { return std::string(op) + ": CUB's temporary storage"; });
  const cudaError_t run = cub::DeviceSelect::If(temp, bytes, rows, idx, cnt, static_cast<int>(T), pred, stream);
  (void)cudaFreeAsync(temp, stream);
  CUDA_CHECK(run);
}

void gather_rows_forward(TensorView x, TensorView index, TensorView count, TensorView out, cudaStream_t stream) {
  launch_routed_rows<false>("gather_rows", x, "x", out, "out", out.ndim ? out.shape[0] : 0, index, count, stream);
}

void scatter_add_rows_forward(TensorView src, TensorView index, TensorView count, TensorView dst,
                              cudaStream_t stream) {
  launch_routed_rows<true>("scatter_add_rows", src, "src", dst, "dst", src.ndim ? src.shape[0] : 0, index, count,
                           stream);
}

}  // namespace rt::cuda
