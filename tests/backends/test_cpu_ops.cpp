// Tests of the CPU backend (backends/cpu) and of the f16/bf16 conversions (rt/sdk/half.h).
// Every op is compared with a plain double-precision loop written here, on random inputs (fixed
// seeds) of ragged sizes, with the outputs poisoned with NaN before each call.
// Timings: tools/bench_cpu (build/bin/bench_cpu_ops).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "rt/sdk/attention_sublayer.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"
#include "test_util.h"

namespace {

using rt::DType;
using rt::Tensor;
using rt::TensorView;

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Fixture : ::testing::Test {
  std::unique_ptr<rt::Ops> ops = rt::make_cpu_ops();
  std::mt19937_64 rng{12345};

  Tensor randn(std::initializer_list<int64_t> shape, float sd = 1.f) {
    Tensor t = ops->alloc(DType::F32, shape);
    std::normal_distribution<float> nd(0.f, sd);
    for (int64_t i = 0; i < t.view.numel(); ++i) t.ptr<float>()[i] = nd(rng);
    return t;
  }
  Tensor poisoned(DType dt, std::initializer_list<int64_t> shape) {
    Tensor t = ops->alloc(dt, shape);
    poison(t.view);
    return t;
  }
  static void poison(const TensorView& v) { rt::test::poison_host(v); }
  // The (contiguous) f32 tensor converted to a 16-bit dtype, same shape.
  Tensor to16(const Tensor& t, DType dt) {
    Tensor s = ops->alloc(dt, {t.view.numel()});
    rt::convert_from_f32(t.ptr<float>(), dt, s.view.data, static_cast<size_t>(t.view.numel()));
    TensorView v = t.view;
    v.data = s.view.data;
    v.dtype = dt;
    s.view = v;
    return s;
  }
};

std::vector<double> as_double(const TensorView& v) {
  std::vector<double> r(static_cast<size_t>(v.numel()));
  std::vector<float> f(r.size());
  rt::convert_to_f32(v.data, v.dtype, f.data(), f.size());
  for (size_t i = 0; i < r.size(); ++i) r[i] = f[i];
  return r;
}

// rt::test::rel_err of the (f32/bf16/f16) view against ref.
double rel_err(const TensorView& out, const std::vector<double>& ref) { return rt::test::rel_err(as_double(out), ref); }

constexpr double kTol = 1e-5;


// ---------------------------------------------------------------------------------------------
// half.h

bool bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }
bool f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

// Independent round-to-nearest-even reference for f32 -> bf16: pick the nearer of the two
// neighbouring bf16 values in double arithmetic, ties to the even one.
uint16_t bf16_reference(float x) {
  const uint32_t u = bits(x);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);
  if ((u & 0xffff) == 0) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double vlo = std::fabs(static_cast<double>(rt::bf16_to_f32(lo)));
  const double vhi = (hi & 0x7f80) == 0x7f80 ? std::ldexp(1.0, 128) : std::fabs(static_cast<double>(rt::bf16_to_f32(hi)));
  const double ax = std::fabs(static_cast<double>(x));
  const double dlo = ax - vlo, dhi = vhi - ax;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(Half, Bf16KnownValues) {
  EXPECT_EQ(rt::f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(rt::f32_to_bf16(-1.0f), 0xbf80);
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x3f808000)), 0x3f80);  // tie, even below
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x3f818000)), 0x3f82);  // tie, odd below: up
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0xbf818000)), 0xbf82);  // same, negative
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x3f808001)), 0x3f81);  // just above the tie
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x3f807fff)), 0x3f80);  // just below the tie
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x3f80ffff)), 0x3f81);
  EXPECT_EQ(rt::f32_to_bf16(kInf), 0x7f80);
  EXPECT_EQ(rt::f32_to_bf16(-kInf), 0xff80);
  EXPECT_EQ(rt::f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past the range
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x7f7f7fff)), 0x7f7f);
  EXPECT_EQ(rt::f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(rt::f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x00008000)), 0x0000);  // subnormal tie to even
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x00018000)), 0x0002);
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0x00010000)), 0x0001);
  // NaN stays NaN: quiet, signalling (payload only in the low bits), negative.
  EXPECT_TRUE(bf16_is_nan(rt::f32_to_bf16(kNaN)));
  EXPECT_TRUE(bf16_is_nan(rt::f32_to_bf16(from_bits(0x7f800001))));
  EXPECT_TRUE(bf16_is_nan(rt::f32_to_bf16(from_bits(0x7fffffff))));
  EXPECT_EQ(rt::f32_to_bf16(from_bits(0xffc00000)), 0xffc0);
  EXPECT_EQ(rt::bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(rt::bf16_to_f32(0xc0a0), -5.0f);
  EXPECT_EQ(rt::bf16_to_f32(0x7f80), kInf);
  EXPECT_TRUE(std::isnan(rt::bf16_to_f32(0x7fc1)));
  EXPECT_EQ(bits(rt::bf16_to_f32(0x0001)), 0x00010000u);  // subnormal, exact
}

TEST(Half, Bf16AllValuesRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = rt::bf16_to_f32(static_cast<uint16_t>(h));
    const uint16_t back = rt::f32_to_bf16(f);
    if (bf16_is_nan(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(bf16_is_nan(back)) << h;
    } else {
      EXPECT_EQ(back, h) << h;
    }
  }
}

TEST(Half, Bf16RandomMatchesReference) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exact ties
    const float x = from_bits(u);
    if (std::isnan(x)) {
      ASSERT_TRUE(bf16_is_nan(rt::f32_to_bf16(x))) << std::hex << u;
      continue;
    }
    ASSERT_EQ(rt::f32_to_bf16(x), bf16_reference(x)) << std::hex << u;
  }
}

TEST(Half, F16KnownValues) {
  EXPECT_EQ(rt::f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(rt::f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(rt::f32_to_f16(65504.f), 0x7bff);           // largest finite
  EXPECT_EQ(rt::f32_to_f16(65519.f), 0x7bff);           // below the halfway point
  EXPECT_EQ(rt::f32_to_f16(65520.f), 0x7c00);           // halfway: ties to even = inf
  EXPECT_EQ(rt::f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(rt::f32_to_f16(-1e6f), 0xfc00);
  EXPECT_EQ(rt::f32_to_f16(kInf), 0x7c00);
  EXPECT_EQ(rt::f32_to_f16(-kInf), 0xfc00);
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(1.f, -14)), 0x0400);   // smallest normal
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(1.f, -24)), 0x0001);   // smallest subnormal
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(1.f, -25)), 0x0000);   // tie between 0 and 2^-24: even
  EXPECT_EQ(rt::f32_to_f16(-std::ldexp(1.f, -25)), 0x8000);
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(3.f, -25)), 0x0002);   // 1.5 * 2^-24: tie, even = 2
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(5.f, -25)), 0x0002);   // 2.5 * 2^-24: tie, even = 2
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(rt::f32_to_f16(std::ldexp(1.f, -30)), 0x0000);
  EXPECT_EQ(rt::f32_to_f16(1.0f + std::ldexp(1.f, -11)), 0x3c00);       // tie, even below
  EXPECT_EQ(rt::f32_to_f16(1.0f + 3 * std::ldexp(1.f, -11)), 0x3c02);   // tie, odd below: up
  EXPECT_EQ(rt::f32_to_f16(-0.0f), 0x8000);
  EXPECT_TRUE(f16_is_nan(rt::f32_to_f16(kNaN)));
  EXPECT_TRUE(f16_is_nan(rt::f32_to_f16(from_bits(0x7f800001))));  // payload below the kept bits
  EXPECT_EQ(rt::f32_to_f16(from_bits(0xffc00000)) & 0x8000, 0x8000);
  EXPECT_EQ(rt::f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(rt::f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(rt::f16_to_f32(0x7bff), 65504.f);
  EXPECT_EQ(rt::f16_to_f32(0x0001), std::ldexp(1.f, -24));
  EXPECT_EQ(rt::f16_to_f32(0x03ff), std::ldexp(1023.f, -24));
  EXPECT_EQ(rt::f16_to_f32(0x8001), -std::ldexp(1.f, -24));
  EXPECT_EQ(rt::f16_to_f32(0x7c00), kInf);
  EXPECT_EQ(rt::f16_to_f32(0xfc00), -kInf);
  EXPECT_TRUE(std::isnan(rt::f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(rt::f16_to_f32(0x7c01)));
  EXPECT_TRUE(std::signbit(rt::f16_to_f32(0x8000)));
}

TEST(Half, F16AllValuesRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = rt::f16_to_f32(static_cast<uint16_t>(h));
    const uint16_t back = rt::f32_to_f16(f);
    if (f16_is_nan(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(f16_is_nan(back)) << h;
    } else {
      EXPECT_EQ(back, h) << h;
    }
  }
}

#if defined(__FLT16_MANT_DIG__)
// The compiler's own _Float16 conversions (libgcc, round to nearest even) as the reference.
uint16_t f16_native(float x) {
  _Float16 h = static_cast<_Float16>(x);
  uint16_t r;
  std::memcpy(&r, &h, 2);
  return r;
}

TEST(Half, F16MatchesCompilerFloat16) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 n;
    const uint16_t hh = static_cast<uint16_t>(h);
    std::memcpy(&n, &hh, 2);
    const float ref = static_cast<float>(n);
    if (std::isnan(ref))
      ASSERT_TRUE(std::isnan(rt::f16_to_f32(hh)));
    else
      ASSERT_EQ(bits(rt::f16_to_f32(hh)), bits(ref)) << h;
    // Every midpoint between h and the next value up (exact in f32): a tie.
    if ((h & 0x7fff) < 0x7bff) {
      const double a = rt::f16_to_f32(hh), b = rt::f16_to_f32(static_cast<uint16_t>(h + 1));
      const float mid = static_cast<float>((a + b) / 2);
      ASSERT_EQ(rt::f32_to_f16(mid), f16_native(mid)) << h;
      ASSERT_EQ(rt::f32_to_f16(mid) & 1, 0) << h;
      ASSERT_EQ(rt::f32_to_f16(std::nextafter(mid, 0.f)), f16_native(std::nextafter(mid, 0.f))) << h;
      ASSERT_EQ(rt::f32_to_f16(std::nextafter(mid, kInf * (mid < 0 ? -1 : 1))),
                f16_native(std::nextafter(mid, kInf * (mid < 0 ? -1 : 1)))) << h;
    }
  }
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> exp_in_range(95, 145);  // around the f16 range
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    if (i % 2) u = (u & 0x807fffffu) | (exp_in_range(rng) << 23);
    const float x = from_bits(u);
    if (std::isnan(x)) {
      ASSERT_TRUE(f16_is_nan(rt::f32_to_f16(x)));
      continue;
    }
    ASSERT_EQ(rt::f32_to_f16(x), f16_native(x)) << std::hex << u;
  }
}
#endif

