// copy (dtype conversion, strided views, host <-> device), fill, add, swiglu, bias add.
// All are memory-bound; they run as rows x cols grids over a RowsDesc so strided views need no
// extra pass, and contiguous same-dtype copies go straight to cudaMemcpyAsync.
#include <cmath>
#include <cstring>
#include <vector>

#include "cuda/elementwise_flat.cuh"
#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "cuda/memory.h"
#include "rt/sdk/half.h"

namespace rt::cuda {
namespace {

// ---- device kernels ------------------------------------------------------------------------

__global__ void convert_kernel(RowsDesc s, RowsDesc d, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float v = load_f(s.data, s.row_offset(r) + c * s.col_stride, s.dtype);
    store_f(d.data, d.row_offset(r) + c * d.col_stride, d.dtype, v);
  }
}

// Same dtype, any element type (i32 and u8 included): a plain strided move.
template <typename T>
__global__ void move_kernel(RowsDesc s, RowsDesc d, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    static_cast<T*>(d.data)[d.row_offset(r) + c * d.col_stride] =
        static_cast<const T*>(s.data)[s.row_offset(r) + c * s.col_stride];
}

template <typename T>
__global__ void fill_kernel(RowsDesc d, int64_t rows, int64_t cols, T value) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) static_cast<T*>(d.data)[d.row_offset(r) + c * d.col_stride] = value;
}

__global__ void add_kernel(RowsDesc a, RowsDesc b, RowsDesc o, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float x = load_f(a.data, a.row_offset(r) + c * a.col_stride, a.dtype);
    const float y = load_f(b.data, b.row_offset(r) + c * b.col_stride, b.dtype);
    store_f(o.data, o.row_offset(r) + c * o.col_stride, o.dtype, x + y);
  }
}

__global__ void swiglu_kernel(RowsDesc g, RowsDesc u, RowsDesc o, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float x = load_f(g.data, g.row_offset(r) + c * g.col_stride, g.dtype);
    const float y = load_f(u.data, u.row_offset(r) + c * u.col_stride, u.dtype);
    // silu(x) = x / (1 + exp(-x)), fp32 as on the CPU; expf (not __expf) for a tight match.
    store_f(o.data, o.row_offset(r) + c * o.col_stride, o.dtype, x / (1.f + expf(-x)) * y);
  }
}

__global__ void bias_add_kernel(RowsDesc y, const void* bias, DType bias_dtype, int64_t bias_stride, int64_t rows,
                                int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const float b = load_f(bias, c * bias_stride, bias_dtype);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t i = y.row_offset(r) + c * y.col_stride;
    store_f(y.data, i, y.dtype, load_f(y.data, i, y.dtype) + b);
  }
}

// out = silu(g) * u:  dg = dout * u * s (1 + g (1 - s)) with s = sigmoid(g),  du = dout * silu(g).
// Each thread reads its element of g and u before writing dg / du, so they may alias g / u.
__global__ void swiglu_backward_kernel(RowsDesc g, RowsDesc u, RowsDesc dout, RowsDesc dg, RowsDesc du, int64_t rows,
                                       int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float x = load_f(g.data, g.row_offset(r) + c * g.col_stride, g.dtype);
    const float y = load_f(u.data, u.row_offset(r) + c * u.col_stride, u.dtype);
    const float d = load_f(dout.data, dout.row_offset(r) + c * dout.col_stride, dout.dtype);
    const float e = expf(-x);
    const float sig = 1.f / (1.f + e);
    const float silu = x / (1.f + e);  // as the forward computes it
    if (dg.data) store_f(dg.data, dg.row_offset(r) + c * dg.col_stride, dg.dtype, d * y * (sig * (1.f + x * (1.f - sig))));
    if (du.data) store_f(du.data, du.row_offset(r) + c * du.col_stride, du.dtype, d * silu);
  }
}

// o = fn(a, b) elementwise (b.data null: fn sees 0 for it). o may alias a or b.
template <class Fn>
__global__ void map2_kernel(RowsDesc a, RowsDesc b, RowsDesc o, int64_t rows, int64_t cols, Fn fn) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float x = load_f(a.data, a.row_offset(r) + c * a.col_stride, a.dtype);
    const float y = b.data ? load_f(b.data, b.row_offset(r) + c * b.col_stride, b.dtype) : 0.f;
    store_f(o.data, o.row_offset(r) + c * o.col_stride, o.dtype, fn(x, y));
  }
}

