// One op-test harness for every compute backend (in the style of ggml's test-backend-ops): a
// registry of op cases, each with its shapes (ragged ones included), a tolerance and a FLOP count,
// run through rt::Ops on every available backend and compared with the CPU backend in f64:
//   cpu-f32   make_cpu_ops()                  against make_cpu_ops(F64) on the same inputs;
//   cuda      make_cuda_ops() (bf16 activations, f32 accumulators), when a GPU is present,
//             against the f64 reference on the same bf16-rounded inputs.
// Outputs are poisoned with NaN before each call and must come back finite.
//
// Modes:
//   default            correctness: one gtest per op family, each case a SCOPED_TRACE;
//   --perf             (or RT_OPS_PERF=1) a table of the median time per case and backend and the
//                      GFLOP/s its FLOP count gives (RT_OPS_REPEATS, default 5; --filter=SUBSTR);
//   --grad             (or RT_OPS_GRAD=1) the ops with a backward in rt::Ops against central
//                      finite differences in f64 on the CPU (the BackendOpsGrad tests; they skip
//                      otherwise).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu_test_util.h"
#include "rt/sdk/ops.h"
#include "test_util.h"
#ifdef RT_TEST_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace {

using rt::AttentionSpec;
using rt::Device;
using rt::DType;
using rt::Ops;
using rt::Tensor;
using rt::TensorView;
using Shape = std::vector<int64_t>;

bool g_perf = false, g_grad = false;
std::string g_filter;

bool env_on(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "x" : "") + std::to_string(s[i]);
  return r;
}

Tensor alloc(Ops& ops, DType dt, const Shape& s) {
  switch (s.size()) {
    case 1: return ops.alloc(dt, {s[0]});
    case 2: return ops.alloc(dt, {s[0], s[1]});
    case 3: return ops.alloc(dt, {s[0], s[1], s[2]});
    default: return ops.alloc(dt, {s[0], s[1], s[2], s[3]});
  }
}

// What a tensor of a case holds: an activation (the backend's activation dtype), an accumulator
// (residual stream, losses, weight gradients, optimizer state: accum dtype) or I32 indices.
enum class Kind { Act, Acc, I32 };

// One backend a case runs on.
struct Backend {
  std::string name;
  Ops* ops;
  DType act, acc;
  // The dtype inputs are rounded through before both this backend and its reference see them.
  DType input_rounding() const { return act == DType::BF16 ? DType::BF16 : DType::F32; }
};

// The tensors of one run of a case on one backend: inputs made from the case's seed (the same
// numbers on every backend, rounded through `rounding`), outputs poisoned before the call and read
// back as doubles after it.
class Ctx {
 public:
  Ctx(Ops& ops, DType act, DType acc, DType rounding, uint64_t seed)
      : ops_(ops), act_(act), acc_(acc), rounding_(rounding), seed_(seed) {}
  Ops& ops() { return ops_; }
  DType dtype(Kind k) const { return k == Kind::Act ? act_ : k == Kind::Acc ? acc_ : DType::I32; }

  // A random normal input (sd, mean), the n-th input of the case drawing from seed + n.
  Tensor in(Kind k, const Shape& s, double sd = 1.0, double mean = 0.0) {
    std::vector<double> v = rt::test::randn_f64(static_cast<size_t>(numel(s)), seed_ + 1000 * (++inputs_), sd, mean);
    return upload(k, s, v);
  }
  // An input with given values (rounded like every input).
  Tensor upload(Kind k, const Shape& s, std::vector<double> v) {
    if (k != Kind::I32 && rounding_ != DType::F32) {
      std::vector<float> f(v.begin(), v.end());
      f = rt::test::rounded(std::move(f), rounding_);
      v.assign(f.begin(), f.end());
    }
    Tensor t = alloc(ops_, dtype(k), s);
    write(t, v);
    return t;
  }
  Tensor ints(const Shape& s, const std::vector<int32_t>& v) {
    return upload(Kind::I32, s, std::vector<double>(v.begin(), v.end()));
  }
  // An output: poisoned (NaN; -7777 for I32), read back after the call.
  Tensor out(const std::string& name, Kind k, const Shape& s) {
    Tensor t = alloc(ops_, dtype(k), s);
    if (k == Kind::I32) write(t, std::vector<double>(static_cast<size_t>(numel(s)), -7777.0));
    else if (numel(s) > 0) ops_.fill(t, std::numeric_limits<float>::quiet_NaN());
    outputs_.push_back({name, t});
    return t;
  }
  // An input that the op updates in place (+= outputs, rope, AdamW state): compared afterwards.
  Tensor inout(const std::string& name, Kind k, const Shape& s, double sd = 1.0, double mean = 0.0) {
    Tensor t = in(k, s, sd, mean);
    outputs_.push_back({name, t});
    return t;
  }
  // Runs the op under test: once, or in the timing mode (set_timing) warm-up and repeats, keeping
  // the median time. In-place ops drift over the repeats, which does not change their cost.
  template <class F>
  void call(F&& f) {
    if (repeats_ == 0) {
      f();
      return;
    }
    ms_ = rt::test::median_ms(f, [&] { ops_.synchronize(); }, repeats_, 1);
  }
  void set_timing(int repeats) { repeats_ = repeats; }
  double ms() const { return ms_; }
  // A host scalar result (argmax).
  void scalar(const std::string& name, double v) { scalars_[name] = v; }

  std::map<std::string, std::vector<double>> results() {
    ops_.synchronize();
    std::map<std::string, std::vector<double>> r;
    for (auto& [name, t] : outputs_) r[name] = read(t);
    for (auto& [name, v] : scalars_) r[name] = {v};
    return r;
  }

  void write(const Tensor& t, const std::vector<double>& v) {
    const int64_t n = t.view.numel();
    if (n == 0) return;
    if (ops_.device() == Device::CPU) {
      for (int64_t i = 0; i < n; ++i) cpu_test::store(t.view, i, v[static_cast<size_t>(i)]);
      return;
    }
    if (t.view.dtype == DType::I32) {
      std::vector<int32_t> h(v.begin(), v.end());
      ops_.copy(TensorView::contiguous(h.data(), DType::I32, Device::CPU, {n}), flat(t.view));
    } else {
      std::vector<float> h(v.begin(), v.end());
      ops_.copy(TensorView::contiguous(h.data(), DType::F32, Device::CPU, {n}), flat(t.view));
    }
  }
  std::vector<double> read(const Tensor& t) {
    const int64_t n = t.view.numel();
    std::vector<double> r(static_cast<size_t>(n));
    if (n == 0) return r;
    if (ops_.device() == Device::CPU) {
      for (int64_t i = 0; i < n; ++i) r[static_cast<size_t>(i)] = cpu_test::load(t.view, i);
      return r;
    }
    if (t.view.dtype == DType::I32) {
      std::vector<int32_t> h(static_cast<size_t>(n));
      ops_.copy(flat(t.view), TensorView::contiguous(h.data(), DType::I32, Device::CPU, {n}));
      r.assign(h.begin(), h.end());
    } else {
      std::vector<float> h(static_cast<size_t>(n));
      ops_.copy(flat(t.view), TensorView::contiguous(h.data(), DType::F32, Device::CPU, {n}));
      r.assign(h.begin(), h.end());
    }
    return r;
  }

 private:
  static TensorView flat(TensorView v) {
    const int64_t n = v.numel();
    return TensorView::contiguous(v.data, v.dtype, v.device, {n});
  }
  Ops& ops_;
  DType act_, acc_, rounding_;
  uint64_t seed_;
  int inputs_ = 0;
  int repeats_ = 0;
  double ms_ = -1;
  std::vector<std::pair<std::string, Tensor>> outputs_;
  std::map<std::string, double> scalars_;
};

struct OpCase {
  std::string family;  // the gtest that runs it
  std::string name;    // op and shapes
  double flops;        // per call, for --perf
  double tol;          // relative Frobenius error vs the f64 reference, f32 activations
  double tol_bf16;     // the same with bf16 activations
  std::function<void(Ctx&)> run;
  bool exact_ints = false;  // integer outputs: equal
  // An absolute floor on the RMS error (f32, bf16 activations): for outputs that are analytically
  // zero in some cases (attention dq, dk where every row sees one key: rounding noise on both
  // sides). The error must be below tol * |want|_F + atol * sqrt(n).
  double atol = 0, atol_bf16 = 0;
};

std::vector<OpCase>& registry() {
  static std::vector<OpCase> r;
  return r;
}
void add_case(OpCase c) { registry().push_back(std::move(c)); }

// ---- Attention helpers --------------------------------------------------------------------------
struct AttnShape {
  int64_t Tq, Tk, Hq, Hkv, D;
  bool causal;
  int64_t window, q_pos0, k_pos0;
  AttentionSpec spec() const {
    return ::rt::test::attention_spec(causal, window, q_pos0, k_pos0);
  }
  // Visible (query, key) pairs per head.
  double pairs() const {
    double n = 0;
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t j = 0; j < Tk; ++j) {
        const int64_t qp = q_pos0 + i, kp = k_pos0 + j;
        if (causal && kp > qp) continue;
        if (window > 0 && kp <= qp - window) continue;
        n += 1;
      }
    return n;
  }
  std::string str() const {
    return "Tq " + std::to_string(Tq) + " Tk " + std::to_string(Tk) + " Hq " + std::to_string(Hq) + " Hkv " +
           std::to_string(Hkv) + " D " + std::to_string(D) + (causal ? " causal" : " full") +
           (window ? " window " + std::to_string(window) : "") +
           (q_pos0 || k_pos0 ? " q_pos0 " + std::to_string(q_pos0) + " k_pos0 " + std::to_string(k_pos0) : "");
  }
};

// Ascending routed positions in [0, T): every third row plus the last, at most cap of them.
std::vector<int32_t> routed_positions(int64_t T, int64_t cap) {
  std::vector<int32_t> idx;
  for (int64_t t = 0; t < T && static_cast<int64_t>(idx.size()) < cap; ++t)
    if (t % 3 == 1 || t == T - 1) idx.push_back(static_cast<int32_t>(t));
  return idx;
}

// ---- The registry ---------------------------------------------------------------------------------
void register_cases() {
  // Matmuls: ragged sizes (not multiples of any tile), one token, a wide GEMM.
  const std::vector<std::array<int64_t, 3>> gemms = {{1, 64, 96}, {7, 333, 129}, {33, 200, 77}, {128, 896, 256}};
  for (const auto& [N, in, out] : gemms)
    for (bool bias : {false, true}) {
      add_case({"Linear", "linear N " + std::to_string(N) + " in " + std::to_string(in) + " out " +
                              std::to_string(out) + (bias ? " bias" : ""),
                2.0 * N * in * out + (bias ? N * out : 0), 1e-5, 1e-2, [=](Ctx& c) {
                  Tensor x = c.in(Kind::Act, {N, in}), w = c.in(Kind::Act, {out, in}, 0.1);
                  Tensor b = bias ? c.in(Kind::Act, {out}) : Tensor{};
                  Tensor y = c.out("y", Kind::Act, {N, out});
                  c.call([&] { c.ops().linear(x, w, bias ? b.view : TensorView{}, y); });
                }});
    }
  for (const auto& [N, in, out] : gemms)
    add_case({"Linear", "linear_accumulate N " + std::to_string(N) + " in " + std::to_string(in) + " out " +
                            std::to_string(out),
              2.0 * N * in * out + N * out, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.in(Kind::Act, {N, in}), w = c.in(Kind::Act, {out, in}, 0.1);
                Tensor y = c.inout("y", Kind::Acc, {N, out});
                c.call([&] { c.ops().linear_accumulate(x, w, y); });
              }});
  for (const auto& [N, in, out] : gemms)
    add_case({"LinearBackward", "linear_backward N " + std::to_string(N) + " in " + std::to_string(in) + " out " +
                                    std::to_string(out),
              4.0 * N * in * out + N * out, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.in(Kind::Act, {N, in}), w = c.in(Kind::Act, {out, in}, 0.1), dy = c.in(Kind::Act, {N, out});
                Tensor dx = c.out("dx", Kind::Act, {N, in});
                Tensor dw = c.inout("dw", Kind::Acc, {out, in}), db = c.inout("db", Kind::Acc, {out});
                c.call([&] { c.ops().linear_backward(x, w, dy, dx, dw, db, false); });
              }});

  // Row-wise ops over the hidden dimension.
  const std::vector<std::array<int64_t, 2>> rows = {{1, 64}, {7, 333}, {129, 896}};
  for (const auto& [N, d] : rows) {
    const std::string sh = " N " + std::to_string(N) + " d " + std::to_string(d);
    add_case({"RmsNorm", "rmsnorm" + sh, 4.0 * N * d, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, {N, d}, 2.0), w = c.in(Kind::Act, {d}, 0.2, 1.0);
                Tensor y = c.out("y", Kind::Act, {N, d});
                c.call([&] { c.ops().rmsnorm(x, w, 1e-6f, y); });
              }});
    add_case({"RmsNorm", "rmsnorm_keep_input" + sh, 4.0 * N * d, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, {N, d}, 2.0), w = c.in(Kind::Act, {d}, 0.2, 1.0);
                Tensor y = c.out("y", Kind::Act, {N, d}), x_copy = c.out("x_copy", Kind::Acc, {N, d});
                c.call([&] { c.ops().rmsnorm_keep_input(x, w, 1e-6f, y, x_copy); });
              }});
    add_case({"RmsNorm", "rmsnorm_backward" + sh, 10.0 * N * d, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, {N, d}, 2.0), w = c.in(Kind::Act, {d}, 0.2, 1.0), dy = c.in(Kind::Act, {N, d});
                Tensor dx = c.inout("dx", Kind::Acc, {N, d}), dw = c.inout("dw", Kind::Acc, {d});
                c.call([&] { c.ops().rmsnorm_backward(x, w, 1e-6f, dy, dx, dw); });
              }});
  }

  // A decode token's norm and routing decision in one op. The threshold sits 1% of sum |y_i w_i|
  // above or below the token's own z (computed here in f64 from the inputs), so a dot product that
  // drops or misweighs elements flips the decision while bf16 rounding (~0.01% of it) does not.
  struct RouteCase {
    int64_t d;
    double side;  // +1: z_min below z (routes), -1: above (does not)
    int32_t pos;
    int64_t first;
    bool steps;
  };
  for (const RouteCase& rc : std::vector<RouteCase>{{64, 1, 40, 0, true},
                                                    {333, -1, 40, 0, true},
                                                    {896, 1, 40, 41, true},
                                                    {896, 1, 41, 41, false},
                                                    {3584, 1, 7, 0, true}}) {
    const std::string name = "rmsnorm_route_at d " + std::to_string(rc.d) + (rc.side > 0 ? " routed" : " unrouted") +
                             " pos " + std::to_string(rc.pos) + " first " + std::to_string(rc.first) +
                             (rc.steps ? " steps" : "");
    add_case({"RmsNorm", name, 6.0 * rc.d, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, {1, rc.d}, 2.0), g = c.in(Kind::Act, {rc.d}, 0.2, 1.0),
                       w = c.in(Kind::Act, {1, rc.d}, 0.1), p = c.ints({1}, {rc.pos});
                const std::vector<double> xv = c.read(x), gv = c.read(g), wv = c.read(w);
                double ss = 0, z = 0, mag = 0;
                for (double v : xv) ss += v * v;
                const double inv = 1.0 / std::sqrt(ss / static_cast<double>(rc.d) + 1e-6);
                for (size_t i = 0; i < xv.size(); ++i) {
                  z += xv[i] * inv * gv[i] * wv[i];
                  mag += std::abs(xv[i] * inv * gv[i] * wv[i]);
                }
                const float z_min = static_cast<float>(z - rc.side * 0.01 * mag);
                Tensor y = c.out("y", Kind::Act, {1, rc.d}), dec = c.out("d", Kind::Acc, {1});
                Tensor steps = rc.steps ? c.inout("steps", Kind::Acc, {1}, 0.0, 3.0) : Tensor{};
                c.call([&] {
                  c.ops().rmsnorm_route_at(x, g, 1e-6f, w, z_min, p, rc.first, y, dec, steps.view);
                });
              }});
  }

  // Rotary embedding: head dims 64 and 128, a position offset.
  for (const auto& [T, H, D, pos0] : std::vector<std::array<int64_t, 4>>{{1, 2, 64, 0}, {37, 3, 64, 5}, {129, 2, 128, 1000}}) {
    const std::string sh = " T " + std::to_string(T) + " H " + std::to_string(H) + " D " + std::to_string(D) +
                           " pos0 " + std::to_string(pos0);
    add_case({"Rope", "rope" + sh, 4.0 * T * H * D, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.inout("x", Kind::Act, {T, H, D});
                c.call([&] { c.ops().rope(x, pos0, 1e6); });
              }});
    add_case({"Rope", "rope_backward" + sh, 4.0 * T * H * D, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor x = c.inout("dx", Kind::Act, {T, H, D});
                c.call([&] { c.ops().rope_backward(x, pos0, 1e6); });
              }});
  }
  // The fused QKV split with rotary embedding (Hq 7, Hkv 1: GQA).
  for (const auto& [T, pos0] : std::vector<std::array<int64_t, 2>>{{1, 9}, {45, 0}}) {
    const int64_t Hq = 7, Hkv = 1, D = 64;
    add_case({"Rope", "qkv_rope_split T " + std::to_string(T) + " Hq 7 Hkv 1 D 64 pos0 " + std::to_string(pos0),
              4.0 * T * (Hq + Hkv) * D, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor qkv = c.in(Kind::Act, {T, (Hq + 2 * Hkv) * D});
                Tensor q = c.out("q", Kind::Act, {T, Hq, D}), k = c.out("k", Kind::Act, {T, Hkv, D}),
                       v = c.out("v", Kind::Act, {T, Hkv, D});
                c.call([&] { c.ops().qkv_rope_split(qkv, pos0, 1e6, q, k, v); });
              }});
  }

  // Embedding forward and backward (repeated ids sum).
  for (const auto& [V, d, T] : std::vector<std::array<int64_t, 3>>{{10, 64, 1}, {1000, 333, 77}, {50, 896, 300}}) {
    const std::string sh = " V " + std::to_string(V) + " d " + std::to_string(d) + " T " + std::to_string(T);
    auto ids_of = [V, T](uint64_t seed) {
      std::mt19937_64 rng(seed);
      std::vector<int32_t> ids(static_cast<size_t>(T));
      for (auto& id : ids) id = static_cast<int32_t>(rng() % 3 == 0 ? rng() % 4 : rng() % static_cast<uint64_t>(V));
      return ids;
    };
    add_case({"Embedding", "embedding" + sh, 0, 1e-6, 1e-6, [=](Ctx& c) {
                Tensor table = c.in(Kind::Act, {V, d}), ids = c.ints({T}, ids_of(T));
                Tensor out = c.out("out", Kind::Act, {T, d});
                c.call([&] { c.ops().embedding(table, ids, out); });
              }});
    add_case({"Embedding", "embedding_backward" + sh, static_cast<double>(T * d), 1e-5, 1e-2, [=](Ctx& c) {
                Tensor ids = c.ints({T}, ids_of(T)), dout = c.in(Kind::Act, {T, d});
                Tensor dtable = c.inout("dtable", Kind::Acc, {V, d}, 0.5);
                c.call([&] { c.ops().embedding_backward(ids, dout, dtable); });
              }});
  }

  // Elementwise ops.
  for (const auto& s : std::vector<Shape>{{1}, {7, 333}, {3, 5, 129}, {257, 896}}) {
    const std::string sh = " " + shape_str(s);
    const double n = static_cast<double>(numel(s));
    add_case({"Elementwise", "add" + sh, n, 1e-6, 1e-2, [=](Ctx& c) {
                Tensor a = c.in(Kind::Act, s), b = c.in(Kind::Act, s), o = c.out("out", Kind::Act, s);
                c.call([&] { c.ops().add(a, b, o); });
              }});
    add_case({"Elementwise", "swiglu" + sh, 5 * n, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor g = c.in(Kind::Act, s, 3.0), u = c.in(Kind::Act, s), o = c.out("out", Kind::Act, s);
                c.call([&] { c.ops().swiglu(g, u, o); });
              }});
    add_case({"Elementwise", "swiglu_backward" + sh, 10 * n, 1e-5, 1e-2, [=](Ctx& c) {
                Tensor g = c.in(Kind::Act, s, 3.0), u = c.in(Kind::Act, s), d = c.in(Kind::Act, s);
                Tensor dg = c.out("dgate", Kind::Act, s), du = c.out("dup", Kind::Act, s);
                c.call([&] { c.ops().swiglu_backward(g, u, d, dg, du); });
              }});
    add_case({"Elementwise", "sigmoid" + sh, 4 * n, 1e-6, 1e-5, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, s, 3.0), y = c.out("y", Kind::Acc, s);
                c.call([&] { c.ops().sigmoid(x, 0.7f, y); });
              }});
    add_case({"Elementwise", "sigmoid_backward" + sh, 4 * n, 1e-6, 1e-5, [=](Ctx& c) {
                Tensor y = c.in(Kind::Acc, s, 0.2, 0.5), dy = c.in(Kind::Acc, s), dx = c.out("dx", Kind::Acc, s);
                c.call([&] { c.ops().sigmoid_backward(y, dy, 0.7f, dx); });
              }});
    add_case({"Elementwise", "step" + sh, n, 0, 0, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, s, 1.0, 0.5), y = c.out("y", Kind::Acc, s);
                c.call([&] { c.ops().step(x, 0.5f, y); });
              }});
    add_case({"Elementwise", "axpby" + sh, 3 * n, 1e-6, 1e-5, [=](Ctx& c) {
                Tensor x = c.in(Kind::Acc, s), y = c.in(Kind::Acc, s), o = c.out("out", Kind::Acc, s);
                c.call([&] { c.ops().axpby(0.3f, x, -1.7f, y, o); });
              }});
    for (int power : {1, 2})
      add_case({"Elementwise", "reduce_sum power " + std::to_string(power) + sh, power * n, 1e-5, 1e-5, [=](Ctx& c) {
                  Tensor x = c.in(Kind::Acc, s), o = c.inout("out", Kind::Acc, {1});
                  c.call([&] { c.ops().reduce_sum(x, power, o); });
                }});
    if (s.size() == 2) {
      const int64_t R = s[0], C = s[1];
      add_case({"Elementwise", "row_scale" + sh, n, 1e-6, 1e-5, [=](Ctx& c) {
                  Tensor x = c.in(Kind::Acc, s), sc = c.in(Kind::Acc, {R}), o = c.out("out", Kind::Acc, s);
                  c.call([&] { c.ops().row_scale(x, sc, o); });
                }});
      for (bool acc : {false, true})
        add_case({"Elementwise", std::string("row_dot") + (acc ? " accumulate" : "") + sh, 2 * n, 1e-5, 1e-5,
                  [=](Ctx& c) {
                    Tensor a = c.in(Kind::Acc, {R, C}), b = c.in(Kind::Acc, {R, C});
                    Tensor o = acc ? c.inout("out", Kind::Acc, {R}) : c.out("out", Kind::Acc, {R});
                    c.call([&] { c.ops().row_dot(a, b, o, acc); });
                  }});
      add_case({"Elementwise", "argmax" + sh, n, 0, 0, [=](Ctx& c) {
                  // f32 logits on every backend (argmax reads f32 rows).
                  Tensor x = alloc(c.ops(), c.dtype(Kind::Acc), s);
                  c.write(x, rt::test::randn_f64(static_cast<size_t>(numel(s)), 4242 + R));
                  int64_t i = -1;
                  c.call([&] { i = c.ops().argmax(x); });
                  c.scalar("index", static_cast<double>(i));
                }});
    }
  }

  // Attention: causal, sliding window, GQA groups (7, 2, 1), non-causal, a prefill chunk after a
  // cached prefix (Tk > Tq, q_pos0 > 0), a single decode row, head dims 64 and 128.
  const std::vector<AttnShape> attn = {
      {1, 1, 2, 1, 64, true, 0, 0, 0},       {37, 37, 7, 1, 64, true, 0, 0, 0},
      {64, 64, 4, 2, 128, true, 16, 0, 0},   {45, 45, 3, 3, 64, false, 0, 0, 0},
      {17, 50, 6, 2, 64, true, 0, 33, 0},    {1, 100, 14, 2, 64, true, 0, 99, 0},
      {129, 129, 2, 1, 64, true, 31, 0, 0},  {40, 40, 4, 4, 128, true, 1, 0, 0}};
  for (const AttnShape& a : attn) {
    const double fwd = 4.0 * a.pairs() * a.Hq * a.D;
    add_case({"Attention", "attention " + a.str(), fwd, 1e-5, 2e-2, [=](Ctx& c) {
                Tensor q = c.in(Kind::Act, {a.Tq, a.Hq, a.D}), k = c.in(Kind::Act, {a.Tk, a.Hkv, a.D}),
                       v = c.in(Kind::Act, {a.Tk, a.Hkv, a.D});
                Tensor o = c.out("o", Kind::Act, {a.Tq, a.Hq, a.D});
                c.call([&] { c.ops().attention(q, k, v, o, a.spec()); });
              }});
    add_case({"Attention", "attention_forward_lse " + a.str(), fwd, 1e-5, 2e-2, [=](Ctx& c) {
                Tensor q = c.in(Kind::Act, {a.Tq, a.Hq, a.D}), k = c.in(Kind::Act, {a.Tk, a.Hkv, a.D}),
                       v = c.in(Kind::Act, {a.Tk, a.Hkv, a.D});
                Tensor o = c.out("o", Kind::Act, {a.Tq, a.Hq, a.D}), lse = c.out("lse", Kind::Acc, {a.Hq, a.Tq});
                c.call([&] { c.ops().attention_forward_lse(q, k, v, o, lse, a.spec()); });
              }});
    // Backward: o and lse from this backend's own forward, as training runs it.
    OpCase bwd{"AttentionBackward", "attention_backward " + a.str(), 2.5 * fwd, 1e-5, 3e-2, [=](Ctx& c) {
                Tensor q = c.in(Kind::Act, {a.Tq, a.Hq, a.D}), k = c.in(Kind::Act, {a.Tk, a.Hkv, a.D}),
                       v = c.in(Kind::Act, {a.Tk, a.Hkv, a.D}), dout = c.in(Kind::Act, {a.Tq, a.Hq, a.D});
                Tensor o = alloc(c.ops(), c.dtype(Kind::Act), {a.Tq, a.Hq, a.D});
                Tensor lse = alloc(c.ops(), c.dtype(Kind::Acc), {a.Hq, a.Tq});
                c.ops().attention_forward_lse(q, k, v, o, lse, a.spec());
                Tensor dq = c.out("dq", Kind::Act, {a.Tq, a.Hq, a.D}), dk = c.out("dk", Kind::Act, {a.Tk, a.Hkv, a.D}),
                       dv = c.out("dv", Kind::Act, {a.Tk, a.Hkv, a.D});
                c.call([&] { c.ops().attention_backward(q, k, v, o, lse, dout, dq, dk, dv, a.spec()); });
              }};
    bwd.atol = 1e-5;
    bwd.atol_bf16 = 1e-3;
    add_case(std::move(bwd));
  }
  // Decode against a KV cache at a position held in device memory.
  for (int64_t pos : {0, 40}) {
    const int64_t cap = 64, Hq = 7, Hkv = 1, D = 64;
    add_case({"Attention", "decode_attention_at pos " + std::to_string(pos) + " cache 64 Hq 7 Hkv 1 D 64",
              4.0 * (pos + 1) * Hq * D, 1e-5, 2e-2, [=](Ctx& c) {
                Tensor q = c.in(Kind::Act, {1, Hq, D}), kc = c.in(Kind::Act, {cap, Hkv, D}),
                       vc = c.in(Kind::Act, {cap, Hkv, D}), p = c.ints({1}, {static_cast<int32_t>(pos)});
                Tensor o = c.out("o", Kind::Act, {1, Hq, D});
                c.call([&] { c.ops().decode_attention_at(q, kc, vc, 0, p, AttentionSpec{}, o); });
              }});
  }
  // The same, gated by a routing decision on the device: 0 reads no key and writes zeros.
  for (double gate : {0.0, 1.0}) {
    const int64_t cap = 64, Hq = 4, Hkv = 2, D = 64, pos = 40;
    add_case({"Attention", "decode_attention_gated_at gate " + std::to_string(static_cast<int>(gate)) +
                               " pos 40 cache 64 Hq 4 Hkv 2 D 64",
              4.0 * (pos + 1) * Hq * D, 1e-5, 2e-2, [=](Ctx& c) {
                Tensor q = c.in(Kind::Act, {1, Hq, D}), kc = c.in(Kind::Act, {cap, Hkv, D}),
                       vc = c.in(Kind::Act, {cap, Hkv, D}), p = c.ints({1}, {static_cast<int32_t>(pos)});
                Tensor g = c.upload(Kind::Acc, {1}, {gate});
                Tensor o = c.out("o", Kind::Act, {1, Hq, D});
                c.call([&] { c.ops().decode_attention_gated_at(q, kc, vc, 0, p, g, AttentionSpec{}, o); });
              }});
  }

  // The LM head fused with cross-entropy (ignored rows included).
  for (const auto& [N, hidden, V] : std::vector<std::array<int64_t, 3>>{{1, 64, 100}, {13, 96, 1000}, {64, 128, 3001}}) {
    add_case({"CrossEntropy", "lm_head_cross_entropy N " + std::to_string(N) + " hidden " + std::to_string(hidden) +
                                  " V " + std::to_string(V),
              6.0 * N * hidden * V, 1e-5, 2e-2, [=](Ctx& c) {
                std::vector<int32_t> t(static_cast<size_t>(N));
                for (int64_t i = 0; i < N; ++i) t[static_cast<size_t>(i)] = i % 5 == 4 ? -100 : static_cast<int32_t>((i * 7919) % V);
                Tensor h = c.in(Kind::Act, {N, hidden}), w = c.in(Kind::Act, {V, hidden}, 0.1), tg = c.ints({N}, t);
                Tensor losses = c.out("losses", Kind::Acc, {N}), dh = c.out("dh", Kind::Act, {N, hidden});
                Tensor dw = c.inout("dw", Kind::Acc, {V, hidden}, 0.05);
                c.call([&] { c.ops().lm_head_cross_entropy(h, w, tg, 1.f / static_cast<float>(N), losses, dh, dw); });
              }});
  }

  // One AdamW step (step 1 and a later step, with weight decay and a gradient scale).
  for (const auto& s : std::vector<Shape>{{1}, {33, 129}, {896, 64}})
    for (int64_t t : {1, 10}) {
      add_case({"AdamW", "adamw_step " + shape_str(s) + " t " + std::to_string(t), 15.0 * numel(s), 1e-5, 1e-2,
                [=](Ctx& c) {
                  Tensor master = c.inout("master", Kind::Acc, s), grad = c.in(Kind::Acc, s);
                  Tensor m = c.inout("m", Kind::Acc, s, 0.01), v = c.inout("v", Kind::Acc, s, 0.03);
                  std::vector<double> vv = c.read(v);  // v >= 0: squares of a normal draw
                  for (double& x : vv) x = x * x;
                  c.write(v, vv);
                  Tensor param = c.out("param", Kind::Act, s);
                  Ops::AdamW hp;
                  hp.lr = 1e-3f;
                  hp.weight_decay = 0.1f;
                  hp.grad_scale = 0.5f;
                  hp.step = t;
                  c.call([&] { c.ops().adamw_step(master, grad, m, v, param, hp); });
                }});
    }

  // Routing (L2A): compaction of router decisions, gather, scatter-add and rope of routed rows.
  for (const auto& [T, C] : std::vector<std::array<int64_t, 2>>{{1, 64}, {37, 96}, {300, 896}}) {
    const std::string sh = " T " + std::to_string(T) + " C " + std::to_string(C);
    const std::vector<int32_t> idx = routed_positions(T, T);
    const int64_t n = static_cast<int64_t>(idx.size()), cap = n + 2;  // two inactive rows past the count
    std::vector<int32_t> index = idx;
    index.resize(static_cast<size_t>(cap), 0);
    add_case({"Routing", "compact_rows" + sh, static_cast<double>(T), 0, 0, [=](Ctx& c) {
                std::vector<double> flags(static_cast<size_t>(T), 0.0);
                for (int32_t i : idx) flags[static_cast<size_t>(i)] = 1.0;
                Tensor f = c.upload(Kind::Acc, {T}, flags);
                Tensor ix = c.out("index", Kind::I32, {T}), cnt = c.out("count", Kind::I32, {1});
                c.call([&] { c.ops().compact_rows(f, ix, cnt); });
              }, true});
    add_case({"Routing", "gather_rows" + sh, 0, 0, 0, [=](Ctx& c) {
                Tensor x = c.in(Kind::Act, {T, C}), ix = c.ints({cap}, index), cnt = c.ints({1}, {static_cast<int32_t>(n)});
                Tensor o = c.out("out", Kind::Act, {cap, C});
                c.call([&] { c.ops().gather_rows(x, ix, cnt, o); });
              }});
    add_case({"Routing", "scatter_add_rows" + sh, static_cast<double>(n * C), 1e-6, 1e-2, [=](Ctx& c) {
                Tensor src = c.in(Kind::Act, {cap, C}), ix = c.ints({cap}, index),
                       cnt = c.ints({1}, {static_cast<int32_t>(n)});
                Tensor dst = c.inout("dst", Kind::Acc, {T, C});
                c.call([&] { c.ops().scatter_add_rows(src, ix, cnt, dst); });
              }});
    add_case({"Routing", "row_dot_rows" + sh, 2.0 * static_cast<double>(n * C), 1e-5, 1e-5, [=](Ctx& c) {
                Tensor a = c.in(Kind::Act, {cap, C}), b = c.in(Kind::Act, {cap, C}), ix = c.ints({cap}, index),
                       cnt = c.ints({1}, {static_cast<int32_t>(n)});
                Tensor out = c.inout("out", Kind::Acc, {T});
                c.call([&] { c.ops().row_dot_rows(a, b, ix, cnt, out); });
              }});
    for (bool bwd : {false, true}) {
      const int64_t H = 2, D = 64;
      add_case({"Routing", std::string(bwd ? "rope_rows backward" : "rope_rows") + " T " + std::to_string(T) +
                               " H 2 D 64 pos0 3",
                4.0 * n * H * D, 1e-5, 1e-2, [=](Ctx& c) {
                  Tensor x = c.inout("x", Kind::Act, {cap, H, D}), ix = c.ints({cap}, index),
                         cnt = c.ints({1}, {static_cast<int32_t>(n)});
                  c.call([&] { c.ops().rope_rows(x, ix, cnt, 3, 1e6, bwd); });
                }});
    }
  }
}

// ---- Backends and the correctness runner --------------------------------------------------------
struct Backends {
  std::unique_ptr<Ops> ref = rt::make_cpu_ops(DType::F64);
  std::unique_ptr<Ops> cpu = rt::make_cpu_ops();
  std::unique_ptr<Ops> gpu;
  std::vector<Backend> list;
  Backends() {
    list.push_back({"cpu-f32", cpu.get(), DType::F32, DType::F32});
#ifdef RT_TEST_HAVE_CUDA
    if (rt::cuda_device_available()) {
      gpu = rt::make_cuda_ops();
      list.push_back({"cuda", gpu.get(), gpu->activation_dtype(), gpu->accum_dtype()});
    }
#endif
  }
};
Backends& backends() {
  static Backends b;
  return b;
}

uint64_t case_seed(const OpCase& c) { return std::hash<std::string>{}(c.name) % 100000; }

std::map<std::string, std::vector<double>> run_case(const OpCase& oc, Ops& ops, DType act, DType acc, DType rounding) {
  Ctx c(ops, act, acc, rounding, case_seed(oc));
  oc.run(c);
  return c.results();
}

void check_case(const OpCase& oc, const Backend& b) {
  SCOPED_TRACE(oc.name + " on " + b.name);
  std::map<std::string, std::vector<double>> want, got;
  ASSERT_NO_THROW(want = run_case(oc, *backends().ref, DType::F64, DType::F64, b.input_rounding()));
  ASSERT_NO_THROW(got = run_case(oc, *b.ops, b.act, b.acc, b.input_rounding()));
  const double tol = b.act == DType::F32 ? oc.tol : oc.tol_bf16;
  for (const auto& [name, w] : want) {
    const std::vector<double>& g = got[name];
    ASSERT_EQ(g.size(), w.size()) << name;
    EXPECT_EQ(rt::test::count_nonfinite(w), 0u) << name << ": the f64 reference is not finite";
    EXPECT_EQ(rt::test::count_nonfinite(g), 0u) << name << ": non-finite values (unwritten or NaN)";
    if (oc.exact_ints || tol == 0) {
      for (size_t i = 0; i < w.size(); ++i)
        if (g[i] != w[i]) {
          ADD_FAILURE() << name << "[" << i << "] = " << g[i] << ", want " << w[i];
          break;
        }
    } else {
      double num = 0, den = 0;
      for (size_t i = 0; i < w.size(); ++i) {
        num += (g[i] - w[i]) * (g[i] - w[i]);
        den += w[i] * w[i];
      }
      const double floor = (b.act == DType::F32 ? oc.atol : oc.atol_bf16) * std::sqrt(static_cast<double>(w.size()));
      EXPECT_LE(std::sqrt(num), tol * std::sqrt(den) + floor)  // <=: an exact zero output is exact
          << name << ": relative Frobenius error " << rt::test::rel_err(g, w) << " (reference norm "
          << std::sqrt(den) << ", absolute floor " << floor << ")";
    }
  }
}

void check_family(const std::string& family) {
  int n = 0;
  for (const OpCase& oc : registry()) {
    if (oc.family != family) continue;
    ++n;
    for (const Backend& b : backends().list) check_case(oc, b);
  }
  EXPECT_GT(n, 0) << "no cases in family " << family;
}

TEST(BackendOps, Linear) { check_family("Linear"); }
TEST(BackendOps, LinearBackward) { check_family("LinearBackward"); }
TEST(BackendOps, RmsNorm) { check_family("RmsNorm"); }
TEST(BackendOps, Rope) { check_family("Rope"); }
TEST(BackendOps, Embedding) { check_family("Embedding"); }
TEST(BackendOps, Elementwise) { check_family("Elementwise"); }
TEST(BackendOps, Attention) { check_family("Attention"); }
TEST(BackendOps, AttentionBackward) { check_family("AttentionBackward"); }
TEST(BackendOps, CrossEntropy) { check_family("CrossEntropy"); }
TEST(BackendOps, AdamW) { check_family("AdamW"); }
TEST(BackendOps, Routing) { check_family("Routing"); }

// Every registered family has a test above.
TEST(BackendOps, EveryFamilyIsTested) {
  const std::vector<std::string> tested = {"Linear", "LinearBackward", "RmsNorm", "Rope", "Embedding", "Elementwise",
                                           "Attention", "AttentionBackward", "CrossEntropy", "AdamW", "Routing"};
  for (const OpCase& oc : registry())
    EXPECT_NE(std::find(tested.begin(), tested.end(), oc.family), tested.end()) << oc.family;
}

TEST(BackendOps, CudaBackendPresentOrSkipped) {
#ifdef RT_TEST_HAVE_CUDA
  if (!rt::cuda_device_available()) GTEST_SKIP() << "no CUDA device: the cases ran on cpu-f32 only";
  EXPECT_EQ(backends().list.size(), 2u);
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

// ---- Timing mode ----------------------------------------------------------------------------------
int run_perf() {
  int repeats = 5;
  if (const char* r = std::getenv("RT_OPS_REPEATS")) repeats = std::max(1, std::atoi(r));
  std::printf("%-72s %-8s %12s %10s\n", "case", "backend", "median ms", "GFLOP/s");
  for (const OpCase& oc : registry()) {
    if (!g_filter.empty() && oc.name.find(g_filter) == std::string::npos) continue;
    for (const Backend& b : backends().list) {
      Ctx c(*b.ops, b.act, b.acc, b.input_rounding(), case_seed(oc));
      c.set_timing(repeats);
      try {
        oc.run(c);
      } catch (const std::exception& e) {
        std::printf("%-72s %-8s failed: %s\n", oc.name.c_str(), b.name.c_str(), e.what());
        continue;
      }
      const double ms = c.ms();
      char gf[32] = "-";
      if (oc.flops > 0) std::snprintf(gf, sizeof gf, "%.2f", oc.flops / (ms * 1e-3) / 1e9);
      std::printf("%-72s %-8s %12.4f %10s\n", oc.name.c_str(), b.name.c_str(), ms, gf);
    }
  }
  std::printf("(median of %d calls after one warm-up call)\n", repeats);
  return 0;
}

// ---- Gradient mode: central finite differences in f64 on the CPU --------------------------------
// A backward op is checked through the scalar L = sum(R * forward(inputs)) for a fixed random R:
// the backward op given dout = R must return dL/dinput, which central differences of L measure.
struct GradCase {
  std::string name;
  std::vector<Shape> inputs;                // inputs[i], random f64 (sd 1 unless scaled)
  std::vector<double> sds;                  // per input
  Shape out;                                // the forward output
  // forward(ops, inputs, y)
  std::function<void(Ops&, std::vector<cpu_test::Buf>&, cpu_test::Buf&)> forward;
  // backward(ops, inputs, dout, grads): grads[i] zeroed, shaped like inputs[i]; an empty grad
  // shape means that input is not differentiated (e.g. ids).
  std::function<void(Ops&, std::vector<cpu_test::Buf>&, cpu_test::Buf&, std::vector<cpu_test::Buf>&)> backward;
  std::vector<bool> wrt;
  // R constant (0.37 everywhere) rather than random: for ops whose backward takes a scalar scale
  // in place of dout (lm_head_cross_entropy's grad_scale).
  bool constant_dout = false;
};

std::vector<GradCase> grad_cases() {
  using cpu_test::Buf;
  std::vector<GradCase> g;
  const int64_t N = 5, in = 7, out = 6;
  g.push_back({"linear (x, w, b)", {{N, in}, {out, in}, {out}}, {1, 0.3, 1}, {N, out},
               [](Ops& o, auto& x, Buf& y) { o.linear(x[0], x[1], x[2], y); },
               [](Ops& o, auto& x, Buf& dy, auto& gr) { o.linear_backward(x[0], x[1], dy, gr[0], gr[1], gr[2], false); },
               {true, true, true}});
  g.push_back({"rmsnorm (x, w)", {{N, 9}, {9}}, {2, 0.3}, {N, 9},
               [](Ops& o, auto& x, Buf& y) { o.rmsnorm(x[0], x[1], 1e-6f, y); },
               [](Ops& o, auto& x, Buf& dy, auto& gr) { o.rmsnorm_backward(x[0], x[1], 1e-6f, dy, gr[0], gr[1]); },
               {true, true}});
  g.push_back({"rope (x)", {{4, 2, 8}}, {1}, {4, 2, 8},
               [](Ops& o, auto& x, Buf& y) {
                 o.copy(x[0], y);
                 o.rope(y, 3, 1e4);
               },
               [](Ops& o, auto&, Buf& dy, auto& gr) {
                 o.copy(dy, gr[0]);
                 o.rope_backward(gr[0], 3, 1e4);
               },
               {true}});
  g.push_back({"swiglu (gate, up)", {{3, 11}, {3, 11}}, {2, 1}, {3, 11},
               [](Ops& o, auto& x, Buf& y) { o.swiglu(x[0], x[1], y); },
               [](Ops& o, auto& x, Buf& dy, auto& gr) { o.swiglu_backward(x[0], x[1], dy, gr[0], gr[1]); },
               {true, true}});
  g.push_back({"sigmoid (x)", {{4, 5}}, {2}, {4, 5},
               [](Ops& o, auto& x, Buf& y) { o.sigmoid(x[0], 0.7f, y); },
               [](Ops& o, auto& x, Buf& dy, auto& gr) {
                 Buf y(DType::F64, {4, 5});
                 o.sigmoid(x[0], 0.7f, y);
                 o.sigmoid_backward(y, dy, 0.7f, gr[0]);
               },
               {true}});
  for (const AttnShape& a : {AttnShape{5, 5, 4, 2, 8, true, 0, 0, 0}, AttnShape{4, 6, 2, 1, 8, true, 3, 2, 0},
                            AttnShape{3, 4, 2, 2, 8, false, 0, 0, 0}})
    g.push_back({"attention (q, k, v) " + a.str(), {{a.Tq, a.Hq, a.D}, {a.Tk, a.Hkv, a.D}, {a.Tk, a.Hkv, a.D}},
                 {1, 1, 1}, {a.Tq, a.Hq, a.D},
                 [a](Ops& o, auto& x, Buf& y) { o.attention(x[0], x[1], x[2], y, a.spec()); },
                 [a](Ops& o, auto& x, Buf& dy, auto& gr) {
                   Buf y(DType::F64, {a.Tq, a.Hq, a.D}), lse(DType::F64, {a.Hq, a.Tq});
                   o.attention_forward_lse(x[0], x[1], x[2], y, lse, a.spec());
                   o.attention_backward(x[0], x[1], x[2], y, lse, dy, gr[0], gr[1], gr[2], a.spec());
                 },
                 {true, true, true}});
  // Cross-entropy: the forward output is the per-row loss; grad_scale plays R (constant rows).
  {
    const int64_t n = 4, h = 6, V = 9;
    auto targets = [] {
      static int32_t t[] = {2, -100, 8, 0};
      return TensorView::contiguous(t, DType::I32, Device::CPU, {4});
    };
    g.push_back({"lm_head_cross_entropy (h, w)", {{n, h}, {V, h}}, {1, 0.5}, {n},
                 [targets](Ops& o, auto& x, Buf& y) {
                   o.lm_head_cross_entropy(x[0], x[1], targets(), 1.f, y, TensorView{}, TensorView{});
                 },
                 [targets](Ops& o, auto& x, Buf& dy, auto& gr) {
                   // dy is constant (see run_grad), so grad_scale = dy[0].
                   Buf losses(DType::F64, {4});
                   o.lm_head_cross_entropy(x[0], x[1], targets(), static_cast<float>(dy.get(0)), losses, gr[0], gr[1]);
                 },
                 {true, true},
                 true});
  }
  return g;
}

void run_grad(const GradCase& gc) {
  using cpu_test::Buf;
  SCOPED_TRACE(gc.name);
  std::unique_ptr<Ops> ops = rt::make_cpu_ops(DType::F64);
  auto make = [](const Shape& s) {
    switch (s.size()) {
      case 1: return Buf(DType::F64, {s[0]});
      case 2: return Buf(DType::F64, {s[0], s[1]});
      default: return Buf(DType::F64, {s[0], s[1], s[2]});
    }
  };
  std::vector<Buf> x, gr;
  for (size_t i = 0; i < gc.inputs.size(); ++i) {
    x.push_back(make(gc.inputs[i]));
    x.back().randn(100 + i, gc.sds[i]);
    gr.push_back(make(gc.inputs[i]));
    gr.back().fill(0.0);
  }
  Buf y = make(gc.out), r = make(gc.out);
  if (gc.constant_dout) r.fill(0.37);
  else r.randn(7);
  gc.backward(*ops, x, r, gr);
  for (size_t i = 0; i < x.size(); ++i) {
    if (!gc.wrt[i]) continue;
    auto loss = [&] {
      gc.forward(*ops, x, y);
      return cpu_test::dot(y.values(), r.values());
    };
    const std::vector<double> fd = cpu_test::finite_diff(x[i], loss);
    EXPECT_EQ(rt::test::count_nonfinite(gr[i].values()), 0u) << "input " << i;
    EXPECT_LT(rt::test::rel_err(gr[i].values(), fd), cpu_test::kFdTol) << "gradient of input " << i;
  }
}

TEST(BackendOpsGrad, FiniteDifferences) {
  if (!g_grad) GTEST_SKIP() << "gradient mode: run with --grad or RT_OPS_GRAD=1";
  for (const GradCase& gc : grad_cases()) run_grad(gc);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  g_perf = env_on("RT_OPS_PERF");
  g_grad = env_on("RT_OPS_GRAD");
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--perf") g_perf = true;
    else if (a == "--grad") g_grad = true;
    else if (a.rfind("--filter=", 0) == 0) g_filter = a.substr(9);
    else if (a == "--list") {
      register_cases();
      for (const OpCase& oc : registry()) std::printf("%-18s %s\n", oc.family.c_str(), oc.name.c_str());
      return 0;
    } else {
      std::fprintf(stderr, "test_backend_ops: unknown argument '%s' (--perf, --grad, --list, --filter=SUBSTR)\n",
                   a.c_str());
      return 2;
    }
  }
  register_cases();
  if (g_perf) return run_perf();
  if (g_grad) ::testing::GTEST_FLAG(filter) = "BackendOpsGrad.*";
  return RUN_ALL_TESTS();
}
