// Reductions of the training ops: row_dot (one warp per row), reduce_sum (a deterministic
// two-pass sum over every element) and column sums (bias and RMSNorm weight gradients:
// deterministic, fixed row slices summed in order, no atomics). All accumulate in fp32 (reduce_sum
// in fp64 partials), over f32/bf16/f16 inputs of any row strides.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "cuda/memory.h"

namespace rt::cuda {
namespace {

// ---- row_dot -------------------------------------------------------------------------------------

constexpr int kRowDotWarps = 8;

// Both row_dot kernels: the warp's row (false past the rows, or past the device-side count when
// routed), and its lanes' partial sums added up and stored at out[r], or out[index[r]] (row_dot_rows).
__device__ __forceinline__ bool row_dot_row(int64_t rows, const int32_t* count, int64_t& r) {
  r = blockIdx.x * static_cast<int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  return r < rows && (count == nullptr || r < *count);  // whole warps: r is uniform across a warp
}
__device__ __forceinline__ void row_dot_store(float acc, int64_t r, void* out, DType ot, int64_t os, bool accumulate,
                                              const int32_t* index) {
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int64_t at = (index != nullptr ? index[r] : r) * os;
  if ((threadIdx.x & 31) == 0) store_f(out, at, ot, accumulate ? load_f(out, at, ot) + acc : acc);
}

// One warp per row.
__global__ void row_dot_kernel(RowsDesc a, RowsDesc b, void* out, DType ot, int64_t os, int64_t rows, int64_t cols,
                               bool accumulate, const int32_t* index, const int32_t* count) {
  int64_t r;
  if (!row_dot_row(rows, count, r)) return;
  const int lane = threadIdx.x & 31;
  const int64_t ao = a.row_offset(r), bo = b.row_offset(r);
  float acc = 0.f;
  for (int64_t c = lane; c < cols; c += 32)
    acc += load_f(a.data, ao + c * a.col_stride, a.dtype) * load_f(b.data, bo + c * b.col_stride, b.dtype);
  row_dot_store(acc, r, out, ot, os, accumulate, index);
}

// The same in 16-byte loads, 8 elements a lane at a time, where both views' rows are unit-stride,
// 16-byte aligned and at one row stride, and cols % 8 == 0 (the gate's rows: [T, heads x D] bf16).
// The scalar kernel above read one element a lane per load and walked RowsDesc's outer dimensions
// per row: 48 us for the 6.5K routed rows of a 32K step (0.5 TB/s). Sums differ from the scalar
// kernel's by fp32 rounding only (another order).
__global__ void row_dot_vec_kernel(const void* a, DType at, int64_t as, const void* b, DType bt, int64_t bs, void* out,
                                   DType ot, int64_t os, int64_t rows, int64_t cols, bool accumulate,
                                   const int32_t* index, const int32_t* count) {
  int64_t r;
  if (!row_dot_row(rows, count, r)) return;
  const int lane = threadIdx.x & 31;
  const int64_t ao = r * as, bo = r * bs;
  float acc = 0.f;
  for (int64_t c = 8 * lane; c < cols; c += 256) {
    float va[8], vb[8];
    load8(a, ao + c, at, va);
    load8(b, bo + c, bt, vb);
#pragma unroll
    for (int k = 0; k < 8; ++k) acc = fmaf(va[k], vb[k], acc);
  }
  row_dot_store(acc, r, out, ot, os, accumulate, index);
}

// ---- reduce_sum ----------------------------------------------------------------------------------

constexpr int kSumThreads = 256;
constexpr int64_t kSumMaxBlocks = 1024;

__device__ double block_sum_f64(double v) {
  __shared__ double warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < nwarps ? warp_sums[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Pass 1: block b sums elements b*T + t, (b + B)*T + t, ... (a fixed assignment for a given n) into
// partial[b].
__global__ void sum_partial_kernel(RowsDesc x, bool contiguous, int64_t n, int64_t cols, int power, double* partial) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t off = contiguous ? i : x.row_offset(i / cols) + (i % cols) * x.col_stride;
    const double v = load_f(x.data, off, x.dtype);
    acc += power == 2 ? v * v : v;
  }
  acc = block_sum_f64(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2: one block sums the partials in a fixed order and adds the total to out[0].
__global__ void sum_finish_kernel(const double* partial, int64_t nblocks, void* out, DType ot) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < nblocks; i += blockDim.x) acc += partial[i];
  acc = block_sum_f64(acc);
  if (threadIdx.x == 0) store_f(out, 0, ot, load_f(out, 0, ot) + static_cast<float>(acc));
}

// ---- column sums ---------------------------------------------------------------------------------

constexpr int kColX = 32, kColY = 8;
constexpr int64_t kColRowsPerSlice = 64, kColMaxSlices = 256;

// Block (x, s): columns x*32.., rows of slice s; writes partial[s * cols + c].
__global__ void column_partial_kernel(RowsDesc a, RowsDesc b, const float* row_scale, int64_t rows, int64_t cols,
                                      int64_t rows_per_slice, float* partial) {
  __shared__ float acc_s[kColY][kColX + 1];
  const int64_t c = blockIdx.x * static_cast<int64_t>(kColX) + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows_per_slice;
  const int64_t r1 = r0 + rows_per_slice < rows ? r0 + rows_per_slice : rows;
  float acc = 0.f;
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColY) {
      // (explicit roundings: no FMA contraction, so the vector kernel below sums to the same bits)
      float v = load_f(a.data, a.row_offset(r) + c * a.col_stride, a.dtype);
      if (b.data) v = __fmul_rn(v, load_f(b.data, b.row_offset(r) + c * b.col_stride, b.dtype));
      if (row_scale) v = __fmul_rn(v, row_scale[r]);
      acc = __fadd_rn(acc, v);
    }
  }
  acc_s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kColY; ++j) s += acc_s[j][threadIdx.x];
    partial[blockIdx.y * cols + c] = s;
  }
}

