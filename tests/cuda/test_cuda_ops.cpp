// Tests of the CUDA backend (backends/cuda): every op against the CPU backend on random inputs
// (fixed seeds, never constants), ragged sizes, f32 and bf16 paths, device outputs poisoned with
// NaN before each call. The CPU reference runs on the same bf16-rounded inputs the device sees.
// Tolerances (relative Frobenius error): f32 paths < 1e-5, bf16 outputs < 1e-2.
// Without a GPU (CI) every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cuda/cuda_ops.h"
#include "cuda/kernels.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"
#include "test_util.h"

namespace {

using rt::Device;
using rt::DType;
using rt::Tensor;
using rt::TensorView;

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const int64_t kRows[] = {1, 7, 127, 128, 129, 4099};
const int64_t kHidden[] = {896, 333};

#define SKIP_WITHOUT_GPU() \
  if (!rt::cuda_device_available()) GTEST_SKIP() << "no CUDA device"

// Host values, f32, with a shape; what both backends start from.
struct Host {
  std::vector<int64_t> shape;
  std::vector<float> v;
  int64_t numel() const { return static_cast<int64_t>(v.size()); }
};

using rt::test::rel_err;
using rt::test::rounded;

double tol(DType out) { return out == DType::F32 ? 1e-5 : 1e-2; }

TensorView view_of(void* data, DType dt, Device dev, const std::vector<int64_t>& s) {
  switch (s.size()) {
    case 1: return TensorView::contiguous(data, dt, dev, {s[0]});
    case 2: return TensorView::contiguous(data, dt, dev, {s[0], s[1]});
    case 3: return TensorView::contiguous(data, dt, dev, {s[0], s[1], s[2]});
    default: return TensorView::contiguous(data, dt, dev, {s[0], s[1], s[2], s[3]});
  }
}

struct CudaOpsTest : ::testing::Test {
  std::unique_ptr<rt::Ops> cpu = rt::make_cpu_ops();
  std::unique_ptr<rt::Ops> gpu;
  cudaStream_t stream = nullptr;

  void SetUp() override {
    if (!rt::cuda_device_available()) return;
    gpu = rt::make_cuda_ops();
    stream = static_cast<rt::CudaOps&>(*gpu).stream();
  }

  static Host randn(std::vector<int64_t> shape, uint64_t seed, float sd = 1.f, float mean = 0.f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return Host{std::move(shape), rt::test::randn(static_cast<size_t>(n), seed, sd, mean)};
  }

  Tensor alloc(DType dt, const std::vector<int64_t>& s, rt::Ops& ops) {
    switch (s.size()) {
      case 1: return ops.alloc(dt, {s[0]});
      case 2: return ops.alloc(dt, {s[0], s[1]});
      case 3: return ops.alloc(dt, {s[0], s[1], s[2]});
      default: return ops.alloc(dt, {s[0], s[1], s[2], s[3]});
    }
  }
  // CPU f32 tensor holding h rounded through dt (the CPU reference's input).
  Tensor cpu_tensor(const Host& h, DType dt = DType::F32) {
    Tensor t = alloc(DType::F32, h.shape, *cpu);
    const std::vector<float> r = rounded(h.v, dt);
    std::memcpy(t.view.data, r.data(), r.size() * sizeof(float));
    return t;
  }
  // Device tensor of dtype dt holding h (converted on the host with half.h, uploaded as is).
  Tensor upload(const Host& h, DType dt) {
    std::vector<uint16_t> h16(h.v.size());
    void* src = const_cast<float*>(h.v.data());
    if (dt != DType::F32) {
      rt::convert_from_f32(h.v.data(), dt, h16.data(), h.v.size());
      src = h16.data();
    }
    Tensor t = alloc(dt, h.shape, *gpu);
    gpu->copy(view_of(src, dt, Device::CPU, h.shape), t);
    return t;
  }
  Tensor poisoned(DType dt, const std::vector<int64_t>& s) {
    Tensor t = alloc(dt, s, *gpu);
    gpu->fill(t, kNaN);
    return t;
  }
  // Device tensor -> host f32 (downloaded in its own dtype, converted with half.h).
  std::vector<float> download(const TensorView& d) {
    std::vector<uint16_t> raw(static_cast<size_t>(d.numel()) * 2);
    std::vector<float> out(static_cast<size_t>(d.numel()));
    std::vector<int64_t> s(d.shape.begin(), d.shape.begin() + d.ndim);
    gpu->copy(d, view_of(raw.data(), d.dtype, Device::CPU, s));
    rt::convert_to_f32(raw.data(), d.dtype, out.data(), out.size());
    return out;
  }
  static std::vector<float> host_values(const Tensor& t) {
    const float* p = t.ptr<float>();
    return std::vector<float>(p, p + t.view.numel());
  }
};

// ---- copies ------------------------------------------------------------------------------------

TEST_F(CudaOpsTest, CopyRoundTripsMatchHalfConversions) {
  SKIP_WITHOUT_GPU();
  Host h = randn({129, 333}, 1, 3.f);
  // Cover the f16 subnormal range and overflow to inf, and bf16 rounding ties.
  for (size_t i = 0; i < h.v.size(); i += 7) h.v[i] *= 1e-6f;
  for (size_t i = 3; i < h.v.size(); i += 101) h.v[i] = (i % 2 ? 7e4f : -1e5f);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    SCOPED_TRACE(rt::dtype_name(dt));
    const std::vector<float> want = rounded(h.v, dt);
    // host f32 -> device dt (converted on the device) -> host f32 (converted on the device)
    Tensor d = poisoned(dt, h.shape);
    gpu->copy(view_of(h.v.data(), DType::F32, Device::CPU, h.shape), d);
    std::vector<float> back(h.v.size());
    gpu->copy(d, view_of(back.data(), DType::F32, Device::CPU, h.shape));
    EXPECT_EQ(0, std::memcmp(back.data(), want.data(), want.size() * 4)) << "upload/download with conversion";
    // device dt -> device f32 -> device bf16 -> host, against the host conversions
    Tensor f = poisoned(DType::F32, h.shape);
    gpu->copy(d, f);
    EXPECT_EQ(0, std::memcmp(download(f).data(), want.data(), want.size() * 4)) << "device to device";
    Tensor b = poisoned(DType::BF16, h.shape);
    gpu->copy(d, b);
    const std::vector<float> want_b = rounded(want, DType::BF16);
    EXPECT_EQ(0, std::memcmp(download(b).data(), want_b.data(), want_b.size() * 4)) << "to bf16 on device";
  }
  // i32 copies are raw.
  std::vector<int32_t> ids(1000), ids_back(1000, -1);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i * 2654435761u % 151936);
  Tensor di = gpu->alloc(DType::I32, {1000});
  gpu->copy(TensorView::contiguous(ids.data(), DType::I32, Device::CPU, {1000}), di);
  gpu->copy(di, TensorView::contiguous(ids_back.data(), DType::I32, Device::CPU, {1000}));
  EXPECT_EQ(ids, ids_back);
}

// Views like KvCache uses (rows of a column slice), on both sides and across devices.
TEST_F(CudaOpsTest, StridedRowsCopies) {
  SKIP_WITHOUT_GPU();
  Host src = randn({20, 40}, 2);
  TensorView hs = view_of(src.v.data(), DType::F32, Device::CPU, src.shape);
  hs.shape[1] = 32;  // columns 5..36
  hs.data = src.v.data() + 5;
  hs = hs.rows(3, 15);  // [12, 32], stride 40

  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(rt::dtype_name(dt));
    Tensor big = poisoned(dt, {30, 50});
    TensorView ds = big.view;
    ds.shape[1] = 32;
    ds.data = static_cast<char*>(big.view.data) + 7 * rt::dtype_size(dt);
    ds = ds.rows(10, 22);  // [12, 32], stride 50
    gpu->copy(hs, ds);     // upload, strided on both sides, converting

    // Download the whole buffer: the window holds the values, everything else is still NaN.
    const std::vector<float> all = download(big.view);
    for (int64_t r = 0; r < 30; ++r)
      for (int64_t c = 0; c < 50; ++c) {
        const float got = all[static_cast<size_t>(r * 50 + c)];
        if (r >= 10 && r < 22 && c >= 7 && c < 39) {
          const float want = rounded({src.v[static_cast<size_t>((r - 10 + 3) * 40 + (c - 7 + 5))]}, dt)[0];
          ASSERT_EQ(got, want) << "row " << r << " col " << c;
        } else {
          ASSERT_TRUE(std::isnan(got)) << "wrote outside the view at row " << r << " col " << c;
        }
      }

    // Download into a strided host view (f32), converting; the rest of the host buffer untouched.
    std::vector<float> host(12 * 45, -7.f);
    TensorView hd = TensorView::contiguous(host.data() + 2, DType::F32, Device::CPU, {12, 32});
    hd.stride[0] = 45;
    gpu->copy(ds, hd);
    for (int64_t r = 0; r < 12; ++r)
      for (int64_t c = 0; c < 45; ++c) {
        const float got = host[static_cast<size_t>(r * 45 + c)];
        if (c >= 2 && c < 34)
          ASSERT_EQ(got, rounded({src.v[static_cast<size_t>((r + 3) * 40 + (c - 2 + 5))]}, dt)[0]);
        else
          ASSERT_EQ(got, -7.f);
      }

    // Device to device, strided to strided, converting to f16.
    Tensor other = poisoned(DType::F16, {12, 64});
    TensorView od = other.view;
    od.shape[1] = 32;
    gpu->copy(ds, od);
    const std::vector<float> o = download(other.view);
    for (int64_t r = 0; r < 12; ++r)
      for (int64_t c = 0; c < 64; ++c) {
        const float got = o[static_cast<size_t>(r * 64 + c)];
        if (c < 32)
          ASSERT_EQ(got, rounded(rounded({src.v[static_cast<size_t>((r + 3) * 40 + c + 5)]}, dt), DType::F16)[0]);
        else
          ASSERT_TRUE(std::isnan(got));
      }
  }

  // [T, H, D] rows (the KV-cache append): rows 5..9 of a [16, 2, 64] bf16 cache.
  Host kv = randn({4, 2, 64}, 3);
  Tensor cache = poisoned(DType::BF16, {16, 2, 64});
  Tensor chunk = upload(kv, DType::BF16);
  gpu->copy(chunk, cache.view.rows(5, 9));
  EXPECT_EQ(download(cache.view.rows(5, 9)), rounded(kv.v, DType::BF16));
  EXPECT_TRUE(std::isnan(download(cache.view.rows(4, 5))[0]));
  EXPECT_TRUE(std::isnan(download(cache.view.rows(9, 10))[0]));
}

TEST_F(CudaOpsTest, CopyRejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  Tensor a = gpu->alloc(DType::F32, {4, 8});
  Tensor b = gpu->alloc(DType::F32, {4, 9});
  Tensor i = gpu->alloc(DType::I32, {4, 8});
  EXPECT_THROW(gpu->copy(a, b), rt::Error);
  EXPECT_THROW(gpu->copy(a, i), rt::Error);
}

TEST_F(CudaOpsTest, Fill) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    Tensor t = poisoned(dt, {7, 333});
    gpu->fill(t.view.rows(2, 5), 1.2345f);
    const std::vector<float> v = download(t);
    const float want = rounded({1.2345f}, dt)[0];
    for (int64_t r = 0; r < 7; ++r)
      for (int64_t c = 0; c < 333; ++c) {
        const float got = v[static_cast<size_t>(r * 333 + c)];
        if (r >= 2 && r < 5)
          ASSERT_EQ(got, want);
        else
          ASSERT_TRUE(std::isnan(got));
      }
  }
  Tensor ti = gpu->alloc(DType::I32, {129});
  gpu->fill(ti, -42.f);
  std::vector<int32_t> back(129);
  gpu->copy(ti, TensorView::contiguous(back.data(), DType::I32, Device::CPU, {129}));
  for (int32_t x : back) ASSERT_EQ(x, -42);
  EXPECT_THROW(gpu->fill(ti, 0.5f), rt::Error);
}

// ---- elementwise -------------------------------------------------------------------------------

TEST_F(CudaOpsTest, AddMixedDtypes) {
  SKIP_WITHOUT_GPU();
  struct Case {
    DType a, b, out;
    bool alias_a;
  };
  const Case cases[] = {{DType::F32, DType::F32, DType::F32, false},
                        {DType::F32, DType::BF16, DType::F32, true},  // residual += bf16 delta
                        {DType::BF16, DType::BF16, DType::BF16, false},
                        {DType::F16, DType::F32, DType::BF16, false}};
  uint64_t seed = 100;
  for (const Case& c : cases)
    for (int64_t n : kRows)
      for (int64_t d : kHidden) {
        SCOPED_TRACE(std::string(rt::dtype_name(c.a)) + "+" + rt::dtype_name(c.b) + "->" + rt::dtype_name(c.out) +
                     " N=" + std::to_string(n) + " d=" + std::to_string(d));
        Host ha = randn({n, d}, ++seed), hb = randn({n, d}, ++seed, 0.5f);
        Tensor ra = cpu_tensor(ha, c.a), rb = cpu_tensor(hb, c.b), ref = alloc(DType::F32, {n, d}, *cpu);
        cpu->add(ra, rb, ref);
        Tensor da = upload(ha, c.a), db = upload(hb, c.b);
        Tensor out = c.alias_a ? da : poisoned(c.out, {n, d});
        gpu->add(da, db, out);
        EXPECT_LT(rel_err(download(out), rounded(host_values(ref), c.out)), tol(c.out));
      }
}

TEST_F(CudaOpsTest, Swiglu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t n : kRows)
      for (int64_t d : {int64_t{4864}, int64_t{333}}) {
        if (n == 4099 && d == 4864) continue;  // size adds nothing here
        SCOPED_TRACE(std::string(rt::dtype_name(dt)) + " N=" + std::to_string(n) + " d=" + std::to_string(d));
        Host hg = randn({n, d}, ++seed, 2.f), hu = randn({n, d}, ++seed);
        Tensor rg = cpu_tensor(hg, dt), ru = cpu_tensor(hu, dt), ref = alloc(DType::F32, {n, d}, *cpu);
        cpu->swiglu(rg, ru, ref);
        Tensor out = poisoned(dt, {n, d});
        gpu->swiglu(upload(hg, dt), upload(hu, dt), out);
        EXPECT_LT(rel_err(download(out), host_values(ref)), tol(dt));
      }
}

// gate and up as the column halves of one fused [n, 2d] GEMM output (the MLP's layout): the
// row-strided fast path, forward and backward, against the CPU on contiguous copies.
TEST_F(CudaOpsTest, SwigluColumnHalves) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 250;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{129}})
      for (int64_t d : {int64_t{4864}, int64_t{333}}) {
        SCOPED_TRACE(std::string(rt::dtype_name(dt)) + " N=" + std::to_string(n) + " d=" + std::to_string(d));
        Host hgu = randn({n, 2 * d}, ++seed, 2.f), hdo = randn({n, d}, ++seed);
        Host hg{{n, d}, {}}, hu{{n, d}, {}};
        for (int64_t r = 0; r < n; ++r)
          for (int64_t c = 0; c < d; ++c) {
            hg.v.push_back(hgu.v[r * 2 * d + c]);
            hu.v.push_back(hgu.v[r * 2 * d + d + c]);
          }
        Tensor rg = cpu_tensor(hg, dt), ru = cpu_tensor(hu, dt), rdo = cpu_tensor(hdo, dt);
        Tensor ref = alloc(DType::F32, {n, d}, *cpu), rdg = alloc(DType::F32, {n, d}, *cpu),
               rdu = alloc(DType::F32, {n, d}, *cpu);
        cpu->swiglu(rg, ru, ref);
        cpu->swiglu_backward(rg, ru, rdo, rdg, rdu);

        Tensor both = upload(hgu, dt);
        const TensorView g = both.view.cols(0, d), u = both.view.cols(d, 2 * d);
        Tensor out = poisoned(dt, {n, d});
        gpu->swiglu(g, u, out);
        EXPECT_LT(rel_err(download(out), host_values(ref)), tol(dt)) << "forward";
        // Backward into the column halves of another fused buffer.
        Tensor dboth = poisoned(dt, {n, 2 * d});
        gpu->swiglu_backward(g, u, upload(hdo, dt), dboth.view.cols(0, d), dboth.view.cols(d, 2 * d));
        std::vector<float> got = download(dboth), dg, du;
        for (int64_t r = 0; r < n; ++r) {
          dg.insert(dg.end(), got.begin() + r * 2 * d, got.begin() + r * 2 * d + d);
          du.insert(du.end(), got.begin() + r * 2 * d + d, got.begin() + (r + 1) * 2 * d);
        }
        EXPECT_LT(rel_err(dg, host_values(rdg)), dt == DType::F32 ? 1e-5 : 2e-2) << "dgate";
        EXPECT_LT(rel_err(du, host_values(rdu)), dt == DType::F32 ? 1e-5 : 2e-2) << "dup";
      }
}

// ---- embedding ---------------------------------------------------------------------------------

TEST_F(CudaOpsTest, Embedding) {
  SKIP_WITHOUT_GPU();
  const int64_t V = 1009;
  uint64_t seed = 300;
  for (DType tdt : {DType::BF16, DType::F32})
    for (DType odt : {DType::F32, DType::BF16})
      for (int64_t d : kHidden)
        for (int64_t T : {int64_t{1}, int64_t{7}, int64_t{129}, int64_t{4099}})
          for (bool host_ids : {false, true}) {
            SCOPED_TRACE(std::string(rt::dtype_name(tdt)) + "->" + rt::dtype_name(odt) + " d=" + std::to_string(d) +
                         " T=" + std::to_string(T) + (host_ids ? " host ids" : " device ids"));
            Host table = randn({V, d}, ++seed);
            std::mt19937 rng(static_cast<uint32_t>(++seed));
            std::vector<int32_t> ids(static_cast<size_t>(T));
            for (int32_t& i : ids) i = static_cast<int32_t>(rng() % V);
            ids[0] = static_cast<int32_t>(V - 1);
            TensorView hid = TensorView::contiguous(ids.data(), DType::I32, Device::CPU, {T});
            Tensor ref = alloc(DType::F32, {T, d}, *cpu);
            cpu->embedding(cpu_tensor(table, tdt), hid, ref);
            Tensor dids = gpu->alloc(DType::I32, {T});
            gpu->copy(hid, dids);
            Tensor out = poisoned(odt, {T, d});
            gpu->embedding(upload(table, tdt), host_ids ? hid : dids.view, out);
            // A gather with conversion: exact.
            EXPECT_TRUE(download(out) == rounded(host_values(ref), odt));
          }
}

TEST_F(CudaOpsTest, EmbeddingRejectsOutOfRangeIds) {
  SKIP_WITHOUT_GPU();
  Host table = randn({50, 64}, 7);
  Tensor dt = upload(table, DType::BF16);
  std::vector<int32_t> ids = {3, 50, 4};
  TensorView hid = TensorView::contiguous(ids.data(), DType::I32, Device::CPU, {3});
  Tensor out = poisoned(DType::F32, {3, 64});
  // Host ids: validated before upload.
  try {
    gpu->embedding(dt, hid, out);
    FAIL() << "expected rt::Error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 50"), std::string::npos) << e.what();
  }
  // Device ids: detected on the device, reported at the next synchronization, then cleared.
  for (int32_t bad : {-1, 50, 1 << 30}) {
    ids[1] = bad;
    Tensor dids = gpu->alloc(DType::I32, {3});
    gpu->copy(hid, dids);
    gpu->embedding(dt, dids, out);
    try {
      gpu->synchronize();
      FAIL() << "expected rt::Error for id " << bad;
    } catch (const rt::Error& e) {
      EXPECT_NE(std::string(e.what()).find("token id " + std::to_string(bad)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("position 1"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(gpu->synchronize());
  }
}

// ---- rmsnorm -----------------------------------------------------------------------------------

TEST_F(CudaOpsTest, RmsNorm) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 400;
  struct Case {
    DType x, w, y;
  };
  const Case cases[] = {{DType::F32, DType::F32, DType::F32},
                        {DType::F32, DType::BF16, DType::BF16},
                        {DType::BF16, DType::BF16, DType::BF16},
                        {DType::BF16, DType::BF16, DType::F32}};
  for (const Case& c : cases)
    for (int64_t n : kRows)
      for (int64_t d : {int64_t{896}, int64_t{333}, int64_t{2048}}) {
        SCOPED_TRACE(std::string(rt::dtype_name(c.x)) + "/" + rt::dtype_name(c.w) + "->" + rt::dtype_name(c.y) +
                     " N=" + std::to_string(n) + " d=" + std::to_string(d));
        Host hx = randn({n, d}, ++seed, 3.f, 0.5f), hw = randn({d}, ++seed, 0.2f, 1.f);
        Tensor ref = alloc(DType::F32, {n, d}, *cpu);
        cpu->rmsnorm(cpu_tensor(hx, c.x), cpu_tensor(hw, c.w), 1e-6f, ref);
        Tensor y = poisoned(c.y, {n, d});
        gpu->rmsnorm(upload(hx, c.x), upload(hw, c.w), 1e-6f, y);
        EXPECT_LT(rel_err(download(y), host_values(ref)), tol(c.y));
      }
}

// rmsnorm_keep_input: y bit for bit rmsnorm's, and x_copy exactly x, on the fast path (f32 x, bf16
// w and y, contiguous, >= 64 rows) and off it (fewer rows, a strided x_copy, f32 y).
TEST_F(CudaOpsTest, RmsNormKeepInput) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (DType ydt : {DType::BF16, DType::F32})
    for (int64_t n : kRows)
      for (int64_t d : {int64_t{896}, int64_t{333}, int64_t{1536}})
        for (bool strided : {false, true}) {
          SCOPED_TRACE(std::string(rt::dtype_name(ydt)) + " N=" + std::to_string(n) + " d=" + std::to_string(d) +
                       (strided ? " strided copy" : ""));
          Host hx = randn({n, d}, ++seed, 3.f, 0.5f), hw = randn({d}, ++seed, 0.2f, 1.f);
          const Tensor x = upload(hx, DType::F32), w = upload(hw, DType::BF16);
          Tensor want = poisoned(ydt, {n, d}), y = poisoned(ydt, {n, d});
          gpu->rmsnorm(x, w, 1e-6f, want);
          Tensor wide = poisoned(DType::F32, {n, d + 8});
          Tensor copy = poisoned(DType::F32, {n, d});
          const TensorView dst = strided ? wide.view.cols(0, d) : copy.view;
          gpu->rmsnorm_keep_input(x, w, 1e-6f, y, dst);
          EXPECT_EQ(download(y), download(want)) << "y";
          const std::vector<float> got = download(strided ? wide : copy), xs = download(x);
          for (int64_t r = 0; r < n; ++r)
            for (int64_t c = 0; c < d; ++c)
              ASSERT_EQ(got[static_cast<size_t>(r * (d + (strided ? 8 : 0)) + c)], xs[static_cast<size_t>(r * d + c)])
                  << "x_copy row " << r << " col " << c;
        }
  // A copy that overlaps x, or of another shape, is refused.
  const Tensor x = upload(randn({70, 64}, 1), DType::F32), w = upload(randn({64}, 2), DType::BF16);
  Tensor y = poisoned(DType::BF16, {70, 64}), small = poisoned(DType::F32, {70, 32});
  EXPECT_THROW_MSG(gpu->rmsnorm_keep_input(x, w, 1e-6f, y, x), "rmsnorm_keep_input", "overlaps");
  EXPECT_THROW_MSG(gpu->rmsnorm_keep_input(x, w, 1e-6f, y, small), "rmsnorm_keep_input", "must match x");
}

// ---- rope --------------------------------------------------------------------------------------

TEST_F(CudaOpsTest, Rope) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 600;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t T : kRows)
      for (int64_t D : {int64_t{64}, int64_t{128}})
        for (int64_t pos0 : {int64_t{0}, int64_t{30001}})
          for (double theta : {1e6, 5e6}) {
            const int64_t H = D == 64 ? 14 : 12;
            SCOPED_TRACE(std::string(rt::dtype_name(dt)) + " T=" + std::to_string(T) + " D=" + std::to_string(D) +
                         " pos0=" + std::to_string(pos0));
            Host hx = randn({T, H, D}, ++seed);
            Tensor ref = cpu_tensor(hx, dt);
            cpu->rope(ref, pos0, theta);
            Tensor x = upload(hx, dt);
            gpu->rope(x, pos0, theta);
            EXPECT_LT(rel_err(download(x), host_values(ref)), tol(dt));
          }
  // A strided view: the k half of a fused [T, 2, H, D] buffer, seen as rows of [T, H, D].
  Host hx = randn({129, 2 * 2 * 64}, 9);
  Tensor buf = upload(hx, DType::F32);
  TensorView k = TensorView::contiguous(static_cast<float*>(buf.view.data) + 128, DType::F32, Device::CUDA,
                                        {129, 2, 64});
  k.stride[0] = 256;
  gpu->rope(k, 5, 1e6);
  Tensor ref = cpu_tensor(hx);
  TensorView rk = TensorView::contiguous(ref.ptr<float>() + 128, DType::F32, Device::CPU, {129, 2, 64});
  rk.stride[0] = 256;
  cpu->rope(rk, 5, 1e6);
  EXPECT_LT(rel_err(download(buf), host_values(ref)), 1e-6);
}

// ---- qkv_rope_split ----------------------------------------------------------------------------

// The fused split + RoPE of a QKV projection against the CPU (whose qkv_rope_split is the
// composition copy + rope), and against the device's own copy + rope bit for bit. k and v are
// written into strided views (the halves of one [T, 2, Hkv, D] buffer), as into a KV cache.
TEST_F(CudaOpsTest, QkvRopeSplit) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 650;
  struct Heads {
    int64_t hq, hkv, d;
  };
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t T : kRows)
      for (Heads h : {Heads{14, 2, 64}, Heads{12, 2, 128}, Heads{6, 1, 64}})
        for (int64_t pos0 : {int64_t{0}, int64_t{30001}}) {
          SCOPED_TRACE(std::string(rt::dtype_name(dt)) + " T=" + std::to_string(T) + " Hq=" + std::to_string(h.hq) +
                       " D=" + std::to_string(h.d) + " pos0=" + std::to_string(pos0));
          const int64_t nq = h.hq * h.d, nk = h.hkv * h.d, n = nq + 2 * nk;
          Host hqkv = randn({T, n}, ++seed);
          Tensor cq = alloc(DType::F32, {T, h.hq, h.d}, *cpu), ck = alloc(DType::F32, {T, h.hkv, h.d}, *cpu),
                 cv = alloc(DType::F32, {T, h.hkv, h.d}, *cpu);
          cpu->qkv_rope_split(cpu_tensor(hqkv, dt), pos0, 1e6, cq, ck, cv);

          Tensor qkv = upload(hqkv, dt);
          Tensor q = poisoned(dt, {T, h.hq, h.d}), kv = poisoned(dt, {T, 2, h.hkv, h.d});
          auto half = [&](int i) {
            TensorView v = kv.view;
            v.data = static_cast<char*>(kv.view.data) + i * nk * static_cast<int64_t>(rt::dtype_size(dt));
            v.ndim = 3;
            v.shape = {T, h.hkv, h.d, 0};
            v.stride = {2 * nk, h.d, 1, 0};
            return v;
          };
          gpu->qkv_rope_split(qkv, pos0, 1e6, q, half(0), half(1));
          std::vector<float> got = download(kv), gk, gv;
          for (int64_t t = 0; t < T; ++t) {
            gk.insert(gk.end(), got.begin() + t * 2 * nk, got.begin() + t * 2 * nk + nk);
            gv.insert(gv.end(), got.begin() + t * 2 * nk + nk, got.begin() + (t + 1) * 2 * nk);
          }
          EXPECT_LT(rel_err(download(q), host_values(cq)), tol(dt)) << "q";
          EXPECT_LT(rel_err(gk, host_values(ck)), tol(dt)) << "k";
          EXPECT_EQ(gv, rounded(host_values(cv), dt)) << "v is a copy";

          // The device composition it replaces: identical bits.
          Tensor q2 = poisoned(dt, {T, h.hq, h.d}), k2 = poisoned(dt, {T, h.hkv, h.d});
          gpu->copy(rt::Ops::qkv_heads(qkv, 0, q2), q2);
          gpu->copy(rt::Ops::qkv_heads(qkv, nq, k2), k2);
          gpu->rope(q2, pos0, 1e6);
          gpu->rope(k2, pos0, 1e6);
          EXPECT_EQ(download(q2), download(q)) << "q vs copy + rope";
          EXPECT_EQ(download(k2), gk) << "k vs copy + rope";
        }
}

TEST_F(CudaOpsTest, QkvRopeSplitRejectsBadShapes) {
  SKIP_WITHOUT_GPU();
  Tensor qkv = poisoned(DType::BF16, {5, 14 * 64 + 2 * 2 * 64 - 64});
  Tensor q = poisoned(DType::BF16, {5, 14, 64}), k = poisoned(DType::BF16, {5, 2, 64}),
         v = poisoned(DType::BF16, {5, 2, 64});
  try {
    gpu->qkv_rope_split(qkv, 0, 1e6, q, k, v);
    FAIL() << "expected an error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("qkv has 1088 columns"), std::string::npos) << e.what();
  }
}

// ---- linear ------------------------------------------------------------------------------------

// The decode GEMV (at most kGemvMaxRows rows, bf16 W) behind linear and linear_accumulate, and
// the cuBLASLt path just past it (5 rows) and beside it (K not a multiple of 8, x misaligned).
TEST_F(CudaOpsTest, LinearFewRowsGemv) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 690;
  for (DType xdt : {DType::BF16, DType::F32})
    for (DType ydt : {DType::BF16, DType::F32})
      for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{5}})
        for (auto [in, out] : {std::pair<int64_t, int64_t>{896, 1152}, {896, 9728}, {4864, 896}, {1536, 256},
                               {333, 517}})
          for (bool accumulate : {false, true}) {
            SCOPED_TRACE(std::string(rt::dtype_name(xdt)) + "->" + rt::dtype_name(ydt) + " N=" + std::to_string(n) +
                         " in=" + std::to_string(in) + " out=" + std::to_string(out) + (accumulate ? " +=" : ""));
            Host hx = randn({n, in}, ++seed), hw = randn({out, in}, ++seed, 0.05f), hb = randn({out}, ++seed),
                 hy = randn({n, out}, ++seed, 2.f);
            Tensor ref = accumulate ? cpu_tensor(hy, ydt) : alloc(DType::F32, {n, out}, *cpu);
            Tensor cx = cpu_tensor(hx, DType::BF16), cw = cpu_tensor(hw, DType::BF16);
            if (accumulate) cpu->linear_accumulate(cx, cw, ref);
            else cpu->linear(cx, cw, cpu_tensor(hb, DType::BF16), ref);
            Tensor y = accumulate ? upload(hy, ydt) : poisoned(ydt, {n, out});
            Tensor x = upload(hx, xdt), w = upload(hw, DType::BF16);
            if (accumulate) gpu->linear_accumulate(x, w, y);
            else gpu->linear(x, w, upload(hb, DType::BF16), y);
            EXPECT_LT(rel_err(download(y), host_values(ref)), ydt == DType::F32 ? 1e-4 : 1e-2);
          }
  // Rows with a stride (a row slice of a wider x) and a misaligned x (cuBLASLt takes it).
  Host hx = randn({3, 2 * 896}, 1), hw = randn({640, 896}, 2, 0.05f);
  Tensor x = upload(hx, DType::BF16), w = upload(hw, DType::BF16);
  Host hxs{{3, 896}, {}};
  for (int64_t r = 0; r < 3; ++r) hxs.v.insert(hxs.v.end(), hx.v.begin() + r * 1792, hx.v.begin() + r * 1792 + 896);
  Tensor ref = alloc(DType::F32, {3, 640}, *cpu);
  cpu->linear(cpu_tensor(hxs, DType::BF16), cpu_tensor(hw, DType::BF16), TensorView{}, ref);
  Tensor y = poisoned(DType::F32, {3, 640});
  gpu->linear(x.view.cols(0, 896), w, TensorView{}, y);
  EXPECT_LT(rel_err(download(y), host_values(ref)), 1e-4) << "strided rows";
  Host h1 = randn({1, 897}, 3);
  Tensor x1 = upload(h1, DType::BF16);
  Tensor ref1 = alloc(DType::F32, {1, 640}, *cpu), y1 = poisoned(DType::F32, {1, 640});
  Host h1s{{1, 896}, std::vector<float>(h1.v.begin() + 1, h1.v.end())};
  cpu->linear(cpu_tensor(h1s, DType::BF16), cpu_tensor(hw, DType::BF16), TensorView{}, ref1);
  gpu->linear(x1.view.cols(1, 897), w, TensorView{}, y1);
  EXPECT_LT(rel_err(download(y1), host_values(ref1)), 1e-4) << "misaligned x";
}

// y += x W^T into an f32 residual (and the other output dtypes), against the CPU.
TEST_F(CudaOpsTest, LinearAccumulate) {
  SKIP_WITHOUT_GPU();
  struct Case {
    DType x, w, y;
  };
  const Case cases[] = {{DType::BF16, DType::BF16, DType::F32},
                        {DType::F32, DType::BF16, DType::F32},  // x rounded to bf16 first
                        {DType::BF16, DType::BF16, DType::BF16},
                        {DType::F32, DType::F32, DType::F32}};
  uint64_t seed = 680;
  for (const Case& c : cases)
    for (int64_t n : kRows)
      for (auto [in, out] : {std::pair<int64_t, int64_t>{896, 896}, {4864, 896}, {333, 517}}) {
        SCOPED_TRACE(std::string(rt::dtype_name(c.x)) + "x" + rt::dtype_name(c.w) + "+=" + rt::dtype_name(c.y) +
                     " N=" + std::to_string(n) + " in=" + std::to_string(in) + " out=" + std::to_string(out));
        Host hx = randn({n, in}, ++seed), hw = randn({out, in}, ++seed, 0.05f), hy = randn({n, out}, ++seed, 3.f);
        Tensor ref = cpu_tensor(hy, c.y);
        cpu->linear_accumulate(cpu_tensor(hx, c.x == c.w ? c.x : c.w), cpu_tensor(hw, c.w), ref);
        Tensor y = upload(hy, c.y);
        gpu->linear_accumulate(upload(hx, c.x), upload(hw, c.w), y);
        const double t = c.y == DType::F32 ? (c.w == DType::F32 ? 1e-5 : 1e-4) : 1e-2;
        EXPECT_LT(rel_err(download(y), host_values(ref)), t);
      }
}


TEST_F(CudaOpsTest, Linear) {
  SKIP_WITHOUT_GPU();
  struct Case {
    DType x, w, y;
    bool bias;
  };
  const Case cases[] = {{DType::BF16, DType::BF16, DType::BF16, true},
                        {DType::BF16, DType::BF16, DType::F32, true},
                        {DType::BF16, DType::BF16, DType::F32, false},
                        {DType::F32, DType::F32, DType::F32, true},
                        {DType::F32, DType::BF16, DType::F32, false}};  // x converted to bf16 first
  uint64_t seed = 700;
  for (const Case& c : cases)
    for (int64_t n : kRows)
      for (auto [in, out] : {std::pair<int64_t, int64_t>{896, 896}, {896, 128}, {333, 517}}) {
        SCOPED_TRACE(std::string(rt::dtype_name(c.x)) + "x" + rt::dtype_name(c.w) + "->" + rt::dtype_name(c.y) +
                     (c.bias ? " bias" : "") + " N=" + std::to_string(n) + " in=" + std::to_string(in) +
                     " out=" + std::to_string(out));
        Host hx = randn({n, in}, ++seed), hw = randn({out, in}, ++seed, 0.05f), hb = randn({out}, ++seed);
        // The device rounds an f32 x to W's dtype: the reference sees the same values.
        const DType x_eff = c.x == c.w ? c.x : c.w;
        Tensor ref = alloc(DType::F32, {n, out}, *cpu);
        cpu->linear(cpu_tensor(hx, x_eff), cpu_tensor(hw, c.w), c.bias ? cpu_tensor(hb, c.w).view : TensorView{},
                    ref);
        Tensor y = poisoned(c.y, {n, out});
        gpu->linear(upload(hx, c.x), upload(hw, c.w), c.bias ? upload(hb, c.w).view : TensorView{}, y);
        // 16-bit inputs with an f32 output differ from the CPU only by summation order.
        const double t = c.y == DType::F32 ? (c.w == DType::F32 ? 1e-5 : 1e-4) : 1e-2;
        EXPECT_LT(rel_err(download(y), host_values(ref)), t);
      }
}

// Output rows with a stride (a column slice of a wider buffer), f32 bias on bf16 GEMMs, and the
// descriptor cache reused across calls of one shape.
TEST_F(CudaOpsTest, LinearStridedOutputAndRepeats) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 129, in = 896, out = 128;
  Host hx = randn({n, in}, 11), hw = randn({out, in}, 12, 0.05f), hb = randn({out}, 13);
  Tensor ref = alloc(DType::F32, {n, out}, *cpu);
  cpu->linear(cpu_tensor(hx, DType::BF16), cpu_tensor(hw, DType::BF16), cpu_tensor(hb), ref);
  Tensor x = upload(hx, DType::BF16), w = upload(hw, DType::BF16), b = upload(hb, DType::F32);
  for (int rep = 0; rep < 3; ++rep) {
    Tensor wide = poisoned(DType::F32, {n, 3 * out});
    TensorView y = wide.view;
    y.shape[1] = out;
    y.data = static_cast<float*>(wide.view.data) + out;
    gpu->linear(x, w, b, y);
    const std::vector<float> all = download(wide);
    std::vector<float> got;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < 3 * out; ++c) {
        const float v = all[static_cast<size_t>(r * 3 * out + c)];
        if (c >= out && c < 2 * out)
          got.push_back(v);
        else
          ASSERT_TRUE(std::isnan(v)) << "wrote outside y at row " << r << " col " << c;
      }
    EXPECT_LT(rel_err(got, host_values(ref)), 1e-4);
  }
}

// The plain kernel linear() falls back to when cuBLASLt has no algorithm for a layout.
// Column sums (bias and RMSNorm weight gradients): the 16-byte vector kernel (unit column stride,
// aligned rows, cols % 8 == 0) sums every column in the scalar kernel's order, so the two agree to
// the bit; the scalar one runs here on the same values behind a row stride of cols + 1. Both
// against an fp64 host sum.
TEST_F(CudaOpsTest, ColumnSumsVectorAndScalarAgreeBitwise) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 900;
  for (int64_t rows : {int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{20000}})
    for (int64_t cols : {int64_t{8}, int64_t{896}, int64_t{904}})
      for (DType at : {DType::F32, DType::BF16})
        for (int with_b = 0; with_b < 2; ++with_b)
          for (int with_scale = 0; with_scale < 2; ++with_scale) {
            if (rows == 20000 && (cols != 896 || at != DType::BF16)) continue;  // 20000: 256 slices of 79 rows
            SCOPED_TRACE(std::string(rt::dtype_name(at)) + " rows " + std::to_string(rows) + " cols " +
                         std::to_string(cols) + " b " + std::to_string(with_b) + " scale " + std::to_string(with_scale));
            const DType bt = at == DType::F32 ? DType::BF16 : DType::F32;  // mixed, as dy * x of the norm
            Host ha = randn({rows, cols + 1}, ++seed), hb = randn({rows, cols + 1}, ++seed);
            Host hs = randn({rows}, ++seed);
            const std::vector<float> ra = rounded(ha.v, at), rb = rounded(hb.v, bt);
            Tensor ga = upload(ha, at), gb = upload(hb, bt), gs = upload(hs, DType::F32);
            // The same values packed (vector kernel) and behind the row stride cols + 1 (scalar).
            auto narrow = [&](const Tensor& t) {
              TensorView v = t.view;
              v.shape[1] = cols;
              return v;
            };
            auto packed = [&](const Tensor& t, DType dt) {
              Tensor p = gpu->alloc(dt, {rows, cols});
              gpu->copy(narrow(t), p);
              return p;
            };
            Tensor pa = packed(ga, at), pb = packed(gb, bt);
            Tensor out_vec = gpu->alloc(DType::F32, {cols}), out_scalar = gpu->alloc(DType::F32, {cols});
            gpu->fill(out_vec, 0.f);
            gpu->fill(out_scalar, 0.f);
            const float* scale = with_scale ? static_cast<const float*>(gs.view.data) : nullptr;
            rt::cuda::column_sum_accumulate(pa, with_b ? pb.view : TensorView{}, scale, out_vec, stream);
            rt::cuda::column_sum_accumulate(narrow(ga), with_b ? narrow(gb) : TensorView{}, scale, out_scalar, stream);
            const std::vector<float> v = download(out_vec), sc = download(out_scalar);
            ASSERT_EQ(0, std::memcmp(v.data(), sc.data(), v.size() * sizeof(float))) << "vector vs scalar kernel";
            std::vector<double> ref(static_cast<size_t>(cols), 0.0);
            double mag = 0.0;
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < cols; ++c) {
                const size_t i = static_cast<size_t>(r * (cols + 1) + c);
                double x = ra[i];
                if (with_b) x *= rb[i];
                if (with_scale) x *= hs.v[static_cast<size_t>(r)];
                ref[static_cast<size_t>(c)] += x;
                mag += std::abs(x);
              }
            for (int64_t c = 0; c < cols; ++c)
              ASSERT_NEAR(v[static_cast<size_t>(c)], ref[static_cast<size_t>(c)], 1e-5 * mag / cols + 1e-6) << "column " << c;
          }
}

TEST_F(CudaOpsTest, SimpleGemmFallback) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 800;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{129}})
      for (auto [in, out] : {std::pair<int64_t, int64_t>{896, 128}, {333, 517}}) {
        SCOPED_TRACE(std::string(rt::dtype_name(dt)) + " N=" + std::to_string(n) + " in=" + std::to_string(in) +
                     " out=" + std::to_string(out));
        Host hx = randn({n, in}, ++seed), hw = randn({out, in}, ++seed, 0.05f), hb = randn({out}, ++seed);
        Tensor ref = alloc(DType::F32, {n, out}, *cpu);
        cpu->linear(cpu_tensor(hx, dt), cpu_tensor(hw, dt), cpu_tensor(hb, dt), ref);
        Tensor y = poisoned(DType::F32, {n, out});
        rt::cuda::gemm_simple_forward(upload(hx, dt), upload(hw, dt), upload(hb, dt), y, stream);
        EXPECT_LT(rel_err(download(y), host_values(ref)), dt == DType::F32 ? 1e-5 : 1e-4);
      }
}

TEST_F(CudaOpsTest, LinearRejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  Tensor x = gpu->alloc(DType::BF16, {4, 8}), w = gpu->alloc(DType::BF16, {16, 8}), y = gpu->alloc(DType::F32, {4, 16});
  Tensor wrong = gpu->alloc(DType::BF16, {16, 9});
  Tensor hostw = cpu->alloc(DType::BF16, {16, 8});
  EXPECT_THROW(gpu->linear(x, wrong, TensorView{}, y), rt::Error);
  EXPECT_THROW(gpu->linear(x, hostw, TensorView{}, y), rt::Error);
  EXPECT_THROW(gpu->linear(x, w, TensorView{}, x), rt::Error);
}

// ---- attention (through CudaOps; the kernels have their own tests) ------------------------------

TEST_F(CudaOpsTest, AttentionThroughOps) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 129, Hq = 14, Hkv = 2, D = 64;
  Host hq = randn({T, Hq, D}, 21), hk = randn({T, Hkv, D}, 22), hv = randn({T, Hkv, D}, 23);
  rt::AttentionSpec spec;
  Tensor ref = alloc(DType::F32, {T, Hq, D}, *cpu);
  cpu->attention(cpu_tensor(hq, DType::BF16), cpu_tensor(hk, DType::BF16), cpu_tensor(hv, DType::BF16), ref, spec);
  Tensor o = poisoned(DType::BF16, {T, Hq, D});
  try {
    gpu->attention(upload(hq, DType::BF16), upload(hk, DType::BF16), upload(hv, DType::BF16), o, spec);
  } catch (const rt::Error& e) {
    if (std::string(e.what()).find("not built") != std::string::npos) GTEST_SKIP() << e.what();
    throw;
  }
  EXPECT_LT(rel_err(download(o), host_values(ref)), 1e-2);
}

// ---- two branches on two streams (Ops::concurrently) -------------------------------------------

// What L2A runs concurrently (a window attention beside routed-style work: a causal attention, a
// GEMM, tensors made inside the branch that outlive it), bit for bit against the same ops on one
// stream; the work after the call reads both branches' outputs at once, so a missing join shows
// as a wrong or NaN value. Then a nested call, a branch that throws (the error passes on, the
// streams join, later work is right), and a CUDA graph capture of the whole thing.
TEST_F(CudaOpsTest, ConcurrentBranchesMatchOneStream) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 3000, Hq = 14, Hkv = 2, D = 64, hidden = 896;
  Tensor q = upload(randn({T, Hq, D}, 31), DType::BF16), k = upload(randn({T, Hkv, D}, 32), DType::BF16);
  Tensor v = upload(randn({T, Hkv, D}, 33), DType::BF16), x = upload(randn({T, hidden}, 34), DType::BF16);
  Tensor w = upload(randn({hidden, hidden}, 35, 0.03f), DType::BF16);
  rt::AttentionSpec window, causal;
  window.window = 512;
  auto first = [&](Tensor& o1) { gpu->attention(q, k, v, o1, window); };
  auto second = [&](Tensor& o2, Tensor& y) {
    Tensor tmp = gpu->alloc(DType::BF16, {T, Hq, D});  // dies inside the branch
    gpu->attention(q, k, v, tmp, causal);
    gpu->copy(tmp, o2);
    if (!y.view.data) y = gpu->alloc(DType::BF16, {T, hidden});  // outlives it (made outside a capture)
    gpu->linear(x, w, TensorView{}, y);
  };
  auto after = [&](const Tensor& o1, const Tensor& o2, const Tensor& y) {
    Tensor sum = gpu->alloc(DType::F32, {T, Hq, D});
    gpu->add(o1, o2, sum);
    std::vector<float> out = download(sum), ys = download(y);
    out.insert(out.end(), ys.begin(), ys.end());
    return out;
  };
  Tensor o1 = poisoned(DType::BF16, {T, Hq, D}), o2 = poisoned(DType::BF16, {T, Hq, D}), y;
  first(o1);
  second(o2, y);
  const std::vector<float> one_stream = after(o1, o2, y);
  for (float f : one_stream) ASSERT_TRUE(std::isfinite(f));

  for (int nested = 0; nested < 2; ++nested) {
    SCOPED_TRACE(nested ? "nested" : "two streams");
    Tensor c1 = poisoned(DType::BF16, {T, Hq, D}), c2 = poisoned(DType::BF16, {T, Hq, D}), cy;
    if (nested)
      gpu->concurrently([&] { first(c1); }, [&] { gpu->concurrently([&] { second(c2, cy); }, [] {}); });
    else
      gpu->concurrently([&] { first(c1); }, [&] { second(c2, cy); });
    EXPECT_EQ(after(c1, c2, cy), one_stream);
  }

  Tensor e1 = poisoned(DType::BF16, {T, Hq, D}), e2 = poisoned(DType::BF16, {T, Hq, D}), ey;
  EXPECT_THROW(gpu->concurrently([&] { first(e1); },
                                 [&] {
                                   second(e2, ey);
                                   rt::fail("stop");
                                 }),
               rt::Error);
  EXPECT_EQ(after(e1, e2, ey), one_stream);

  Tensor g1 = poisoned(DType::BF16, {T, Hq, D}), g2 = poisoned(DType::BF16, {T, Hq, D});
  Tensor gy = poisoned(DType::BF16, {T, hidden});
  std::unique_ptr<rt::Ops::CapturedWork> graph =
      gpu->capture([&] { gpu->concurrently([&] { first(g1); }, [&] { second(g2, gy); }); });
  ASSERT_NE(graph, nullptr);
  graph->replay();
  EXPECT_EQ(after(g1, g2, gy), one_stream);
}

// The second branch really runs beside the first: it finishes while the first's long run of
// kernels is still going, even when it allocates the size of a block the first has just freed (the
// allocator must not make it wait for that free).
TEST_F(CudaOpsTest, ConcurrentBranchesOverlap) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("RT_CUDA_CONCURRENT");
  if (env != nullptr && std::string(env) == "0") GTEST_SKIP() << "RT_CUDA_CONCURRENT=0: one stream";
  const int64_t n = int64_t{1} << 26;  // 256 MiB of f32: a fill is ~0.1 ms
  cudaEvent_t first_done = nullptr, second_done = nullptr;
  ASSERT_EQ(cudaEventCreate(&first_done), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&second_done), cudaSuccess);
  auto& cuda = static_cast<rt::CudaOps&>(*gpu);
  gpu->concurrently(
      [&] {
        Tensor t = gpu->alloc(DType::F32, {n});
        for (int i = 0; i < 40; ++i) gpu->fill(t, static_cast<float>(i));
        ASSERT_EQ(cudaEventRecord(first_done, cuda.stream()), cudaSuccess);
      },  // t is freed here, on the main stream, behind the fills
      [&] {
        Tensor t = gpu->alloc(DType::F32, {n});
        gpu->fill(t, 1.f);
        ASSERT_EQ(cudaEventRecord(second_done, cuda.stream()), cudaSuccess);
      });
  gpu->synchronize();
  float ms = 0.f;  // from the second branch's end to the first's
  ASSERT_EQ(cudaEventElapsedTime(&ms, second_done, first_done), cudaSuccess);
  EXPECT_GT(ms, 0.5f) << "the second branch ended " << -ms << " ms after the first: the branches ran in turn";
  cudaEventDestroy(first_done);
  cudaEventDestroy(second_done);
}

// ---- decode at a device-held position (what a captured decode step replays) ------------------

TEST_F(CudaOpsTest, QkvRopeSplitAtWritesTheCacheRowOfTheDevicePosition) {
  SKIP_WITHOUT_GPU();
  const int64_t hq = 14, hkv = 2, d = 64, n = (hq + 2 * hkv) * d;
  uint64_t seed = 900;
  for (int64_t ring : {int64_t{0}, int64_t{7}})
    for (int64_t p : {0, 6, 7, 23, 49}) {
      SCOPED_TRACE("ring " + std::to_string(ring) + " position " + std::to_string(p));
      const int64_t cap = ring ? ring : 50, row = ring ? p % ring : p;
      Tensor qkv = upload(randn({1, n}, ++seed), DType::BF16);
      Tensor pos = gpu->alloc(DType::I32, {1});
      int32_t p32 = static_cast<int32_t>(p);
      gpu->copy(TensorView::contiguous(&p32, DType::I32, Device::CPU, {1}), pos);
      Tensor q = poisoned(DType::BF16, {1, hq, d}), kc = poisoned(DType::BF16, {cap, hkv, d}),
             vc = poisoned(DType::BF16, {cap, hkv, d});
      gpu->qkv_rope_split_at(qkv, pos, 1e6, q, kc, vc, ring);
      Tensor q2 = poisoned(DType::BF16, {1, hq, d}), k2 = poisoned(DType::BF16, {1, hkv, d}),
             v2 = poisoned(DType::BF16, {1, hkv, d});
      gpu->qkv_rope_split(qkv, p, 1e6, q2, k2, v2);
      EXPECT_EQ(download(q), download(q2)) << "q: same bits as the host-position op";
      EXPECT_EQ(download(kc.view.rows(row, row + 1)), download(k2)) << "k in row " << row;
      EXPECT_EQ(download(vc.view.rows(row, row + 1)), download(v2)) << "v in row " << row;
      const std::vector<float> all_k = download(kc), all_v = download(vc);
      size_t written = 0;
      for (size_t i = 0; i < all_k.size(); ++i) written += !std::isnan(all_k[i]) + !std::isnan(all_v[i]);
      EXPECT_EQ(written, static_cast<size_t>(2 * hkv * d)) << "only the position's row is written";
    }
}

TEST_F(CudaOpsTest, DecodeAttentionAtMatchesTheCpuOverTheVisibleKeys) {
  SKIP_WITHOUT_GPU();
  struct Heads {
    int64_t hq, hkv, d;
  };
  struct Layout {
    int64_t cap, ring, window;
    std::vector<int64_t> positions;
  };
  const Layout layouts[] = {
      {4099, 0, 0, {0, 1, 127, 128, 2500, 4098}},  // full cache, causal
      {4099, 0, 5, {0, 4, 5, 4098}},               // full cache, sliding window
      {4099, 0, 2048, {2047, 2048, 4098}},
      {1, 1, 1, {0, 1, 9}},                        // rings of exactly the window
      {7, 7, 7, {0, 6, 7, 36}},
      {2048, 2048, 2048, {100, 2047, 2048, 10000}},
  };
  uint64_t seed = 950;
  for (Heads h : {Heads{14, 2, 64}, Heads{12, 2, 128}})
    for (const Layout& l : layouts)
      for (int64_t p : l.positions) {
        SCOPED_TRACE("Hq " + std::to_string(h.hq) + " D " + std::to_string(h.d) + " cap " + std::to_string(l.cap) +
                     " ring " + std::to_string(l.ring) + " window " + std::to_string(l.window) + " position " +
                     std::to_string(p));
        const int64_t filled = l.ring ? std::min(p + 1, l.ring) : p + 1;
        Host hk = randn({l.cap, h.hkv, h.d}, ++seed), hv = randn({l.cap, h.hkv, h.d}, ++seed);
        for (int64_t i = filled * h.hkv * h.d; i < hk.numel(); ++i) hk.v[i] = hv.v[i] = kNaN;
        Host hq = randn({1, h.hq, h.d}, ++seed);
        rt::AttentionSpec spec;
        spec.window = l.window;
        Tensor pos_cpu = cpu->alloc(DType::I32, {1});
        *pos_cpu.ptr<int32_t>() = static_cast<int32_t>(p);
        Tensor ref = alloc(DType::F32, {1, h.hq, h.d}, *cpu);
        cpu->decode_attention_at(cpu_tensor(hq, DType::BF16), cpu_tensor(hk, DType::BF16),
                                 cpu_tensor(hv, DType::BF16), l.ring, pos_cpu, spec, ref);
        Tensor pos = gpu->alloc(DType::I32, {1});
        gpu->copy(pos_cpu, pos);
        Tensor o = poisoned(DType::BF16, {1, h.hq, h.d});
        gpu->decode_attention_at(upload(hq, DType::BF16), upload(hk, DType::BF16), upload(hv, DType::BF16), l.ring,
                                 pos, spec, o);
        const std::vector<float> got = download(o);
        for (float x : got) ASSERT_TRUE(std::isfinite(x)) << "non-finite output (unwritten, or a hidden row read)";
        EXPECT_LT(rel_err(got, host_values(ref)), 1e-2);
      }
}

// A routed decode step's global attention, gated on the device: gate 0 writes zeros without
// reading a key (the cache is all NaN there: a loaded key would show), any other gate is the
// ungated kernel bit for bit; replayed from a graph with the gate flipped between replays.
TEST_F(CudaOpsTest, GatedDecodeSkipsEveryKeyWhenTheGateIsZero) {
  SKIP_WITHOUT_GPU();
  for (const auto& [hq, hkv, d] : std::vector<std::array<int64_t, 3>>{{14, 2, 64}, {12, 2, 128}, {4, 2, 16}}) {
    SCOPED_TRACE("Hq " + std::to_string(hq) + " D " + std::to_string(d));
    const int64_t cap = 1000;
    int32_t p = 777;
    Host hk = randn({cap, hkv, d}, 1200 + d), hv = randn({cap, hkv, d}, 1300 + d), hq_ = randn({1, hq, d}, 1400 + d);
    Tensor q = upload(hq_, DType::BF16), kc = upload(hk, DType::BF16), vc = upload(hv, DType::BF16);
    for (int64_t i = 0; i < hk.numel(); ++i) hk.v[i] = kNaN;
    Tensor kc_nan = upload(hk, DType::BF16), vc_nan = upload(hk, DType::BF16);
    Tensor pos = gpu->alloc(DType::I32, {1}), gate = gpu->alloc(DType::F32, {1});
    gpu->copy(TensorView::contiguous(&p, DType::I32, Device::CPU, {1}), pos);
    auto set_gate = [&](float g) { gpu->copy(TensorView::contiguous(&g, DType::F32, Device::CPU, {1}), gate); };
    rt::AttentionSpec spec;
    Tensor ungated = poisoned(DType::BF16, {1, hq, d}), o = poisoned(DType::BF16, {1, hq, d});
    gpu->decode_attention_at(q, kc, vc, 0, pos, spec, ungated);
    set_gate(1.f);
    gpu->decode_attention_gated_at(q, kc, vc, 0, pos, gate, spec, o);
    EXPECT_EQ(download(o), download(ungated));
    set_gate(0.f);
    gpu->fill(o, kNaN);
    gpu->decode_attention_gated_at(q, kc_nan, vc_nan, 0, pos, gate, spec, o);
    for (float x : download(o)) ASSERT_EQ(x, 0.f) << "gate 0 must write zeros and read no key";
    // Replayed: one graph, the gate decides at replay time.
    std::unique_ptr<rt::Ops::CapturedWork> graph =
        gpu->capture([&] { gpu->decode_attention_gated_at(q, kc, vc, 0, pos, gate, spec, o); });
    ASSERT_NE(graph, nullptr);
    for (float g : {0.f, 1.f, 0.f, 0.5f}) {
      set_gate(g);
      gpu->fill(o, kNaN);
      graph->replay();
      const std::vector<float> got = download(o);
      if (g == 0.f) {
        for (float x : got) ASSERT_EQ(x, 0.f) << "replayed with gate 0";
      } else {
        EXPECT_EQ(got, download(ungated)) << "replayed with gate " << g;
      }
    }
  }
}

// fixed_rate's random draw at a device-held position: the host draw, decision for decision.
TEST_F(CudaOpsTest, PositionDrawAtIsTheHostDraw) {
  SKIP_WITHOUT_GPU();
  Tensor pos = gpu->alloc(DType::I32, {1}), out = gpu->alloc(DType::F32, {1});
  for (uint64_t key : {0ull, 0x9e3779b97f4a7c15ull})
    for (double below : {0.2, 0.8})
      for (int32_t t : {0, 1, 2, 3, 63, 64, 1000, 65535, 131071, 2147483647}) {
        gpu->copy(TensorView::contiguous(&t, DType::I32, Device::CPU, {1}), pos);
        gpu->position_draw_at(pos, key, below, out);
        EXPECT_EQ(download(out)[0], rt::position_draw(key, t, below) ? 1.f : 0.f) << key << " " << below << " " << t;
      }
}

// fixed_rate's random draws for a whole sequence on the device: the host draw at every position,
// ragged lengths from a nonzero start, over a poisoned output.
TEST_F(CudaOpsTest, PositionDrawRowsIsTheHostDraw) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {1, 255, 257, 5003})
    for (int64_t pos0 : {0, 17, 131000})
      for (double below : {0.0, 0.2, 1.0}) {
        Tensor out = upload(Host{{n}, std::vector<float>(static_cast<size_t>(n), std::nanf(""))}, DType::F32);
        const uint64_t key = 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(n);
        gpu->position_draw_rows(pos0, key, below, out);
        const std::vector<float> got = download(out);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(got[static_cast<size_t>(i)], rt::position_draw(key, pos0 + i, below) ? 1.f : 0.f)
              << "n " << n << " pos0 " << pos0 << " below " << below << " row " << i;
      }
  Tensor wrong = gpu->alloc(DType::BF16, {8});
  EXPECT_THROW(gpu->position_draw_rows(0, 1, 0.5, wrong), std::exception);
}

// A captured step replays with whatever position is in device memory at replay time, bit for bit
// what the same ops give run directly; temporaries allocated inside belong to the graph.
TEST_F(CudaOpsTest, CapturedDecodeOpsReplayAtNewPositions) {
  SKIP_WITHOUT_GPU();
  const int64_t hq = 14, hkv = 2, d = 64, n = (hq + 2 * hkv) * d, cap = 300;
  Tensor qkv = upload(randn({1, n}, 990), DType::BF16);
  Tensor pos = gpu->alloc(DType::I32, {1});
  auto set_pos = [&](int32_t p) { gpu->copy(TensorView::contiguous(&p, DType::I32, Device::CPU, {1}), pos); };
  Tensor kc = upload(randn({cap, hkv, d}, 991), DType::BF16), vc = upload(randn({cap, hkv, d}, 992), DType::BF16);
  Tensor out = poisoned(DType::BF16, {1, hq, d});
  rt::AttentionSpec spec;
  auto step = [&] {
    Tensor q = gpu->alloc(DType::BF16, {1, hq, d});  // a temporary: graph-owned when captured
    gpu->qkv_rope_split_at(qkv, pos, 1e6, q, kc, vc, 0);
    gpu->decode_attention_at(q, kc, vc, 0, pos, spec, out);
  };
  set_pos(0);
  std::unique_ptr<rt::Ops::CapturedWork> graph = gpu->capture(step);
  ASSERT_NE(graph, nullptr);
  for (int32_t p : {5, 77, 299}) {
    set_pos(p);
    graph->replay();
    const std::vector<float> replayed = download(out);
    gpu->fill(out, kNaN);
    step();
    EXPECT_EQ(download(out), replayed) << "position " << p;
  }
  // Work that throws mid-capture: the error passes on and the stream works afterwards.
  EXPECT_THROW(gpu->capture([&] {
    step();
    rt::fail("stop");
  }),
               rt::Error);
  set_pos(3);
  step();
  for (float x : download(out)) ASSERT_TRUE(std::isfinite(x));
}

// ---- argmax ------------------------------------------------------------------------------------

TEST_F(CudaOpsTest, ArgmaxLastRow) {
  SKIP_WITHOUT_GPU();
  const int64_t V = 151936;
  for (int64_t rows : {int64_t{1}, int64_t{3}}) {
    Host h = randn({rows, V}, 30 + static_cast<uint64_t>(rows), 4.f);
    const float* last = h.v.data() + (rows - 1) * V;
    const int32_t want = static_cast<int32_t>(std::max_element(last, last + V) - last);
    Tensor d = upload(h, DType::F32);
    EXPECT_EQ(rt::argmax_last_row(d, stream), want);
    // A tie: the first index wins (as std::max_element).
    h.v[static_cast<size_t>((rows - 1) * V + 17)] = 100.f;
    h.v[static_cast<size_t>((rows - 1) * V + V - 5)] = 100.f;
    h.v[static_cast<size_t>((rows - 1) * V + 3)] = kNaN;  // skipped
    d = upload(h, DType::F32);
    EXPECT_EQ(rt::argmax_last_row(d, stream), 17);
  }
  for (int64_t V2 : {int64_t{1}, int64_t{7}, int64_t{1025}}) {
    Host h = randn({V2}, 40 + static_cast<uint64_t>(V2));
    const int32_t want = static_cast<int32_t>(std::max_element(h.v.begin(), h.v.end()) - h.v.begin());
    EXPECT_EQ(rt::argmax_last_row(upload(h, DType::F32), stream), want);
  }
}

// ---- memory ------------------------------------------------------------------------------------

TEST_F(CudaOpsTest, OutOfMemoryIsAClearError) {
  SKIP_WITHOUT_GPU();
  const int64_t pib = int64_t{1} << 50;
  try {
    Tensor t = gpu->alloc(DType::U8, {pib});
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const rt::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("1125899906842624 bytes"), std::string::npos) << m;
    EXPECT_NE(m.find("[1125899906842624]"), std::string::npos) << m;
    EXPECT_NE(m.find("free of"), std::string::npos) << m;
  }
  try {
    Tensor t = gpu->alloc(DType::BF16, {int64_t{1} << 25, int64_t{1} << 24});
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const rt::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("bf16 tensor of shape [33554432, 16777216]"), std::string::npos) << m;
    EXPECT_NE(m.find("1125899906842624 bytes"), std::string::npos) << m;
  }
  // The device is still usable afterwards.
  Host h = randn({7, 333}, 50);
  EXPECT_EQ(download(upload(h, DType::F32)), h.v);
}

TEST_F(CudaOpsTest, MemoryStatsTrackTensors) {
  SKIP_WITHOUT_GPU();
  gpu->synchronize();
  gpu->reset_peak_memory();
  const size_t before = gpu->memory_stats().in_use;
  {
    Tensor t = gpu->alloc(DType::F32, {1024, 1024});
    EXPECT_GE(gpu->memory_stats().in_use, before + (size_t{4} << 20));
  }
  gpu->synchronize();  // frees are stream-ordered
  const rt::Ops::MemoryStats s = gpu->memory_stats();
  EXPECT_LE(s.in_use, before);
  EXPECT_GE(s.peak, before + (size_t{4} << 20));
}

TEST_F(CudaOpsTest, ActivationDtypeAndDevice) {
  SKIP_WITHOUT_GPU();
  EXPECT_EQ(gpu->activation_dtype(), DType::BF16);
  EXPECT_EQ(gpu->device(), Device::CUDA);
  Tensor t = gpu->alloc(DType::BF16, {0, 896});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.view.device, Device::CUDA);
  EXPECT_NO_THROW(gpu->synchronize());
}

}  // namespace