struct SigmoidFn {
  float scale;
  __device__ float operator()(float x, float) const { return 1.f / (1.f + expf(-(scale * x))); }
};
struct SigmoidBackwardFn {  // a = y, b = dy
  float scale;
  __device__ float operator()(float y, float dy) const { return dy * scale * y * (1.f - y); }
};
struct StepFn {
  float threshold;
  __device__ float operator()(float x, float) const { return x >= threshold ? 1.f : 0.f; }
};
struct AxpbyFn {  // no FMA contraction: the CPU computes two products and a sum
  float alpha, beta;
  __device__ float operator()(float x, float y) const { return __fadd_rn(__fmul_rn(alpha, x), __fmul_rn(beta, y)); }
};

__global__ void row_scale_kernel(RowsDesc x, const void* s, DType st, int64_t ss, RowsDesc o, int64_t rows,
                                 int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float v = load_f(x.data, x.row_offset(r) + c * x.col_stride, x.dtype);
    store_f(o.data, o.row_offset(r) + c * o.col_stride, o.dtype, load_f(s, r * ss, st) * v);
  }
}

// ---- host helpers --------------------------------------------------------------------------

int64_t rows_of(const TensorView& v) { return v.ndim == 0 ? 1 : num_rows(v); }

// Element offset of row r of a host view (row-major over all dimensions but the last).
int64_t host_row_offset(const TensorView& v, int64_t r) {
  int64_t off = 0;
  for (int i = v.ndim - 2; i >= 0; --i) {
    off += (r % v.shape[i]) * v.stride[i];
    r /= v.shape[i];
  }
  return off;
}

float host_load(const char* p, DType t) {
  uint16_t h;
  float f;
  switch (t) {
    case DType::BF16: std::memcpy(&h, p, 2); return bf16_to_f32(h);
    case DType::F16: std::memcpy(&h, p, 2); return f16_to_f32(h);
    default: std::memcpy(&f, p, 4); return f;
  }
}
void host_store(char* p, DType t, float f) {
  uint16_t h;
  switch (t) {
    case DType::BF16: h = f32_to_bf16(f); std::memcpy(p, &h, 2); break;
    case DType::F16: h = f32_to_f16(f); std::memcpy(p, &h, 2); break;
    default: std::memcpy(p, &f, 4); break;
  }
}

// Host to host, any strides, with conversion (used for packing/unpacking around transfers).
void host_copy(const TensorView& src, const TensorView& dst) {
  const int64_t rows = rows_of(src), n = row_len(src);
  const int64_t ss = src.ndim ? src.stride[src.ndim - 1] : 1, ds = dst.ndim ? dst.stride[dst.ndim - 1] : 1;
  const int64_t es = static_cast<int64_t>(dtype_size(src.dtype)), ed = static_cast<int64_t>(dtype_size(dst.dtype));
  const bool same = src.dtype == dst.dtype;
  for (int64_t r = 0; r < rows; ++r) {
    const char* s = static_cast<const char*>(src.data) + host_row_offset(src, r) * es;
    char* d = static_cast<char*>(dst.data) + host_row_offset(dst, r) * ed;
    if (same && (ss == 1 || n == 1) && (ds == 1 || n == 1)) {
      std::memmove(d, s, static_cast<size_t>(n * es));
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      if (same)
        std::memcpy(d + i * ds * ed, s + i * ss * es, static_cast<size_t>(es));
      else
        host_store(d + i * ds * ed, dst.dtype, host_load(s + i * ss * es, src.dtype));
    }
  }
}

TensorView contiguous_like(const TensorView& v, void* data, DType dtype, Device dev) {
  TensorView c = v;
  c.data = data;
  c.dtype = dtype;
  c.device = dev;
  int64_t s = 1;
  for (int j = c.ndim - 1; j >= 0; --j) {
    c.stride[j] = s;
    s *= c.shape[j];
  }
  return c;
}