// The same sums where a (and b) have unit column stride, 16-byte aligned rows of one stride and
// cols % 8 == 0: a thread takes 8 adjacent columns in 16-byte loads (the scalar kernel's warp read
// 64 bytes of a bf16 row at a time: 0.12 ms a call for a [32K, 896] gradient, ~5x its bytes). Every
// column's sum runs in the scalar kernel's order (rows r0 + y, r0 + y + 8, ... per y; then y = 0..7;
// the same slices), so the two kernels agree to the bit. Block (x, s): columns 256 x.., slice s.
constexpr int kColVec = 8;
template <class TA, class TB, bool kHasB>
__global__ void column_partial_vec_kernel(const TA* a, int64_t a_row, const TB* b, int64_t b_row,
                                          const float* row_scale, int64_t rows, int64_t cols,
                                          int64_t rows_per_slice, float* partial) {
  constexpr int kBlockCols = kColX * kColVec;
  __shared__ float acc_s[kColY][kBlockCols + 1];
  const int64_t c0 = (blockIdx.x * static_cast<int64_t>(kColX) + threadIdx.x) * kColVec;
  const int64_t r0 = blockIdx.y * rows_per_slice;
  const int64_t r1 = r0 + rows_per_slice < rows ? r0 + rows_per_slice : rows;
  float acc[kColVec];
#pragma unroll
  for (int k = 0; k < kColVec; ++k) acc[k] = 0.f;
  if (c0 < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColY) {
      const Vec<TA, kColVec> av = *reinterpret_cast<const Vec<TA, kColVec>*>(a + r * a_row + c0);
      Vec<TB, kColVec> bv;
      if constexpr (kHasB) bv = *reinterpret_cast<const Vec<TB, kColVec>*>(b + r * b_row + c0);
      const float sc = row_scale ? row_scale[r] : 1.f;
#pragma unroll
      for (int k = 0; k < kColVec; ++k) {
        float v = to_f(av.v[k]);
        if constexpr (kHasB) v = __fmul_rn(v, to_f(bv.v[k]));
        if (row_scale) v = __fmul_rn(v, sc);
        acc[k] = __fadd_rn(acc[k], v);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kColVec; ++k) acc_s[threadIdx.y][threadIdx.x * kColVec + k] = acc[k];
  __syncthreads();
  // Thread t of the block's 256 finishes column 256 x + t.
  const int t = threadIdx.y * kColX + threadIdx.x;
  const int64_t c = blockIdx.x * static_cast<int64_t>(kBlockCols) + t;
  if (c < cols) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kColY; ++j) s += acc_s[j][t];
    partial[blockIdx.y * cols + c] = s;
  }
}

// Whether column_sum_accumulate may take the vector kernel for a (and b, if any).
bool vector_columns(const TensorView& a, const TensorView& b, bool has_b, int64_t cols) {
  return cols % kColVec == 0 && rows_16b_aligned(rows_desc(a)) && (!has_b || rows_16b_aligned(rows_desc(b)));
}