TEST(Half, BulkConversions) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 100.f);
  std::vector<float> src(1001), back(1001);
  for (float& f : src) f = nd(rng);
  for (DType dt : {DType::BF16, DType::F16}) {
    std::vector<uint16_t> h(2 * src.size());  // (room for f32, which the compiler cannot rule out)
    rt::convert_from_f32(src.data(), dt, h.data(), src.size());
    rt::convert_to_f32(h.data(), dt, back.data(), src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      const uint16_t want = dt == DType::BF16 ? rt::f32_to_bf16(src[i]) : rt::f32_to_f16(src[i]);
      ASSERT_EQ(h[i], want);
      ASSERT_EQ(back[i], dt == DType::BF16 ? rt::bf16_to_f32(want) : rt::f16_to_f32(want));
      ASSERT_NEAR(back[i], src[i], std::fabs(src[i]) * (dt == DType::BF16 ? 4e-3 : 5e-4) + 1e-3);
    }
  }
  rt::convert_to_f32(src.data(), DType::F32, back.data(), src.size());
  EXPECT_EQ(back, src);
  int32_t ints[2] = {1, 2};
  EXPECT_THROW_MSG(rt::convert_to_f32(ints, DType::I32, back.data(), 2), "convert_to_f32", "i32");
  EXPECT_THROW_MSG(rt::convert_from_f32(src.data(), DType::U8, ints, 2), "convert_from_f32", "u8");
}

// ---------------------------------------------------------------------------------------------
// CpuOps

using CpuOps = Fixture;

TEST_F(CpuOps, AllocIsAlignedAndOwned) {
  for (DType dt : {DType::F32, DType::BF16, DType::I32, DType::U8}) {
    Tensor t = ops->alloc(dt, {3, 5, 7});
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.view.data) % 64, 0u);
    EXPECT_TRUE(t.storage);
    EXPECT_EQ(t.view.dtype, dt);
    EXPECT_EQ(t.view.device, rt::Device::CPU);
    EXPECT_EQ(t.view.ndim, 3);
    EXPECT_EQ(t.view.numel(), 105);
    EXPECT_TRUE(t.view.is_contiguous());
    std::memset(t.view.data, 1, t.view.nbytes());  // writable over its whole size
  }
  Tensor empty = ops->alloc(DType::F32, {0, 4});
  EXPECT_TRUE(empty.defined());
  EXPECT_EQ(ops->device(), rt::Device::CPU);
  EXPECT_THROW_MSG(ops->alloc(DType::F32, {2, -1}), "alloc", "-1");
  EXPECT_THROW_MSG(ops->alloc(DType::F32, {1, 2, 3, 4, 5}), "alloc", "dimensions");
}

TEST_F(CpuOps, CopyConvertsAllFloatDtypes) {
  Tensor a = randn({7, 3, 33}, 10.f);
  std::vector<double> ref = as_double(a.view);
  for (DType mid : {DType::F32, DType::BF16, DType::F16}) {
    Tensor m = poisoned(mid, {7, 3, 33});
    ops->copy(a, m);
    Tensor back = poisoned(DType::F32, {7, 3, 33});
    ops->copy(m, back);
    for (int64_t i = 0; i < a.view.numel(); ++i) {
      const float x = a.ptr<float>()[i];
      const float want = mid == DType::F32 ? x : mid == DType::BF16 ? rt::bf16_to_f32(rt::f32_to_bf16(x))
                                                                     : rt::f16_to_f32(rt::f32_to_f16(x));
      ASSERT_EQ(back.ptr<float>()[i], want) << dtype_name(mid) << " " << i;
    }
  }
  // bf16 -> f16 directly (through f32).
  Tensor b = to16(a, DType::BF16);
  Tensor h = poisoned(DType::F16, {7, 3, 33});
  ops->copy(b, h);
  for (int64_t i = 0; i < a.view.numel(); ++i)
    ASSERT_EQ(h.ptr<uint16_t>()[i], rt::f32_to_f16(rt::bf16_to_f32(b.ptr<uint16_t>()[i])));
  // Same-dtype integer copy.
  Tensor ids = ops->alloc(DType::I32, {5});
  for (int i = 0; i < 5; ++i) ids.ptr<int32_t>()[i] = 1000 * i - 7;
  Tensor ids2 = ops->alloc(DType::I32, {5});
  ops->copy(ids, ids2);
  EXPECT_EQ(std::memcmp(ids.view.data, ids2.view.data, 20), 0);
  // Large enough to go multi-threaded.
  Tensor big = randn({300, 513});
  Tensor big16 = poisoned(DType::BF16, {300, 513});
  ops->copy(big, big16);
  for (int64_t i = 0; i < big.view.numel(); ++i)
    ASSERT_EQ(big16.ptr<uint16_t>()[i], rt::f32_to_bf16(big.ptr<float>()[i]));
}

TEST_F(CpuOps, CopyStridedViews) {
  // Rows of a contiguous tensor (how the KV cache uses it), in both directions.
  Tensor cache = randn({10, 2, 8});
  Tensor src = randn({3, 2, 8});
  std::vector<double> before = as_double(cache.view);
  ops->copy(src, cache.view.rows(4, 7));
  std::vector<double> after = as_double(cache.view);
  for (int64_t i = 0; i < 160; ++i) {
    if (i >= 64 && i < 112)
      ASSERT_EQ(after[i], src.ptr<float>()[i - 64]);
    else
      ASSERT_EQ(after[i], before[i]);
  }
  Tensor out = poisoned(DType::BF16, {3, 2, 8});
  ops->copy(cache.view.rows(4, 7), out);
  for (int64_t i = 0; i < 48; ++i) ASSERT_EQ(out.ptr<uint16_t>()[i], rt::f32_to_bf16(src.ptr<float>()[i]));

  // A truly strided source: every other column of a [6, 10] matrix, transposed-ish strides.
  Tensor m = randn({6, 10});
  TensorView cols = m.view;
  cols.shape = {6, 5, 0, 0};
  cols.stride = {10, 2, 0, 0};
  Tensor dst = poisoned(DType::F16, {6, 5});
  ops->copy(cols, dst);
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c < 5; ++c)
      ASSERT_EQ(dst.ptr<uint16_t>()[r * 5 + c], rt::f32_to_f16(m.ptr<float>()[r * 10 + 2 * c]));
  // ... and a strided destination: write into the odd columns.
  Tensor m2 = randn({6, 10});
  TensorView odd = m2.view;
  odd.data = m2.ptr<float>() + 1;
  odd.shape = {6, 5, 0, 0};
  odd.stride = {10, 2, 0, 0};
  std::vector<double> m2before = as_double(m2.view);
  ops->copy(dst, odd);
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c < 10; ++c) {
      const float got = m2.ptr<float>()[r * 10 + c];
      if (c % 2)
        ASSERT_EQ(got, rt::f16_to_f32(dst.ptr<uint16_t>()[r * 5 + c / 2]));
      else
        ASSERT_EQ(got, m2before[r * 10 + c]);
    }

  EXPECT_THROW_MSG(ops->copy(src, ops->alloc(DType::F32, {3, 2, 7})), "copy", "[3, 2, 8]", "[3, 2, 7]");
  EXPECT_THROW_MSG(ops->copy(ops->alloc(DType::I32, {4}), ops->alloc(DType::F32, {4})), "copy", "i32", "f32");
}

TEST_F(CpuOps, Fill) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    Tensor t = poisoned(dt, {129, 67});
    ops->fill(t, -1.375f);
    std::vector<double> v = as_double(t.view);
    for (double x : v) ASSERT_EQ(x, -1.375);
  }
  Tensor m = randn({4, 6});
  TensorView col = m.view;
  col.shape = {4, 1, 0, 0};  // column 2 only
  col.data = m.ptr<float>() + 2;
  std::vector<double> before = as_double(m.view);
  ops->fill(col, 3.5f);
  for (int i = 0; i < 24; ++i) ASSERT_EQ(m.ptr<float>()[i], i % 6 == 2 ? 3.5 : before[i]);
  Tensor ids = ops->alloc(DType::I32, {3});
  ops->fill(ids, 42.f);
  EXPECT_EQ(ids.ptr<int32_t>()[2], 42);
  EXPECT_THROW_MSG(ops->fill(ids, 0.5f), "fill", "0.5");
}

TEST_F(CpuOps, Embedding) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    Tensor table32 = randn({1000, 72});
    Tensor table = dt == DType::F32 ? table32 : to16(table32, dt);
    std::vector<double> tab = as_double(table.view);
    for (int64_t T : {1, 7, 129, 700}) {
      Tensor ids = ops->alloc(DType::I32, {T});
      std::uniform_int_distribution<int32_t> ud(0, 999);
      for (int64_t t = 0; t < T; ++t) ids.ptr<int32_t>()[t] = ud(rng);
      ids.ptr<int32_t>()[0] = 999;
      Tensor out = poisoned(DType::F32, {T, 72});
      ops->embedding(table, ids, out);
      std::vector<double> ref(static_cast<size_t>(T * 72));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < 72; ++c) ref[t * 72 + c] = tab[ids.ptr<int32_t>()[t] * 72 + c];
      EXPECT_EQ(rel_err(out, ref), 0.0) << dtype_name(dt) << " T=" << T;
    }
  }
  Tensor table = randn({100, 8});
  Tensor ids = ops->alloc(DType::I32, {3});
  ids.ptr<int32_t>()[0] = 5;
  ids.ptr<int32_t>()[1] = 1000;
  ids.ptr<int32_t>()[2] = 7;
  Tensor out = poisoned(DType::F32, {3, 8});
  EXPECT_THROW_MSG(ops->embedding(table, ids, out), "embedding", "1000", "100");
  ids.ptr<int32_t>()[1] = -3;
  EXPECT_THROW_MSG(ops->embedding(table, ids, out), "embedding", "-3", "100");
  ids.ptr<int32_t>()[1] = 3;
  EXPECT_THROW_MSG(ops->embedding(table, ids, ops->alloc(DType::F32, {3, 9})), "embedding", "'out'", "8");
  EXPECT_THROW_MSG(ops->embedding(table, table, out), "embedding", "'ids'", "i32", "f32");
}

std::vector<double> linear_ref(const TensorView& x, const TensorView& w, const TensorView* b) {
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  std::vector<double> X = as_double(x), W = as_double(w), B = b ? as_double(*b) : std::vector<double>();
  std::vector<double> y(static_cast<size_t>(N * out));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? B[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += X[n * in + i] * W[o * in + i];
      y[n * out + o] = s;
    }
  return y;
}

TEST_F(CpuOps, Linear) {
  struct Case { int64_t N, in, out; };
  for (Case c : {Case{1, 8, 1}, Case{1, 64, 17}, Case{7, 64, 300}, Case{129, 37, 64}, Case{128, 128, 96},
                 Case{3, 896, 4099}, Case{300, 200, 24}, Case{2, 5, 3}}) {
    Tensor x = randn({c.N, c.in});
    Tensor w = randn({c.out, c.in}, 0.2f);
    Tensor b = randn({c.out});
    for (DType wt : {DType::F32, DType::BF16, DType::F16}) {
      Tensor wv = wt == DType::F32 ? w : to16(w, wt);
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " in=" << c.in << " out=" << c.out
                                        << " w=" << dtype_name(wt) << " bias=" << with_bias);
        Tensor y = poisoned(DType::F32, {c.N, c.out});
        ops->linear(x, wv, with_bias ? b.view : TensorView{}, y);
        EXPECT_LT(rel_err(y, linear_ref(x, wv, with_bias ? &b.view : nullptr)), kTol);
      }
    }
  }
  // Row-strided x and y (rows of wider buffers) and a bf16 bias.
  Tensor xb = randn({5, 40});
  TensorView x = xb.view;
  x.shape = {5, 32, 0, 0};
  Tensor w = randn({24, 32});
  Tensor b = to16(randn({24}), DType::BF16);
  Tensor yb = poisoned(DType::F32, {5, 30});
  TensorView y = yb.view;
  y.shape = {5, 24, 0, 0};
  ops->linear(x, w, b, y);
  Tensor xc = ops->alloc(DType::F32, {5, 32}), yc = poisoned(DType::F32, {5, 24});
  ops->copy(x, xc);
  ops->copy(y, yc);
  EXPECT_LT(rel_err(yc, linear_ref(xc, w, &b.view)), kTol);
  for (int r = 0; r < 5; ++r)
    for (int col = 24; col < 30; ++col) ASSERT_TRUE(std::isnan(yb.ptr<float>()[r * 30 + col]));

  EXPECT_THROW_MSG(ops->linear(randn({3, 5}), randn({4, 6}), TensorView{}, poisoned(DType::F32, {3, 4})),
                   "linear", "'w'", "5", "[4, 6]");
  EXPECT_THROW_MSG(ops->linear(randn({3, 5}), randn({4, 5}), TensorView{}, poisoned(DType::F32, {3, 5})),
                   "linear", "'y'", "4", "[3, 5]");
  EXPECT_THROW_MSG(ops->linear(randn({3, 5}), randn({4, 5}), randn({5}), poisoned(DType::F32, {3, 4})),
                   "linear", "'bias'", "[4]", "[5]");
  Tensor xx = randn({4, 4});
  EXPECT_THROW_MSG(ops->linear(xx, randn({4, 4}), TensorView{}, xx), "linear", "overlaps");
}

TEST_F(CpuOps, RmsNorm) {
  for (int64_t rows : {1, 7, 129}) {
    for (int64_t d : {8, 64, 896, 13}) {
      for (DType wt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(testing::Message() << "rows=" << rows << " d=" << d << " w=" << dtype_name(wt));
        Tensor x = randn({rows, d}, 3.f);
        Tensor w32 = randn({d});
        Tensor w = wt == DType::F32 ? w32 : to16(w32, wt);
        const float eps = 1e-6f;
        std::vector<double> X = as_double(x.view), W = as_double(w.view), ref(X.size());
        for (int64_t r = 0; r < rows; ++r) {
          double ss = 0;
          for (int64_t i = 0; i < d; ++i) ss += X[r * d + i] * X[r * d + i];
          const double inv = 1.0 / std::sqrt(ss / d + eps);
          for (int64_t i = 0; i < d; ++i) ref[r * d + i] = W[i] * X[r * d + i] * inv;
        }
        Tensor y = poisoned(DType::F32, {rows, d});
        ops->rmsnorm(x, w, eps, y);
        EXPECT_LT(rel_err(y, ref), kTol);
        ops->rmsnorm(x, w, eps, x);  // in place
        EXPECT_LT(rel_err(x, ref), kTol);
      }
    }
  }
  // 3-d input: rows over the leading dims.
  Tensor x = randn({3, 4, 16});
  Tensor w = randn({16});
  Tensor y = poisoned(DType::F32, {3, 4, 16});
  ops->rmsnorm(x, w, 1e-5f, y);
  Tensor y2 = poisoned(DType::F32, {12, 16});
  ops->rmsnorm(x.view.reshaped({12, 16}), w, 1e-5f, y2);
  EXPECT_EQ(rel_err(y, as_double(y2.view)), 0.0);
  EXPECT_THROW_MSG(ops->rmsnorm(x, randn({15}), 1e-5f, y), "rmsnorm", "'w'", "[16]", "[15]");
  EXPECT_THROW_MSG(ops->rmsnorm(x, w, 1e-5f, poisoned(DType::F32, {3, 4, 15})), "rmsnorm", "'y'");
  // rmsnorm_keep_input (the SDK's default: the copy, then the norm): the copy must have x's shape,
  // not only its element count.
  Tensor y3 = poisoned(DType::F32, {3, 4, 16}), x_copy = poisoned(DType::F32, {3, 4, 16});
  ops->rmsnorm_keep_input(x, w, 1e-5f, y3, x_copy);
  EXPECT_EQ(rel_err(y3, as_double(y.view)), 0.0);
  EXPECT_EQ(rel_err(x_copy, as_double(x.view)), 0.0);
  EXPECT_THROW_MSG(ops->rmsnorm_keep_input(x, w, 1e-5f, y3, poisoned(DType::F32, {12, 16})), "rmsnorm_keep_input",
                   "'x_copy'", "[3, 4, 16]", "[12, 16]");
  EXPECT_THROW_MSG(ops->rmsnorm_keep_input(x, w, 1e-5f, y3, poisoned(DType::F64, {3, 4, 16})), "rmsnorm_keep_input",
                   "'x_copy'", "f64");
}

// The HF recipe in fp32 (see rope.cpp), then the rotation in double.
std::vector<double> rope_ref(const TensorView& x, int64_t pos0, double theta) {
  const int64_t T = x.shape[0], H = x.shape[1], D = x.shape[2], half = D / 2;
  std::vector<double> X = as_double(x), out(X.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float inv = 1.0f / static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)),
                                                           static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(D))));
      const float angle = static_cast<float>(pos0 + t) * inv;
      const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = (t * H + h) * D;
        const double x1 = X[base + i], x2 = X[base + half + i];
        out[base + i] = x1 * c - x2 * s;
        out[base + half + i] = x2 * c + x1 * s;
      }
    }
  return out;
}

TEST_F(CpuOps, Rope) {
  for (int64_t T : {1, 7, 129}) {
    for (int64_t D : {8, 64, 128}) {
      for (int64_t pos0 : {0, 1000, 32000}) {
        for (double theta : {10000.0, 1000000.0}) {
          SCOPED_TRACE(testing::Message() << "T=" << T << " D=" << D << " pos0=" << pos0 << " theta=" << theta);
          Tensor x = randn({T, 3, D});
          std::vector<double> ref = rope_ref(x, pos0, theta);
          ops->rope(x, pos0, theta);
          EXPECT_LT(rel_err(x, ref), kTol);
        }
      }
    }
  }
  Tensor x = randn({2, 3, 8});
  std::vector<double> orig = as_double(x.view);
  ops->rope(x.view.rows(0, 1), 0, 10000.0);  // position 0 is the identity
  EXPECT_EQ(rel_err(x, orig), 0.0);
  EXPECT_THROW_MSG(ops->rope(randn({2, 3, 7}), 0, 10000.0), "rope", "even");
  EXPECT_THROW_MSG(ops->rope(randn({2, 7}), 0, 10000.0), "rope", "3 dimensions");
}


// Reference values from Hugging Face transformers' Qwen2RotaryEmbedding (fp32), generated with
// transformers 5.x / torch 2.x: cos and sin of each pair's angle at far positions, where an
// angle computed in double instead of HF's fp32 would be off by up to ~1e-3.
// Qwen2RotaryEmbedding (transformers), D=64, theta=1000000.0: positions, then per position D/2 cos and D/2 sin.
const int64_t kHfRopeD64Pos[] = {1, 17, 4095, 32000, 32767};
const float kHfRopeD64[][2][32] = {
    {{0x1.14a2820000000p-1f, 0x1.97c9540000000p-1f, 0x1.d3258c0000000p-1f, 0x1.ecec200000000p-1f, 0x1.f7ed060000000p-1f, 0x1.fc97080000000p-1f, 0x1.fe8fa20000000p-1f, 0x1.ff649e0000000p-1f, 0x1.ffbe780000000p-1f, 0x1.ffe45e0000000p-1f, 0x1.fff4580000000p-1f, 0x1.fffb160000000p-1f, 0x1.fffdee0000000p-1f, 0x1.ffff200000000p-1f, 0x1.ffffa20000000p-1f, 0x1.ffffd80000000p-1f, 0x1.fffff00000000p-1f, 0x1.fffffa0000000p-1f, 0x1.fffffe0000000p-1f, 0x1.fffffe0000000p-1f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f},
     {0x1.aed5480000000p-1f, 0x1.359a740000000p-1f, 0x1.a321e20000000p-2f, 0x1.14ec300000000p-2f, 0x1.6a46740000000p-3f, 0x1.d7f2ba0000000p-4f, 0x1.32de6c0000000p-4f, 0x1.8ec4220000000p-5f, 0x1.0302b80000000p-5f, 0x1.506d080000000p-6f, 0x1.b4f4940000000p-7f, 0x1.1bc1720000000p-7f, 0x1.7088b80000000p-8f, 0x1.dea3d60000000p-9f, 0x1.36d2060000000p-9f, 0x1.93aeae0000000p-10f, 0x1.0624dc0000000p-10f, 0x1.5476860000000p-11f, 0x1.ba2e4a0000000p-12f, 0x1.1f24e40000000p-12f, 0x1.74eea60000000p-13f, 0x1.e459c40000000p-14f, 0x1.3a87480000000p-14f, 0x1.987f7c0000000p-15f, 0x1.0945640000000p-15f, 0x1.58863a0000000p-16f, 0x1.bf749e0000000p-17f, 0x1.2291c60000000p-17f, 0x1.7961820000000p-18f, 0x1.ea20e00000000p-19f, 0x1.3e47c80000000p-19f, 0x1.9d5ef20000000p-20f}},
    {{-0x1.19c46c0000000p-2f, 0x1.679fcc0000000p-5f, 0x1.43fc000000000p-1f, -0x1.d34f000000000p-5f, -0x1.fc68860000000p-1f, -0x1.8785840000000p-2f, 0x1.2aac880000000p-2f, 0x1.5a59900000000p-1f, 0x1.b7c7dc0000000p-1f, 0x1.e11de40000000p-1f, 0x1.f2e65c0000000p-1f, 0x1.fa76460000000p-1f, 0x1.fda9860000000p-1f, 0x1.ff03840000000p-1f, 0x1.ff95820000000p-1f, 0x1.ffd3160000000p-1f, 0x1.ffed100000000p-1f, 0x1.fff8040000000p-1f, 0x1.fffca20000000p-1f, 0x1.fffe940000000p-1f, 0x1.ffff660000000p-1f, 0x1.ffffc00000000p-1f, 0x1.ffffe40000000p-1f, 0x1.fffff40000000p-1f, 0x1.fffffc0000000p-1f, 0x1.fffffe0000000p-1f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f, 0x1.0000000000000p+0f},
     {-0x1.ec3c4a0000000p-1f, -0x1.ff81a40000000p-1f, 0x1.8c74fa0000000p-1f, -0x1.ff2a900000000p-1f, 0x1.e4502c0000000p-4f, 0x1.d919160000000p-1f, 0x1.e9bcb60000000p-1f, 0x1.7913460000000p-1f, 0x1.062d640000000p-1f, 0x1.5e42c40000000p-2f, 0x1.cc4ff40000000p-3f, 0x1.2c68060000000p-3f, 0x1.86f92e0000000p-4f, 0x1.fc3ac20000000p-5f, 0x1.4a28560000000p-5f, 0x1.acdd1a0000000p-6f, 0x1.1683bc0000000p-6f, 0x1.69bc0e0000000p-7f, 0x1.d5d0260000000p-8f, 0x1.3116ea0000000p-8f, 0x1.8c3d680000000p-9f, 0x1.014fa60000000p-9f, 0x1.4e2fb60000000p-10f, 0x1.b207700000000p-11f, 0x1.19d9ba0000000p-11f, 0x1.6e0e9e0000000p-12f, 0x1.db6be80000000p-13f, 0x1.34bae20000000p-13f, 0x1.90f79a0000000p-14f, 0x1.0461780000000p-14f, 0x1.522c440000000p-15f, 0x1.b734e20000000p-16f}},
    {{-0x1.0e3cd80000000p-4f, 0x1.1e9c800000000p-3f, 0x1.081e160000000p-1f, -0x1.f8fdf60000000p-1f, 0x1.9969820000000p-1f, -0x1.2cf86c0000000p-4f, 0x1.66c2720000000p-1f, -0x1.3edc220000000p-4f, -0x1.8ae1e80000000p-1f, -0x1.7d22cc0000000p-1f, -0x1.7274320000000p-2f, -0x1.3cc5320000000p-1f, -0x1.04a0aa0000000p-1f, -0x1.75326c0000000p-1f, -0x1.eb33f40000000p-1f, 0x1.ffdde40000000p-1f, -0x1.28669e0000000p-1f, -0x1.c594220000000p-1f, -0x1.3e4bee0000000p-3f, 0x1.bcdd240000000p-2f, 0x1.7e24340000000p-1f, 0x1.c7d0020000000p-1f, 0x1.e80c6c0000000p-1f, 0x1.f5da8c0000000p-1f, 0x1.fbb6900000000p-1f, 0x1.fe30d60000000p-1f, 0x1.ff3c9e0000000p-1f, 0x1.ffad980000000p-1f, 0x1.ffdd400000000p-1f, 0x1.fff1580000000p-1f, 0x1.fff9d20000000p-1f, 0x1.fffd640000000p-1f},
     {-0x1.fee26c0000000p-1f, 0x1.faf61e0000000p-1f, -0x1.b69e440000000p-1f, 0x1.51afec0000000p-3f, -0x1.3373460000000p-1f, 0x1.fe9dae0000000p-1f, -0x1.6d49d20000000p-1f, -0x1.fe723e0000000p-1f, -0x1.45e6d00000000p-1f, 0x1.55e0560000000p-1f, -0x1.dd52140000000p-1f, -0x1.923e940000000p-1f, -0x1.b8b36c0000000p-1f, 0x1.5e867e0000000p-1f, -0x1.20e2a00000000p-2f, 0x1.75c06e0000000p-6f, -0x1.a17b2e0000000p-1f, 0x1.db047e0000000p-2f, 0x1.f9c7500000000p-1f, 0x1.cd28d20000000p-1f, 0x1.54c0840000000p-1f, 0x1.d262ca0000000p-2f, 0x1.3588680000000p-2f, 0x1.95b26a0000000p-3f, 0x1.0877380000000p-3f, 0x1.5808d00000000p-4f, 0x1.bf1fbe0000000p-5f, 0x1.2270060000000p-5f, 0x1.7941620000000p-6f, 0x1.e9fd920000000p-7f, 0x1.3e329c0000000p-7f, 0x1.9d44680000000p-8f}},
    {{0x1.ee6cdc0000000p-1f, -0x1.2e92a60000000p-3f, -0x1.a47f380000000p-2f, -0x1.028b800000000p-1f, -0x1.ebc9560000000p-2f, 0x1.688a340000000p-1f, 0x1.bd7c820000000p-1f, 0x1.fee1040000000p-1f, 0x1.e35c040000000p-1f, -0x1.b8689e0000000p-1f, 0x1.b9d3860000000p-1f, 0x1.9814dc0000000p-1f, -0x1.46d66c0000000p-1f, -0x1.a1a7d60000000p-1f, 0x1.c4c6d00000000p-1f, 0x1.19db1c0000000p-1f, 0x1.ab1f520000000p-1f, -0x1.6898440000000p-2f, 0x1.32f2000000000p-1f, -0x1.93e62c0000000p-1f, 0x1.a8ac680000000p-1f, -0x1.b37f2e0000000p-1f, -0x1.796db20000000p-1f, 0x1.9997e80000000p-7f, 0x1.0f79d40000000p-1f, 0x1.95603c0000000p-1f, 0x1.d2162a0000000p-1f, 0x1.ec77aa0000000p-1f, 0x1.f7bb8e0000000p-1f, 0x1.fc821c0000000p-1f, 0x1.fe86cc0000000p-1f, 0x1.ff60e40000000p-1f},
     {-0x1.09fd760000000p-2f, 0x1.fa61a20000000p-1f, -0x1.d2d70a0000000p-1f, -0x1.b9ed0a0000000p-1f, -0x1.c116aa0000000p-1f, 0x1.6b88040000000p-1f, -0x1.f8b8ac0000000p-2f, 0x1.0ee6d00000000p-4f, 0x1.51af240000000p-2f, -0x1.051efc0000000p-1f, -0x1.02b7180000000p-1f, 0x1.3536de0000000p-1f, -0x1.8a1bac0000000p-1f, -0x1.2827ae0000000p-1f, 0x1.de11820000000p-2f, -0x1.ab6f880000000p-1f, 0x1.1a549a0000000p-1f, 0x1.df34540000000p-1f, 0x1.99ca780000000p-1f, 0x1.3aa8640000000p-1f, -0x1.1e00340000000p-1f, -0x1.0d3bb40000000p-1f, 0x1.59f7040000000p-1f, 0x1.fff5c20000000p-1f, 0x1.b21a320000000p-1f, 0x1.38c0bc0000000p-1f, 0x1.a7d3ac0000000p-2f, 0x1.18243c0000000p-2f, 0x1.6e8cde0000000p-3f, 0x1.dd8d6c0000000p-4f, 0x1.3685c20000000p-4f, 0x1.9384e60000000p-5f}},
    {{0x1.f6eb380000000p-1f, -0x1.ebc60a0000000p-1f, 0x1.1279f80000000p-1f, 0x1.a8e9f40000000p-1f, -0x1.70ed0c0000000p-1f, 0x1.62b9b00000000p-3f, 0x1.cc692a0000000p-1f, 0x1.ebb1740000000p-1f, 0x1.b69fd00000000p-1f, 0x1.ace4840000000p-1f, -0x1.ecf46e0000000p-1f, 0x1.1188c80000000p-1f, -0x1.d823aa0000000p-2f, 0x1.ec9c340000000p-1f, -0x1.56e0f40000000p-1f, 0x1.f6772a0000000p-1f, 0x1.be604c0000000p-3f, -0x1.83535a0000000p-1f, 0x1.4191de0000000p-2f, -0x1.cca0ae0000000p-1f, 0x1.cb9e0c0000000p-1f, -0x1.99f9720000000p-1f, -0x1.8cb1340000000p-1f, -0x1.971af40000000p-6f, 0x1.04de3a0000000p-1f, 0x1.90665a0000000p-1f, 0x1.cfe5100000000p-1f, 0x1.eb86b80000000p-1f, 0x1.f7552c0000000p-1f, 0x1.fc56cc0000000p-1f, 0x1.fe74820000000p-1f, 0x1.ff592c0000000p-1f},
     {0x1.8003700000000p-3f, -0x1.1cf9ac0000000p-2f, 0x1.b0361e0000000p-1f, 0x1.1da4ba0000000p-1f, 0x1.63048e0000000p-1f, 0x1.f842f00000000p-1f, 0x1.bff4700000000p-2f, -0x1.1d87a40000000p-2f, -0x1.081b840000000p-1f, 0x1.17a2460000000p-1f, -0x1.14b1120000000p-2f, 0x1.b0ceea0000000p-1f, 0x1.c6544e0000000p-1f, 0x1.1722ca0000000p-2f, 0x1.7c3c000000000p-1f, 0x1.8964e80000000p-3f, 0x1.f3b0d00000000p-1f, 0x1.4ed8f80000000p-1f, 0x1.e619560000000p-1f, 0x1.bf0fee0000000p-2f, -0x1.c333c60000000p-2f, -0x1.32b33e0000000p-1f, 0x1.43b2400000000p-1f, 0x1.ffd7880000000p-1f, 0x1.b88efe0000000p-1f, 0x1.3f19440000000p-1f, 0x1.b156c20000000p-2f, 0x1.1ead5a0000000p-2f, 0x1.773cd00000000p-3f, 0x1.e8f1dc0000000p-4f, 0x1.3df3560000000p-4f, 0x1.9d2ed20000000p-5f}},
};
// Qwen2RotaryEmbedding (transformers), D=128, theta=10000.0: positions, then per position D/2 cos and D/2 sin.
const int64_t kHfRopeD128Pos[] = {3, 30001};
const float kHfRopeD128[][2][64] = {
    {{-0x1.fae04c0000000p-1f, -0x1.b62b820000000p-1f, -0x1.417f9c0000000p-1f, -0x1.794cc40000000p-2f, -0x1.daff560000000p-4f, 0x1.c138280000000p-4f, 0x1.3430c60000000p-2f, 0x1.d490620000000p-2f, 0x1.2a5eb00000000p-1f, 0x1.5cb9c20000000p-1f, 0x1.83cf440000000p-1f, 0x1.a1e0180000000p-1f, 0x1.b8da520000000p-1f, 0x1.ca54120000000p-1f, 0x1.d7926e0000000p-1f, 0x1.e194ec0000000p-1f, 0x1.e921de0000000p-1f, 0x1.eed1c40000000p-1f, 0x1.f319240000000p-1f, 0x1.f650960000000p-1f, 0x1.f8bb3c0000000p-1f, 0x1.fa8bca0000000p-1f, 0x1.fbe8860000000p-1f, 0x1.fcee3e0000000p-1f, 0x1.fdb29e0000000p-1f, 0x1.fe45f20000000p-1f, 0x1.feb4740000000p-1f, 0x1.ff075a0000000p-1f, 0x1.ff45860000000p-1f, 0x1.ff74280000000p-1f, 0x1.ff97200000000p-1f, 0x1.ffb15a0000000p-1f, 0x1.ffc5060000000p-1f, 0x1.ffd3c60000000p-1f, 0x1.ffded60000000p-1f, 0x1.ffe7200000000p-1f, 0x1.ffed5a0000000p-1f, 0x1.fff2040000000p-1f, 0x1.fff5820000000p-1f, 0x1.fff8220000000p-1f, 0x1.fffa1a0000000p-1f, 0x1.fffb940000000p-1f, 0x1.fffcb00000000p-1f, 0x1.fffd840000000p-1f, 0x1.fffe220000000p-1f, 0x1.fffe9a0000000p-1f, 0x1.fffef40000000p-1f, 0x1.ffff360000000p-1f, 0x1.ffff6a0000000p-1f, 0x1.ffff8e0000000p-1f, 0x1.ffffac0000000p-1f, 0x1.ffffc00000000p-1f, 0x1.ffffd00000000p-1f, 0x1.ffffdc0000000p-1f, 0x1.ffffe60000000p-1f, 0x1.ffffec0000000p-1f, 0x1.fffff20000000p-1f, 0x1.fffff40000000p-1f, 0x1.fffff80000000p-1f, 0x1.fffffa0000000p-1f, 0x1.fffffc0000000p-1f, 0x1.fffffc0000000p-1f, 0x1.fffffe0000000p-1f, 0x1.fffffe0000000p-1f},
     {0x1.2103860000000p-3f, 0x1.08dc4a0000000p-1f, 0x1.8e79bc0000000p-1f, 0x1.dbfa680000000p-1f, 0x1.fc8bae0000000p-1f, 0x1.fce9580000000p-1f, 0x1.e842c60000000p-1f, 0x1.c740f40000000p-1f, 0x1.a013840000000p-1f, 0x1.76e1160000000p-1f, 0x1.4e496e0000000p-1f, 0x1.27d8480000000p-1f, 0x1.045ed80000000p-1f, 0x1.c86ab80000000p-2f, 0x1.8ed14e0000000p-2f, 0x1.5bb20c0000000p-2f, 0x1.2e9cda0000000p-2f, 0x1.070abe0000000p-2f, 0x1.c8dbc40000000p-3f, 0x1.8c760e0000000p-3f, 0x1.57ddb00000000p-3f, 0x1.2a21360000000p-3f, 0x1.0266580000000p-3f, 0x1.bfd4340000000p-4f, 0x1.83ff820000000p-4f, 0x1.501e5e0000000p-4f, 0x1.23260e0000000p-4f, 0x1.f85aea0000000p-5f, 0x1.b4d29c0000000p-5f, 0x1.7a51560000000p-5f, 0x1.47a38c0000000p-5f, 0x1.1bbe120000000p-5f, 0x1.eb723e0000000p-6f, 0x1.a997460000000p-6f, 0x1.708e920000000p-6f, 0x1.3f29f40000000p-6f, 0x1.14638e0000000p-6f, 0x1.deb1080000000p-7f, 0x1.9e88900000000p-7f, 0x1.66f93e0000000p-7f, 0x1.36dc220000000p-7f, 0x1.0d31d00000000p-7f, 0x1.d23a260000000p-8f, 0x1.93bca40000000p-8f, 0x1.5d9f500000000p-8f, 0x1.2ec2c40000000p-8f, 0x1.062e260000000p-8f, 0x1.c613ee0000000p-9f, 0x1.8937260000000p-9f, 0x1.5482ba0000000p-9f, 0x1.26dec20000000p-9f, 0x1.feb1b60000000p-10f, 0x1.ba3e340000000p-10f, 0x1.7ef77a0000000p-10f, 0x1.4ba2b20000000p-10f, 0x1.1f2f3e0000000p-10f, 0x1.f1621c0000000p-11f, 0x1.aeb7520000000p-11f, 0x1.74fc1e0000000p-11f, 0x1.42fdd40000000p-11f, 0x1.17b2fc0000000p-11f, 0x1.e46b400000000p-12f, 0x1.a37d560000000p-12f, 0x1.6b43540000000p-12f}},
    {{0x1.69a4b80000000p-2f, 0x1.8b641e0000000p-2f, -0x1.9d5aa00000000p-1f, -0x1.e12f340000000p-2f, 0x1.ccfce00000000p-1f, 0x1.ca36f60000000p-2f, -0x1.fc15620000000p-1f, -0x1.4f7f1e0000000p-1f, 0x1.cab01e0000000p-1f, -0x1.edaaac0000000p-1f, -0x1.c19fce0000000p-3f, -0x1.fc7eae0000000p-1f, 0x1.a8ee880000000p-1f, -0x1.c21ff40000000p-3f, -0x1.ec55e60000000p-4f, -0x1.8299420000000p-1f, -0x1.fc43740000000p-1f, -0x1.fc76320000000p-1f, 0x1.dc00360000000p-1f, 0x1.d3001e0000000p-1f, -0x1.ff7c5a0000000p-1f, -0x1.fcdd900000000p-1f, -0x1.31fd480000000p-1f, -0x1.4f36120000000p-1f, 0x1.ff75420000000p-1f, 0x1.b61e040000000p-6f, 0x1.1387860000000p-3f, 0x1.e50c980000000p-1f, 0x1.af48b80000000p-1f, -0x1.f7cc760000000p-1f, -0x1.dbd4400000000p-2f, 0x1.49c80a0000000p-1f, -0x1.8d1c7a0000000p-7f, -0x1.280cde0000000p-1f, 0x1.60f2ea0000000p-2f, 0x1.ff8b020000000p-1f, 0x1.2ece540000000p-1f, -0x1.6a91360000000p-7f, 0x1.521f020000000p-1f, -0x1.d79cf80000000p-1f, 0x1.9f98c00000000p-1f, 0x1.c7922e0000000p-1f, -0x1.c489a40000000p-2f, 0x1.5bffea0000000p-2f, -0x1.ff2bc80000000p-1f, -0x1.3452780000000p-1f, -0x1.58202e0000000p-1f, -0x1.fe0f2e0000000p-1f, 0x1.3deedc0000000p-3f, 0x1.530b020000000p-1f, -0x1.bfbc400000000p-1f, 0x1.9cf1060000000p-1f, -0x1.9641d00000000p-2f, -0x1.d1e5420000000p-2f, 0x1.fe27640000000p-1f, -0x1.477a440000000p-5f, -0x1.ff01200000000p-1f, -0x1.6a36e80000000p-2f, 0x1.5917be0000000p-1f, 0x1.fc2b4e0000000p-1f, 0x1.2a95720000000p-1f, -0x1.7a28ee0000000p-4f, -0x1.4e651c0000000p-1f, -0x1.e58b660000000p-1f},
     {-0x1.df01bc0000000p-1f, -0x1.d84af40000000p-1f, -0x1.2e21400000000p-1f, -0x1.c3f35e0000000p-1f, 0x1.bd932e0000000p-2f, 0x1.c9e1340000000p-1f, -0x1.f9a7d40000000p-4f, -0x1.82c37a0000000p-1f, -0x1.c6f83a0000000p-2f, -0x1.0f91420000000p-2f, 0x1.f382360000000p-1f, -0x1.de76bc0000000p-4f, 0x1.1d9dea0000000p-1f, 0x1.f37b000000000p-1f, -0x1.fc49b40000000p-1f, 0x1.4fafc20000000p-1f, 0x1.edf2320000000p-4f, 0x1.e0b62c0000000p-4f, 0x1.792f780000000p-2f, 0x1.a3c8980000000p-2f, -0x1.6f117a0000000p-5f, -0x1.c48ae20000000p-4f, 0x1.9a81540000000p-1f, 0x1.8302ca0000000p-1f, -0x1.78d3940000000p-5f, -0x1.ffd1220000000p-1f, 0x1.fb58640000000p-1f, 0x1.47d9620000000p-2f, -0x1.13ee660000000p-1f, -0x1.6d185a0000000p-3f, -0x1.c55dae0000000p-1f, 0x1.87a5ea0000000p-1f, -0x1.fff6600000000p-1f, 0x1.a1bad80000000p-1f, -0x1.e0a01a0000000p-1f, 0x1.5a0c000000000p-5f, -0x1.9cdbe60000000p-1f, 0x1.fff7fa0000000p-1f, 0x1.8078a00000000p-1f, 0x1.8e9f720000000p-2f, 0x1.2b09980000000p-1f, 0x1.d354300000000p-2f, 0x1.cb49fe0000000p-1f, -0x1.e186dc0000000p-1f, 0x1.d1f9f60000000p-5f, 0x1.98c1880000000p-1f, 0x1.7b1b300000000p-1f, -0x1.644b560000000p-4f, -0x1.f9caf80000000p-1f, 0x1.7fa8920000000p-1f, -0x1.f0b2840000000p-2f, 0x1.2eb1860000000p-1f, -0x1.d5fb500000000p-1f, 0x1.c7f0180000000p-1f, 0x1.5b85480000000p-4f, -0x1.ff973a0000000p-1f, -0x1.fe9f420000000p-5f, 0x1.dee6200000000p-1f, 0x1.7a39e20000000p-1f, -0x1.f41e8c0000000p-4f, -0x1.9fec380000000p-1f, -0x1.fdd0300000000p-1f, -0x1.83b7660000000p-1f, -0x1.44e73a0000000p-2f}},
};

template <size_t NP, size_t HALF>
void check_hf_rope(rt::Ops& ops, const int64_t (&pos)[NP], const float (&table)[NP][2][HALF], double theta) {
  const int64_t D = 2 * HALF;
  for (size_t p = 0; p < NP; ++p) {
    // x1 = 1, x2 = 0: the rotated vector is (cos, sin).
    Tensor x = ops.alloc(DType::F32, {1, 1, D});
    for (int64_t i = 0; i < D; ++i) x.ptr<float>()[i] = i < D / 2 ? 1.f : 0.f;
    ops.rope(x, pos[p], theta);
    for (size_t i = 0; i < HALF; ++i) {
      EXPECT_NEAR(x.ptr<float>()[i], table[p][0][i], 2.5e-7) << "D=" << D << " pos=" << pos[p] << " i=" << i;
      EXPECT_NEAR(x.ptr<float>()[HALF + i], table[p][1][i], 2.5e-7) << "D=" << D << " pos=" << pos[p] << " i=" << i;
    }
  }
}

TEST_F(CpuOps, RopeMatchesHuggingFaceAtFarPositions) {
  check_hf_rope(*ops, kHfRopeD64Pos, kHfRopeD64, 1000000.0);
  check_hf_rope(*ops, kHfRopeD128Pos, kHfRopeD128, 10000.0);
}

std::vector<double> attention_ref(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const rt::AttentionSpec& spec) {
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2], Tk = k.shape[0], Hkv = k.shape[1];
  const double scale = spec.scale != 0.f ? spec.scale : 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> Q = as_double(q), K = as_double(k), V = as_double(v), O(Q.size(), 0.0);
  for (int64_t i = 0; i < Tq; ++i) {
    const int64_t qp = spec.q_pos0 + i;
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      std::vector<std::pair<int64_t, double>> s;
      for (int64_t j = 0; j < Tk; ++j) {
        const int64_t kp = spec.k_pos0 + j;
        if (spec.causal && kp > qp) continue;
        if (spec.window > 0 && kp <= qp - spec.window) continue;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += Q[(i * Hq + h) * D + d] * K[(j * Hkv + hk) * D + d];
        s.emplace_back(j, dot * scale);
      }
      if (s.empty()) continue;  // no visible key: zeros
      double mx = -1e300, sum = 0;
      for (auto& e : s) mx = std::max(mx, e.second);
      for (auto& e : s) sum += (e.second = std::exp(e.second - mx));
      for (auto& e : s)
        for (int64_t d = 0; d < D; ++d) O[(i * Hq + h) * D + d] += e.second / sum * V[(e.first * Hkv + hk) * D + d];
    }
  }
  return O;
}

struct AttnCase {
  int64_t Tq, Tk, Hq, Hkv, D;
  bool causal;
  int64_t window, q_pos0, k_pos0;
  float scale = 0.f;
  float sd = 1.f;
};

void run_attention_case(CpuOps& f, const AttnCase& c) {
  SCOPED_TRACE(testing::Message() << "Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv
                                  << " D=" << c.D << " causal=" << c.causal << " W=" << c.window
                                  << " q_pos0=" << c.q_pos0 << " k_pos0=" << c.k_pos0);
  Tensor q = f.randn({c.Tq, c.Hq, c.D}, c.sd), k = f.randn({c.Tk, c.Hkv, c.D}, c.sd), v = f.randn({c.Tk, c.Hkv, c.D});
  rt::AttentionSpec spec;
  spec.causal = c.causal;
  spec.window = c.window;
  spec.q_pos0 = c.q_pos0;
  spec.k_pos0 = c.k_pos0;
  spec.scale = c.scale;
  Tensor o = f.poisoned(DType::F32, {c.Tq, c.Hq, c.D});
  f.ops->attention(q, k, v, o, spec);
  EXPECT_LT(rel_err(o, attention_ref(q, k, v, spec)), kTol);
}

TEST_F(CpuOps, AttentionCausalGrid) {
  for (int64_t T : {1, 7, 127, 128, 129})
    for (int64_t D : {64, 128, 8})
      for (int64_t ratio : {1, 6, 7})
        run_attention_case(*this, {T, T, 2 * ratio, 2, D, true, 0, 0, 0});
}

TEST_F(CpuOps, AttentionSlidingWindow) {
  for (int64_t D : {64, 8}) {
    run_attention_case(*this, {100, 100, 6, 1, D, true, 128, 0, 0});  // T < W: plain causal
    run_attention_case(*this, {64, 64, 7, 7, D, true, 64, 0, 0});     // T = W
    run_attention_case(*this, {129, 129, 14, 2, D, true, 16, 0, 0});  // T > W
    run_attention_case(*this, {300, 300, 4, 2, D, true, 1, 0, 0});    // only itself
    run_attention_case(*this, {600, 600, 6, 1, D, true, 300, 0, 0});  // several key tiles per row
  }
}

TEST_F(CpuOps, AttentionOffsetsAndDecode) {
  run_attention_case(*this, {1, 101, 14, 2, 64, true, 0, 100, 0});      // decode at position 100
  run_attention_case(*this, {1, 101, 14, 2, 64, true, 32, 100, 0});     // decode with a window
  run_attention_case(*this, {5, 68, 12, 2, 64, true, 64, 100, 37});     // ring-buffer style window
  run_attention_case(*this, {3, 40, 7, 1, 8, true, 0, 37, 0});          // chunked prefill
  run_attention_case(*this, {1, 5000, 14, 2, 64, true, 0, 4999, 0});    // long decode, many tiles
  run_attention_case(*this, {1, 5000, 14, 2, 64, true, 1000, 4999, 0});
  run_attention_case(*this, {700, 700, 2, 1, 128, true, 0, 0, 0, 0.f, 3.f});  // peaky softmax
  run_attention_case(*this, {9, 13, 6, 3, 16, false, 0, 0, 0});          // no mask at all
  run_attention_case(*this, {9, 13, 6, 3, 16, true, 0, 0, 0, 0.37f});   // explicit scale
}

TEST_F(CpuOps, AttentionFullyMaskedRowsAreZero) {
  // Keys start at position 5; queries at 0..7: rows 0..4 see nothing.
  AttnCase c{8, 10, 6, 2, 64, true, 0, 0, 5};
  run_attention_case(*this, c);
  Tensor q = randn({8, 6, 64}), k = randn({10, 2, 64}), v = randn({10, 2, 64});
  Tensor o = poisoned(DType::F32, {8, 6, 64});
  rt::AttentionSpec spec;
  spec.k_pos0 = 5;
  ops->attention(q, k, v, o, spec);
  for (int64_t i = 0; i < 8 * 6 * 64; ++i) {
    if (i < 5 * 6 * 64)
      ASSERT_EQ(o.ptr<float>()[i], 0.f) << i;
    else
      ASSERT_TRUE(std::isfinite(o.ptr<float>()[i])) << i;
  }
  // No keys at all.
  Tensor k0 = ops->alloc(DType::F32, {0, 2, 64}), v0 = ops->alloc(DType::F32, {0, 2, 64});
  poison(o);
  ops->attention(q, k0, v0, o, rt::AttentionSpec{});
  for (int64_t i = 0; i < o.view.numel(); ++i) ASSERT_EQ(o.ptr<float>()[i], 0.f);
}

// Decode at a device-held position, gated by a routing decision: gate 0 is zeros (no key read:
// the cache is NaN), anything else the ungated decode, NaN gate included.
TEST_F(CpuOps, GatedDecodeAttention) {
  Tensor q = randn({1, 6, 16}), k = randn({50, 2, 16}), v = randn({50, 2, 16});
  Tensor k_nan = poisoned(DType::F32, {50, 2, 16}), v_nan = poisoned(DType::F32, {50, 2, 16});
  Tensor pos = ops->alloc(DType::I32, {1}), gate = ops->alloc(DType::F32, {1});
  *pos.ptr<int32_t>() = 30;
  Tensor want = poisoned(DType::F32, {1, 6, 16}), o = poisoned(DType::F32, {1, 6, 16});
  ops->decode_attention_at(q, k, v, 0, pos, rt::AttentionSpec{}, want);
  for (float g : {1.f, 0.25f, std::numeric_limits<float>::quiet_NaN()}) {
    *gate.ptr<float>() = g;
    poison(o);
    ops->decode_attention_gated_at(q, k, v, 0, pos, gate, rt::AttentionSpec{}, o);
    ASSERT_EQ(std::memcmp(o.ptr<float>(), want.ptr<float>(), 6 * 16 * sizeof(float)), 0) << "gate " << g;
  }
  *gate.ptr<float>() = 0.f;
  poison(o);
  ops->decode_attention_gated_at(q, k_nan, v_nan, 0, pos, gate, rt::AttentionSpec{}, o);
  for (int64_t i = 0; i < 6 * 16; ++i) ASSERT_EQ(o.ptr<float>()[i], 0.f) << i;
  Tensor wide = ops->alloc(DType::F32, {2});
  EXPECT_THROW(ops->decode_attention_gated_at(q, k, v, 0, pos, wide, rt::AttentionSpec{}, o), rt::Error);
}

// rmsnorm_route_at: y is rmsnorm's, d = (y . w >= z_min and pos >= first), steps += d; NaN z is 0.
TEST_F(CpuOps, RmsnormRouteAt) {
  const int64_t d = 37;
  Tensor x = randn({1, d}), g = randn({d}), w = randn({1, d});
  Tensor want_y = poisoned(DType::F32, {1, d});
  ops->rmsnorm(x, g, 1e-6f, want_y);
  double z = 0;
  for (int64_t i = 0; i < d; ++i) z += static_cast<double>(want_y.ptr<float>()[i]) * w.ptr<float>()[i];
  Tensor pos = ops->alloc(DType::I32, {1}), dec = ops->alloc(DType::F32, {1}), steps = ops->alloc(DType::F32, {1});
  Tensor y = poisoned(DType::F32, {1, d});
  *steps.ptr<float>() = 2.f;
  struct Case {
    double z_min;
    int32_t pos;
    int64_t first;
    float want;
  };
  const float zf = static_cast<float>(z);
  for (const Case& c : {Case{zf - 1e-3, 5, 0, 1.f}, Case{zf + 1e-3, 5, 0, 0.f}, Case{zf - 1e-3, 5, 6, 0.f},
                        Case{zf - 1e-3, 6, 6, 1.f}}) {
    *pos.ptr<int32_t>() = c.pos;
    poison(y);
    poison(dec);
    const float before = *steps.ptr<float>();
    ops->rmsnorm_route_at(x, g, 1e-6f, w, static_cast<float>(c.z_min), pos, c.first, y, dec, steps);
    EXPECT_EQ(std::memcmp(y.ptr<float>(), want_y.ptr<float>(), d * sizeof(float)), 0);
    EXPECT_EQ(*dec.ptr<float>(), c.want) << "z_min " << c.z_min << " pos " << c.pos << " first " << c.first;
    EXPECT_EQ(*steps.ptr<float>(), before + c.want);
  }
  ops->rmsnorm_route_at(x, g, 1e-6f, w, zf - 1e-3f, pos, 0, y, dec, TensorView{});  // no counter
  EXPECT_EQ(*dec.ptr<float>(), 1.f);
  w.ptr<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  ops->rmsnorm_route_at(x, g, 1e-6f, w, -1e30f, pos, 0, y, dec, TensorView{});
  EXPECT_EQ(*dec.ptr<float>(), 0.f) << "a NaN z decides 0, as step does";
  Tensor wide = ops->alloc(DType::F32, {2});
  EXPECT_THROW(ops->rmsnorm_route_at(x, g, 1e-6f, w, 0.f, pos, 0, y, wide, TensorView{}), rt::Error);
}

TEST_F(CpuOps, AttentionStridedViews) {
  // q is the first half of a [T, H, 2D] buffer (head stride 2D); k/v are rows of a bigger cache.
  const int64_t T = 33, H = 4, D = 16;
  Tensor qbuf = randn({T, H, 2 * D});
  TensorView q = qbuf.view;
  q.shape = {T, H, D, 0};
  Tensor kc = randn({50, 2, D}), vc = randn({50, 2, D});
  Tensor qc = ops->alloc(DType::F32, {T, H, D});
  ops->copy(q, qc);
  rt::AttentionSpec spec;
  Tensor o = poisoned(DType::F32, {T, H, D});
  ops->attention(q, kc.view.rows(0, T), vc.view.rows(0, T), o, spec);
  Tensor kk = ops->alloc(DType::F32, {T, 2, D}), vv = ops->alloc(DType::F32, {T, 2, D});
  ops->copy(kc.view.rows(0, T), kk);
  ops->copy(vc.view.rows(0, T), vv);
  EXPECT_LT(rel_err(o, attention_ref(qc, kk, vv, spec)), kTol);
}

// The SDK's KV cache (full and ring buffer) fed chunk by chunk gives the same output as one
// windowed attention over the whole sequence: q_pos0/k_pos0 as the plugins use them.
TEST_F(CpuOps, KvCacheChunksMatchOneShotAttention) {
  rt::ModelDims dims;
  dims.n_heads = 6;
  dims.n_kv_heads = 2;
  dims.head_dim = 16;
  const int64_t T = 40;
  Tensor q = randn({T, 6, 16}), k = randn({T, 2, 16}), v = randn({T, 2, 16});
  for (int64_t W : {0, 8, 64}) {
    SCOPED_TRACE(testing::Message() << "W=" << W);
    rt::AttentionSpec spec;
    spec.window = W;
    Tensor full = poisoned(DType::F32, {T, 6, 16});
    ops->attention(q, k, v, full, spec);
    rt::KvCache cache(*ops, dims, T, W);
    EXPECT_EQ(cache.is_ring(), W == 8);
    Tensor o = poisoned(DType::F32, {T, 6, 16});
    int64_t p0 = 0;
    for (int64_t c : {5, 1, 1, 13, 1, 19}) {
      rt::KvCache::Window win = cache.append(*ops, k.view.rows(p0, p0 + c), v.view.rows(p0, p0 + c), W);
      rt::AttentionSpec s = spec;
      s.q_pos0 = p0;
      s.k_pos0 = win.k_pos0;
      if (win.unordered) {  // single-token decode on a ring: slots, every one visible
        s.causal = false;
        s.window = 0;
      }
      ops->attention(q.view.rows(p0, p0 + c), win.k, win.v, o.view.rows(p0, p0 + c), s);
      p0 += c;
    }
    ASSERT_EQ(p0, T);
    EXPECT_LT(rel_err(o, as_double(full.view)), 1e-6);
  }
}

TEST_F(CpuOps, AttentionErrors) {
  Tensor o = poisoned(DType::F32, {2, 3, 8});
  EXPECT_THROW_MSG(ops->attention(randn({2, 3, 8}), randn({2, 2, 8}), randn({2, 2, 8}), o, {}), "attention",
                   "multiple", "3", "2");
  EXPECT_THROW_MSG(ops->attention(randn({2, 4, 8}), randn({2, 2, 8}), randn({2, 2, 8}), o, {}), "attention",
                   "'o'", "[2, 4, 8]", "[2, 3, 8]");
  EXPECT_THROW_MSG(ops->attention(randn({2, 3, 8}), randn({2, 1, 4}), randn({2, 1, 4}), o, {}), "attention",
                   "'k'", "8");
  EXPECT_THROW_MSG(ops->attention(randn({2, 3, 8}), randn({2, 1, 8}), randn({3, 1, 8}), o, {}), "attention",
                   "'v'");
  rt::AttentionSpec bad;
  bad.window = -1;
  EXPECT_THROW_MSG(ops->attention(randn({2, 3, 8}), randn({2, 1, 8}), randn({2, 1, 8}), o, bad), "attention",
                   "window");
}

TEST_F(CpuOps, AddAndSwiglu) {
  for (auto shape : {std::vector<int64_t>{1, 1}, {7, 13}, {129, 896}, {3, 4864}}) {
    const int64_t r = shape[0], c = shape[1];
    SCOPED_TRACE(testing::Message() << r << "x" << c);
    Tensor a = randn({r, c}, 4.f), b = randn({r, c});
    std::vector<double> A = as_double(a.view), B = as_double(b.view), sum(A.size()), sw(A.size());
    for (size_t i = 0; i < A.size(); ++i) {
      sum[i] = A[i] + B[i];
      sw[i] = A[i] / (1.0 + std::exp(-A[i])) * B[i];
    }
    Tensor out = poisoned(DType::F32, {r, c});
    ops->add(a, b, out);
    EXPECT_LT(rel_err(out, sum), kTol);
    poison(out);
    ops->swiglu(a, b, out);
    EXPECT_LT(rel_err(out, sw), kTol);
    // Aliased outputs.
    Tensor a2 = ops->alloc(DType::F32, {r, c});
    ops->copy(a, a2);
    ops->swiglu(a2, b, a2);
    EXPECT_LT(rel_err(a2, sw), kTol);
    ops->add(a, b, a);
    EXPECT_LT(rel_err(a, sum), kTol);
  }
  // Saturation: silu of large |x| stays finite.
  Tensor g = ops->alloc(DType::F32, {4}), u = ops->alloc(DType::F32, {4}), o = poisoned(DType::F32, {4});
  const float gv[4] = {-200.f, -90.f, 90.f, 200.f};
  for (int i = 0; i < 4; ++i) {
    g.ptr<float>()[i] = gv[i];
    u.ptr<float>()[i] = 1.f;
  }
  ops->swiglu(g, u, o);
  EXPECT_EQ(o.ptr<float>()[0], 0.f);
  EXPECT_NEAR(o.ptr<float>()[1], 0.f, 1e-30);
  EXPECT_EQ(o.ptr<float>()[2], 90.f);
  EXPECT_EQ(o.ptr<float>()[3], 200.f);
  EXPECT_THROW_MSG(ops->add(randn({2, 3}), randn({3, 2}), poisoned(DType::F32, {2, 3})), "add", "'b'", "[2, 3]",
                   "[3, 2]");
  EXPECT_THROW_MSG(ops->swiglu(randn({2, 3}), randn({2, 3}), poisoned(DType::BF16, {2, 3})), "swiglu", "'out'",
                   "f32", "bf16");
}

// The CPU has one stream of work: concurrently runs the first branch, then the second, and an
// error in either passes on.
TEST_F(CpuOps, ConcurrentlyRunsFirstThenSecond) {
  std::string order;
  ops->concurrently([&] { order += "1"; }, [&] { order += "2"; });
  EXPECT_EQ(order, "12");
  EXPECT_THROW(ops->concurrently([&] { order += "1"; }, [&] { rt::fail("stop"); }), rt::Error);
  EXPECT_EQ(order, "121");
}

TEST_F(CpuOps, RejectsOtherDevices) {
  Tensor a = randn({2, 3});
  TensorView gpu = a.view;
  gpu.device = rt::Device::CUDA;
  EXPECT_THROW_MSG(ops->add(a, gpu, a), "add", "'b'", "cpu", "cuda");
  EXPECT_THROW_MSG(ops->copy(gpu, a), "copy", "'src'", "cuda");
  EXPECT_THROW_MSG(ops->linear(a, gpu, TensorView{}, poisoned(DType::F32, {2, 2})), "linear", "'w'", "cuda");
  EXPECT_THROW_MSG(ops->rmsnorm(gpu, randn({3}), 1e-6f, a), "rmsnorm", "'x'", "cuda");
  TensorView null = a.view;
  null.data = nullptr;
  EXPECT_THROW_MSG(ops->fill(null, 1.f), "fill", "'dst'", "null");
}

}  // namespace