// Device to device (both views on the GPU), with conversion and any strides.
void device_copy(const TensorView& src, const TensorView& dst, cudaStream_t stream) {
  const int64_t rows = rows_of(src), cols = row_len(src);
  if (src.dtype == dst.dtype && src.is_contiguous() && dst.is_contiguous()) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const RowsDesc s = rows_desc(src), d = rows_desc(dst);
  const Grid2D g = grid_2d(rows, cols);
  if (src.dtype == dst.dtype) {
    switch (dtype_size(src.dtype)) {
      case 4: move_kernel<uint32_t><<<g.grid, g.block, 0, stream>>>(s, d, rows, cols); break;
      case 2: move_kernel<uint16_t><<<g.grid, g.block, 0, stream>>>(s, d, rows, cols); break;
      default: move_kernel<uint8_t><<<g.grid, g.block, 0, stream>>>(s, d, rows, cols); break;
    }
  } else if (!flat::try_binary(src, nullptr, dst, flat::FirstFn{}, stream)) {
    convert_kernel<<<g.grid, g.block, 0, stream>>>(s, d, rows, cols);
  }
  CUDA_CHECK_LAUNCH();
}

void check_copy_args(const TensorView& src, const TensorView& dst) {
  check_view("copy", "src", src);
  check_view("copy", "dst", dst);
  check_same_shape("copy", "src", src, "dst", dst);
  RT_CHECK(src.dtype == dst.dtype || (is_float_dtype(src.dtype) && is_float_dtype(dst.dtype)),
           "copy: cannot convert ", dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
           " (conversions are between f32, bf16 and f16 only)");
}

void check_rows_arg(const char* op, const char* arg, const TensorView& v) {
  check_cuda(op, arg, v);
  check_float(op, arg, v);
}

}  // namespace

void copy_forward(TensorView src, TensorView dst, cudaStream_t stream) {
  check_copy_args(src, dst);
  if (src.numel() == 0) return;
  const bool sd = src.device == Device::CUDA, dd = dst.device == Device::CUDA;
  if (!sd && !dd) {
    host_copy(src, dst);
    return;
  }
  if (sd && dd) {
    device_copy(src, dst, stream);
    return;
  }
  const bool direct = src.dtype == dst.dtype && src.is_contiguous() && dst.is_contiguous();
  if (!sd) {  // upload: pack on the host in the source dtype, convert/scatter on the device
    if (direct) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyHostToDevice, stream));
    } else {
      std::vector<char> packed(src.nbytes());
      const TensorView hp = contiguous_like(src, packed.data(), src.dtype, Device::CPU);
      host_copy(src, hp);
      Scratch tmp(src.nbytes(), stream, "copy (upload staging)");
      const TensorView dp = tmp.view(src.dtype, src);
      CUDA_CHECK(cudaMemcpyAsync(dp.data, packed.data(), packed.size(), cudaMemcpyHostToDevice, stream));
      device_copy(dp, dst, stream);
      CUDA_CHECK(cudaStreamSynchronize(stream));  // before `packed` dies at scope end
      return;
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  // download: convert/pack on the device into the destination dtype, scatter on the host
  if (direct) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  Scratch tmp(dst.nbytes(), stream, "copy (download staging)");
  const TensorView dp = tmp.view(dst.dtype, dst);
  device_copy(src, dp, stream);
  std::vector<char> packed(dst.nbytes());
  CUDA_CHECK(cudaMemcpyAsync(packed.data(), dp.data, packed.size(), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  host_copy(contiguous_like(dst, packed.data(), dst.dtype, Device::CPU), dst);
}

void fill_forward(TensorView dst, float value, cudaStream_t stream) {
  check_cuda("fill", "dst", dst);
  RT_CHECK(is_float_dtype(dst.dtype) || dst.dtype == DType::I32, "fill: argument 'dst' must have dtype ",
           "f32, bf16, f16 or i32, found ", dtype_name(dst.dtype));
  const int64_t rows = rows_of(dst), cols = row_len(dst);
  if (rows * cols == 0) return;
  if (value == 0.f && !std::signbit(value) && dst.is_contiguous()) {  // all-zero bits in every dtype
    CUDA_CHECK(cudaMemsetAsync(dst.data, 0, dst.nbytes(), stream));
    return;
  }
  const RowsDesc d = rows_desc(dst);
  const Grid2D g = grid_2d(rows, cols);
  switch (dst.dtype) {
    case DType::I32: {
      RT_CHECK(std::isfinite(value) && value == std::nearbyint(value) && std::fabs(value) <= 2147483520.f,
               "fill: value ", value, " is not an integer representable as i32 (dst dtype i32)");
      fill_kernel<int32_t><<<g.grid, g.block, 0, stream>>>(d, rows, cols, static_cast<int32_t>(value));
      break;
    }
    case DType::F32: fill_kernel<float><<<g.grid, g.block, 0, stream>>>(d, rows, cols, value); break;
    default: {  // the 16-bit pattern, rounded once on the host exactly as half.h does
      const uint16_t h = dst.dtype == DType::BF16 ? f32_to_bf16(value) : f32_to_f16(value);
      fill_kernel<uint16_t><<<g.grid, g.block, 0, stream>>>(d, rows, cols, h);
      break;
    }
  }
  CUDA_CHECK_LAUNCH();
}

void add_forward(TensorView a, TensorView b, TensorView out, cudaStream_t stream) {
  check_rows_arg("add", "a", a);
  check_rows_arg("add", "b", b);
  check_rows_arg("add", "out", out);
  check_same_shape("add", "a", a, "b", b);
  check_same_shape("add", "a", a, "out", out);
  const int64_t rows = rows_of(a), cols = row_len(a);
  if (rows * cols == 0) return;
  if (flat::try_binary(a, &b, out, flat::AddFn{}, stream)) return;
  const Grid2D g = grid_2d(rows, cols);
  add_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(a), rows_desc(b), rows_desc(out), rows, cols);
  CUDA_CHECK_LAUNCH();
}

void swiglu_forward(TensorView gate, TensorView up, TensorView out, cudaStream_t stream) {
  check_rows_arg("swiglu", "gate", gate);
  check_rows_arg("swiglu", "up", up);
  check_rows_arg("swiglu", "out", out);
  check_same_shape("swiglu", "gate", gate, "up", up);
  check_same_shape("swiglu", "gate", gate, "out", out);
  const int64_t rows = rows_of(gate), cols = row_len(gate);
  if (rows * cols == 0) return;
  if (flat::try_binary(gate, &up, out, flat::SwigluFn{}, stream)) return;
  const Grid2D g = grid_2d(rows, cols);
  swiglu_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(gate), rows_desc(up), rows_desc(out), rows, cols);
  CUDA_CHECK_LAUNCH();
}

void bias_add_forward(TensorView y, TensorView bias, cudaStream_t stream) {
  check_rows_arg("bias_add", "y", y);
  check_rows_arg("bias_add", "bias", bias);
  RT_CHECK(bias.ndim == 1 && bias.shape[0] == row_len(y), "bias_add: argument 'bias' must have shape [",
           row_len(y), "], found ", bias.shape_str());
  const int64_t rows = rows_of(y), cols = row_len(y);
  if (rows * cols == 0) return;
  const Grid2D g = grid_2d(rows, cols);
  bias_add_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(y), bias.data, bias.dtype, bias.stride[0], rows, cols);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda

// ---- training ops ------------------------------------------------------------------------------