// Block (x, y) of (32, kFinishY) threads, columns 32 blockIdx.x..: thread y sums slices y,
// y + kFinishY, ... of its column in order, then thread y = 0 adds the kFinishY sums in order.
// (One thread per column walking every slice took 19 us a call for 256 slices of 896 columns:
// a chain of dependent L2 reads, 4 ms of a 0.5B training step at 32K over 217 calls.)
constexpr int kFinishY = 16;
__global__ void column_finish_kernel(const float* partial, int64_t slices, int64_t cols, void* out, DType ot,
                                     int64_t os) {
  __shared__ float part_s[kFinishY][33];
  const int64_t c = blockIdx.x * static_cast<int64_t>(32) + threadIdx.x;
  float s = 0.f;
  if (c < cols)
    for (int64_t i = threadIdx.y; i < slices; i += kFinishY) s += partial[i * cols + c];
  part_s[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  float t = 0.f;
#pragma unroll
  for (int j = 0; j < kFinishY; ++j) t += part_s[j][threadIdx.x];
  store_f(out, c * os, ot, load_f(out, c * os, ot) + t);
}

void check_input(const char* op, const char* arg, const TensorView& v) {
  check_cuda(op, arg, v);
  check_float(op, arg, v);
}

}  // namespace

namespace {
// A warp per row: the vector kernel where both views allow it (no f64), else the scalar one.
void launch_row_dot(const char* op, const TensorView& a, const TensorView& b, const TensorView& out, int64_t rows,
                    int64_t cols, bool accumulate, const int32_t* index, const int32_t* count, cudaStream_t stream) {
  const int64_t blocks = (rows + kRowDotWarps - 1) / kRowDotWarps;
  RT_CHECK(blocks <= INT32_MAX, op, ": ", rows, " rows exceed the launch limit");
  const RowsDesc da = rows_desc(a), db = rows_desc(b);
  const bool vec = cols % 8 == 0 && a.dtype != DType::F64 && b.dtype != DType::F64 && rows_16b_aligned(da) &&
                   rows_16b_aligned(db);
  if (vec)
    row_dot_vec_kernel<<<static_cast<unsigned>(blocks), kRowDotWarps * 32, 0, stream>>>(
        a.data, a.dtype, da.stride[0], b.data, b.dtype, db.stride[0], out.data, out.dtype, out.stride[0], rows, cols,
        accumulate, index, count);
  else
    row_dot_kernel<<<static_cast<unsigned>(blocks), kRowDotWarps * 32, 0, stream>>>(
        da, db, out.data, out.dtype, out.stride[0], rows, cols, accumulate, index, count);
  CUDA_CHECK_LAUNCH();
}

// row_dot's and row_dot_rows' shared checks: a and b [rows, cols] alike on the device, out 1-D apart from them.
void check_row_dot(const char* op, const TensorView& a, const TensorView& b, const TensorView& out) {
  check_input(op, "a", a);
  check_input(op, "b", b);
  check_input(op, "out", out);
  RT_CHECK(a.ndim >= 2, op, ": argument 'a' must be [rows, cols] (at least 2 dimensions), found shape ",
           a.shape_str());
  check_same_shape(op, "a", a, "b", b);
  RT_CHECK(out.ndim == 1, op, ": argument 'out' must be 1-D, found ", out.shape_str());
  RT_CHECK(!views_overlap(out, a) && !views_overlap(out, b), op, ": output 'out' overlaps an input");
}
}  // namespace

void row_dot_forward(TensorView a, TensorView b, TensorView out, bool accumulate, cudaStream_t stream) {
  const char* op = "row_dot";
  check_row_dot(op, a, b, out);
  const int64_t rows = num_rows(a), cols = row_len(a);
  RT_CHECK(out.shape[0] == rows, op, ": argument 'out' must have shape [", rows, "] (one value per row of a ",
           a.shape_str(), "), found ", out.shape_str());
  if (rows == 0) return;
  launch_row_dot(op, a, b, out, rows, cols, accumulate, nullptr, nullptr, stream);
}

void row_dot_rows_forward(TensorView a, TensorView b, TensorView index, TensorView count, TensorView out,
                          cudaStream_t stream) {
  const char* op = "row_dot_rows";
  check_row_dot(op, a, b, out);
  check_cuda(op, "index", index);
  check_cuda(op, "count", count);
  const int64_t rows = num_rows(a), cols = row_len(a);
  RT_CHECK(index.dtype == DType::I32 && index.ndim == 1 && index.stride[0] == 1 && index.shape[0] >= rows &&
               count.dtype == DType::I32 && count.numel() == 1,
           op, ": expected index I32 [cap >= ", rows, "] (contiguous) and count I32 [1], found ",
           dtype_name(index.dtype), " ", index.shape_str(), " and ", dtype_name(count.dtype), " ", count.shape_str());
  if (rows == 0) return;
  // (The index entries are the compaction's: ascending positions below T, as the CPU checks.)
  launch_row_dot(op, a, b, out, rows, cols, /*accumulate=*/true, static_cast<const int32_t*>(index.data),
                 static_cast<const int32_t*>(count.data), stream);
}

void reduce_sum_forward(TensorView x, int power, TensorView out, cudaStream_t stream) {
  const char* op = "reduce_sum";
  check_input(op, "x", x);
  check_input(op, "out", out);
  RT_CHECK(power == 1 || power == 2, op, ": power must be 1 (sum) or 2 (sum of squares), found ", power);
  RT_CHECK(out.numel() == 1 && out.ndim <= 1, op, ": argument 'out' must have shape [1], found ", out.shape_str());
  RT_CHECK(!views_overlap(out, x), op, ": output 'out' overlaps 'x'");
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t blocks = std::min<int64_t>((n + 4 * kSumThreads - 1) / (4 * kSumThreads), kSumMaxBlocks);
  Scratch partial(static_cast<size_t>(blocks) * sizeof(double), stream, "reduce_sum partials");
  auto* p = static_cast<double*>(partial.get());
  sum_partial_kernel<<<static_cast<unsigned>(blocks), kSumThreads, 0, stream>>>(rows_desc(x), x.is_contiguous(), n,
                                                                                cols, power, p);
  CUDA_CHECK_LAUNCH();
  sum_finish_kernel<<<1, kSumThreads, 0, stream>>>(p, blocks, out.data, out.dtype);
  CUDA_CHECK_LAUNCH();
}

void column_sum_accumulate(TensorView a, TensorView b, const float* row_scale, TensorView out, cudaStream_t stream) {
  const char* op = "column_sum";
  check_input(op, "a", a);
  check_input(op, "out", out);
  RT_CHECK(a.ndim >= 1, op, ": argument 'a' must have at least 1 dimension");
  const bool has_b = !is_empty_output(b);
  if (has_b) {
    check_input(op, "b", b);
    check_same_shape(op, "a", a, "b", b);
  }
  const int64_t rows = num_rows(a), cols = row_len(a);
  RT_CHECK(out.ndim == 1 && out.shape[0] == cols, op, ": argument 'out' must have shape [", cols,
           "] (the last dimension of ", a.shape_str(), "), found ", out.shape_str());
  RT_CHECK(!views_overlap(out, a) && (!has_b || !views_overlap(out, b)), op, ": output overlaps an input");
  if (rows == 0 || cols == 0) return;
  const int64_t slices = std::min<int64_t>((rows + kColRowsPerSlice - 1) / kColRowsPerSlice, kColMaxSlices);
  const int64_t rows_per_slice = (rows + slices - 1) / slices;
  const int64_t bx = (cols + kColX - 1) / kColX;
  RT_CHECK(bx <= INT32_MAX, op, ": ", cols, " columns exceed the launch limit");
  Scratch partial(static_cast<size_t>(slices * cols) * sizeof(float), stream, "column sum partials");
  auto* p = static_cast<float*>(partial.get());
  if (vector_columns(a, b, has_b, cols)) {
    const RowsDesc da = rows_desc(a), db = has_b ? rows_desc(b) : RowsDesc{};
    const auto vx = static_cast<unsigned>((cols + kColX * kColVec - 1) / (kColX * kColVec));
    auto go = [&](auto ta, auto tb, auto has) {
      using TA = decltype(ta);
      using TB = decltype(tb);
      column_partial_vec_kernel<TA, TB, decltype(has)::value>
          <<<dim3(vx, static_cast<unsigned>(slices)), dim3(kColX, kColY), 0, stream>>>(
              static_cast<const TA*>(da.data), da.stride[0], static_cast<const TB*>(db.data), db.stride[0], row_scale,
              rows, cols, rows_per_slice, p);
    };
    with_float_type(a.dtype, [&](auto ta) {
      if (has_b) with_float_type(b.dtype, [&](auto tb) { go(ta, tb, std::true_type{}); });
      else go(ta, float{}, std::false_type{});
    });
  } else {
    column_partial_kernel<<<dim3(static_cast<unsigned>(bx), static_cast<unsigned>(slices)), dim3(kColX, kColY), 0,
                            stream>>>(rows_desc(a), has_b ? rows_desc(b) : RowsDesc{}, row_scale, rows, cols,
                                      rows_per_slice, p);
  }
  CUDA_CHECK_LAUNCH();
  column_partials_finish(p, slices, cols, out, stream);
}

void column_partials_finish(const float* partial, int64_t slices, int64_t cols, TensorView out, cudaStream_t stream) {
  RT_CHECK((cols + 31) / 32 <= INT32_MAX, "column sum: ", cols, " columns exceed the launch limit");
  column_finish_kernel<<<static_cast<unsigned>((cols + 31) / 32), dim3(32, kFinishY), 0, stream>>>(
      partial, slices, cols, out.data, out.dtype, out.stride[0]);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda
