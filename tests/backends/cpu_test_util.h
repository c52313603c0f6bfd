// Helpers of the CPU training-op tests (test_cpu_backward, test_cpu_train_ops): host buffers of
// any float dtype read and written as doubles (conversions written here, not the backend's),
// random fills and central finite differences. Random values, relative errors and
// EXPECT_THROW_MSG come from tests/common/test_util.h (re-exported into cpu_test).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "rt/sdk/error.h"
#include "rt/sdk/half.h"
#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"
#include "test_util.h"

namespace cpu_test {

using rt::DType;
using rt::TensorView;
using rt::test::randn_f64;
using rt::test::rel_err;

inline const double kNaN = std::numeric_limits<double>::quiet_NaN();
inline const double kInf = std::numeric_limits<double>::infinity();

inline double load(const TensorView& v, int64_t i) {
  const char* p = static_cast<const char*>(v.data) + i * static_cast<int64_t>(rt::dtype_size(v.dtype));
  switch (v.dtype) {
    case DType::F64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::F32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::BF16: { uint16_t h; std::memcpy(&h, p, 2); return rt::bf16_to_f32(h); }
    case DType::F16: { uint16_t h; std::memcpy(&h, p, 2); return rt::f16_to_f32(h); }
    case DType::I32: { int32_t k; std::memcpy(&k, p, 4); return k; }
    default: return kNaN;
  }
}
inline void store(const TensorView& v, int64_t i, double x) {
  char* p = static_cast<char*>(v.data) + i * static_cast<int64_t>(rt::dtype_size(v.dtype));
  switch (v.dtype) {
    case DType::F64: std::memcpy(p, &x, 8); break;
    case DType::F32: { const float f = static_cast<float>(x); std::memcpy(p, &f, 4); break; }
    case DType::BF16: { const uint16_t h = rt::f32_to_bf16(static_cast<float>(x)); std::memcpy(p, &h, 2); break; }
    case DType::F16: { const uint16_t h = rt::f32_to_f16(static_cast<float>(x)); std::memcpy(p, &h, 2); break; }
    case DType::I32: { const int32_t k = static_cast<int32_t>(x); std::memcpy(p, &k, 4); break; }
    default: break;
  }
}

// A contiguous host tensor of any dtype (8 bytes of storage per element cover every dtype).
// Movable, not copyable (the view points into the storage).
struct Buf {
  std::vector<double> store_;
  TensorView v;

  Buf() = default;
  Buf(DType dt, std::initializer_list<int64_t> shape) {
    v = TensorView::contiguous(nullptr, dt, rt::Device::CPU, shape);
    store_.assign(static_cast<size_t>(std::max<int64_t>(v.numel(), 1)), 0.0);
    v.data = store_.data();
  }
  Buf(Buf&&) = default;
  Buf& operator=(Buf&&) = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;

  operator TensorView() const { return v; }
  int64_t numel() const { return v.numel(); }
  double get(int64_t i) const { return load(v, i); }
  void put(int64_t i, double x) const { store(v, i, x); }
  std::vector<double> values() const {
    std::vector<double> r(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) r[static_cast<size_t>(i)] = get(i);
    return r;
  }
  void set(const std::vector<double>& x) const {
    for (int64_t i = 0; i < numel(); ++i) put(i, x[static_cast<size_t>(i)]);
  }
  void fill(double x) const {
    for (int64_t i = 0; i < numel(); ++i) put(i, x);
  }
  // Random normal values, rounded to f32 first so that f32 and f64 buffers filled from the same
  // seed hold the same numbers.
  const Buf& randn(uint64_t seed, double sd = 1.0, double mean = 0.0) const {
    set(rt::test::randn_f64(static_cast<size_t>(numel()), seed, sd, mean));
    return *this;
  }
  const Buf& nan() const {
    fill(kNaN);
    return *this;
  }
  double* f64() const { return static_cast<double*>(v.data); }
};

inline std::vector<double> minus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of loss() with respect to the f64 buffer x, at every coordinate or at the
// given ones: (L(x + h e_i) - L(x - h e_i)) / 2h.
inline std::vector<double> finite_diff(const Buf& x, const std::function<double()>& loss,
                                       const std::vector<int64_t>& coords = {}, double h = 1e-5) {
  EXPECT_EQ(x.v.dtype, DType::F64);
  std::vector<int64_t> idx = coords;
  if (idx.empty())
    for (int64_t i = 0; i < x.numel(); ++i) idx.push_back(i);
  std::vector<double> g;
  g.reserve(idx.size());
  for (int64_t i : idx) {
    const double x0 = x.f64()[i];
    x.f64()[i] = x0 + h;
    const double lp = loss();
    x.f64()[i] = x0 - h;
    const double lm = loss();
    x.f64()[i] = x0;
    g.push_back((lp - lm) / (2 * h));
  }
  return g;
}

inline std::vector<double> pick(const std::vector<double>& v, const std::vector<int64_t>& coords) {
  if (coords.empty()) return v;
  std::vector<double> r;
  for (int64_t i : coords) r.push_back(v[static_cast<size_t>(i)]);
  return r;
}

// Relative error bound of an analytic gradient against finite differences (f64).
constexpr double kFdTol = 1e-6;
// f32 vs f64 agreement.
constexpr double kF32Tol = 1e-5;

}  // namespace cpu_test
