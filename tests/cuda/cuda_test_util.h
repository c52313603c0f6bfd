// Helpers shared by the CUDA attention tests (test_flash_attention, test_attention_backward,
// test_cudnn_sdpa, test_cudnn_sdpa_backward): GPU skip check, owning device buffers, bf16
// rounding, the attention case description and the CPU reference forward. Random inputs, relative
// errors and timing come from tests/common/test_util.h (re-exported here). Header-only; each
// test pulls the names in with `using namespace rt::test::cuda;`.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"
#include "test_util.h"

namespace rt::test::cuda {

// From tests/common/test_util.h, so that `using namespace rt::test::cuda;` brings them along.
using ::rt::test::randn;
using ::rt::test::rel_err;
using ::rt::test::rounded;
using ::rt::test::Stopwatch;

inline bool has_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define SKIP_WITHOUT_GPU()                                           \
  do {                                                               \
    if (!::rt::test::cuda::has_gpu()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) ::rt::fail(what, ": ", cudaGetErrorString(e));
}

// Owning device buffer.
struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) { cuda_ok(cudaMalloc(&p, std::max<size_t>(n, 16)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const void* src, size_t n) { cuda_ok(cudaMemcpy(p, src, n, cudaMemcpyHostToDevice), "upload"); }
  void download(void* dst, size_t n) const { cuda_ok(cudaMemcpy(dst, p, n, cudaMemcpyDeviceToHost), "download"); }
  void poison() { cuda_ok(cudaMemset(p, 0xff, bytes), "cudaMemset"); }  // NaN in f32 and bf16
};

// Rounds x to bf16 in place; returns the bf16 bits.
inline std::vector<uint16_t> round_bf16(std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    b[i] = ::rt::f32_to_bf16(x[i]);
    x[i] = ::rt::bf16_to_f32(b[i]);
  }
  return b;
}

// n bf16 values of b, widened to f32.
inline std::vector<float> download_bf16(const DeviceBuffer& b, size_t n) {
  std::vector<uint16_t> ob(n);
  b.download(ob.data(), n * 2);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = ::rt::bf16_to_f32(ob[i]);
  return out;
}

struct Case {
  std::string name;
  int64_t Tq, Tk, Hq, Hkv, D;
  bool causal = true;
  int64_t window = 0, q_pos0 = 0, k_pos0 = 0;
  float scale = 0.f;  // 0: 1/sqrt(D)
  ::rt::AttentionSpec spec() const {
    ::rt::AttentionSpec s = ::rt::test::attention_spec(causal, window, q_pos0, k_pos0);
    s.scale = scale;
    return s;
  }
  std::string str() const {
    std::ostringstream os;
    os << name << ": Tq " << Tq << " Tk " << Tk << " Hq " << Hq << " Hkv " << Hkv << " D " << D
       << (causal ? " causal" : " non-causal") << " window " << window << " q_pos0 " << q_pos0 << " k_pos0 "
       << k_pos0 << (scale != 0.f ? " scale " + std::to_string(scale) : std::string());
    return os.str();
  }
};

// Gradients (attention backward tests): relative Frobenius error of got against want, all values finite. The error may also be within
// an absolute floor of atol per element (RMS): where every row sees at most one key (T = 1, W = 1)
// dS = P (dP - D) is 0 analytically and dq, dk are rounding noise on both sides.
inline void expect_close_floor(const std::vector<float>& got, const std::vector<float>& want, double tol,
                               double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double err = 0, norm = 0, maxabs = 0;
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++bad;
      continue;
    }
    const double d = static_cast<double>(got[i]) - want[i];
    err += d * d;
    norm += static_cast<double>(want[i]) * want[i];
    maxabs = std::max(maxabs, std::fabs(static_cast<double>(got[i])));
  }
  ASSERT_EQ(bad, 0u) << what << ": non-finite values (unwritten or NaN)";
  if (norm == 0) {
    // Analytically zero (every row sees one key): the result may only carry rounding noise of
    // D = rowsum(dO * O) against dP = dO V, within the same absolute floor.
    EXPECT_LE(std::sqrt(err), atol * std::sqrt(static_cast<double>(want.size())))
        << what << ": reference is all zeros, result has RMS " << std::sqrt(err / want.size()) << " (max " << maxabs
        << ")";
  } else {
    const double floor = atol * std::sqrt(static_cast<double>(want.size()));
    EXPECT_LT(std::sqrt(err), tol * std::sqrt(norm) + floor)
        << what << ": relative Frobenius error " << std::sqrt(err / norm) << " (reference norm " << std::sqrt(norm)
        << ", absolute floor " << floor << ")";
  }
}

inline ::rt::TensorView cpu_view(std::vector<float>& x, std::initializer_list<int64_t> shape) {
  return ::rt::TensorView::contiguous(x.data(), ::rt::DType::F32, ::rt::Device::CPU, shape);
}

// CPU reference forward of case c on f32 q [Tq, Hq, D], k, v [Tk, Hkv, D] into out [Tq, Hq, D].
inline void reference_forward(const Case& c, std::vector<float>& q, std::vector<float>& k, std::vector<float>& v,
                              std::vector<float>& out) {
  ::rt::cpu::attention_forward(cpu_view(q, {c.Tq, c.Hq, c.D}), cpu_view(k, {c.Tk, c.Hkv, c.D}),
                               cpu_view(v, {c.Tk, c.Hkv, c.D}), cpu_view(out, {c.Tq, c.Hq, c.D}), c.spec());
}

// Reference log-sum-exp [Hq, Tq] in double (+inf for rows that see nothing).
inline std::vector<double> reference_lse(const Case& c, const std::vector<float>& q, const std::vector<float>& k) {
  const double scale = c.scale != 0.f ? static_cast<double>(c.scale) : 1.0 / std::sqrt(static_cast<double>(c.D));
  const int64_t g = c.Hq / c.Hkv;
  std::vector<double> lse(static_cast<size_t>(c.Hq * c.Tq));
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t i = 0; i < c.Tq; ++i) {
      const int64_t qp = c.q_pos0 + i;
      std::vector<double> s;
      for (int64_t j = 0; j < c.Tk; ++j) {
        const int64_t kp = c.k_pos0 + j;
        if (c.causal && kp > qp) continue;
        if (c.window > 0 && kp <= qp - c.window) continue;
        double d = 0;
        for (int64_t e = 0; e < c.D; ++e)
          d += static_cast<double>(q[(i * c.Hq + h) * c.D + e]) * k[(j * c.Hkv + h / g) * c.D + e];
        s.push_back(d * scale);
      }
      double m = -std::numeric_limits<double>::infinity(), sum = 0;
      for (double x : s) m = std::max(m, x);
      for (double x : s) sum += std::exp(x - m);
      lse[static_cast<size_t>(h * c.Tq + i)] = s.empty() ? std::numeric_limits<double>::infinity() : m + std::log(sum);
    }
  return lse;
}

}  // namespace rt::test::cuda