namespace rt::cuda {
namespace {

template <class Fn>
void launch_map2(const TensorView& a, const TensorView* b, const TensorView& o, Fn fn,
                 cudaStream_t stream) {
  const int64_t rows = rows_of(a), cols = row_len(a);
  if (rows * cols == 0) return;
  const Grid2D g = grid_2d(rows, cols);
  map2_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(a), b ? rows_desc(*b) : RowsDesc{}, rows_desc(o), rows, cols,
                                               fn);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup,
                     cudaStream_t stream) {
  const char* op = "swiglu_backward";
  check_rows_arg(op, "gate", gate);
  check_rows_arg(op, "up", up);
  check_rows_arg(op, "dout", dout);
  check_same_shape(op, "gate", gate, "up", up);
  check_same_shape(op, "gate", gate, "dout", dout);
  const bool want_dg = !is_empty_output(dgate), want_du = !is_empty_output(dup);
  if (want_dg) {
    check_rows_arg(op, "dgate", dgate);
    check_same_shape(op, "gate", gate, "dgate", dgate);
  }
  if (want_du) {
    check_rows_arg(op, "dup", dup);
    check_same_shape(op, "gate", gate, "dup", dup);
  }
  if (want_dg && want_du)
    RT_CHECK(!views_overlap(dgate, dup), op, ": outputs 'dgate' and 'dup' overlap");
  const int64_t rows = rows_of(gate), cols = row_len(gate);
  if (rows * cols == 0 || (!want_dg && !want_du)) return;
  if (flat::try_swiglu_backward(gate, up, dout, want_dg ? &dgate : nullptr, want_du ? &dup : nullptr, stream)) return;
  const Grid2D g = grid_2d(rows, cols);
  swiglu_backward_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(gate), rows_desc(up), rows_desc(dout),
                                                         want_dg ? rows_desc(dgate) : RowsDesc{},
                                                         want_du ? rows_desc(dup) : RowsDesc{}, rows, cols);
  CUDA_CHECK_LAUNCH();
}

void sigmoid_forward(TensorView x, float scale, TensorView y, cudaStream_t stream) {
  const char* op = "sigmoid";
  check_rows_arg(op, "x", x);
  check_rows_arg(op, "y", y);
  check_same_shape(op, "x", x, "y", y);
  RT_CHECK(std::isfinite(scale), op, ": scale must be finite, found ", scale);
  launch_map2(x, nullptr, y, SigmoidFn{scale}, stream);
}

void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx, cudaStream_t stream) {
  const char* op = "sigmoid_backward";
  check_rows_arg(op, "y", y);
  check_rows_arg(op, "dy", dy);
  check_rows_arg(op, "dx", dx);
  check_same_shape(op, "y", y, "dy", dy);
  check_same_shape(op, "y", y, "dx", dx);
  RT_CHECK(std::isfinite(scale), op, ": scale must be finite, found ", scale);
  launch_map2(y, &dy, dx, SigmoidBackwardFn{scale}, stream);
}

void step_forward(TensorView x, float threshold, TensorView y, cudaStream_t stream) {
  const char* op = "step";
  check_rows_arg(op, "x", x);
  check_rows_arg(op, "y", y);
  check_same_shape(op, "x", x, "y", y);
  RT_CHECK(!std::isnan(threshold), op, ": threshold must not be NaN");
  launch_map2(x, nullptr, y, StepFn{threshold}, stream);
}

void axpby_forward(float alpha, TensorView x, float beta, TensorView y, TensorView out, cudaStream_t stream) {
  const char* op = "axpby";
  check_rows_arg(op, "x", x);
  check_rows_arg(op, "y", y);
  check_rows_arg(op, "out", out);
  check_same_shape(op, "x", x, "y", y);
  check_same_shape(op, "x", x, "out", out);
  launch_map2(x, &y, out, AxpbyFn{alpha, beta}, stream);
}

void row_scale_forward(TensorView x, TensorView s, TensorView out, cudaStream_t stream) {
  const char* op = "row_scale";
  check_rows_arg(op, "x", x);
  check_rows_arg(op, "s", s);
  check_rows_arg(op, "out", out);
  RT_CHECK(x.ndim >= 2, op, ": argument 'x' must be [rows, cols] (at least 2 dimensions), found shape ",
           x.shape_str());
  check_same_shape(op, "x", x, "out", out);
  const int64_t rows = rows_of(x), cols = row_len(x);
  RT_CHECK(s.ndim == 1 && s.shape[0] == rows, op, ": argument 's' must have shape [", rows,
           "] (one scale per row of x ", x.shape_str(), "), found ", s.shape_str());
  RT_CHECK(!views_overlap(out, s), op, ": output 'out' overlaps the scales 's'");
  if (rows * cols == 0) return;
  if (flat::try_row_scale(x, s, out, rows, cols, stream)) return;
  const Grid2D g = grid_2d(rows, cols);
  row_scale_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(x), s.data, s.dtype, s.stride[0], rows_desc(out), rows,
                                                   cols);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda
