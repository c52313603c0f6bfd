// L2A's decode step at a device-held position (decode_step_at, what DecodeSession captures as a
// CUDA graph), against the batched forward with a KV cache run one token at a time: both layouts,
// force_local on and off, Qwen2 and Qwen3 (QK-norm), a window of 3 so the rings wrap many times
// over 44 steps, and random routers so the tokens split between routed and not.
//   - logits within fp32 rounding of the forward at every step;
//   - the same tokens routed: the state's count of routed (layer, step) pairs equals the forward's
//     decisions summed over the same steps;
//   - the step runs as decode_step_at (mode Eager on the CPU, which records no graphs), not through
//     the forward;
//   - fixed_rate's random pattern draws at the device-held position (Router::forward_at) the
//     decisions its forward draws; its strided pattern decodes through the forward instead.
// On a CUDA GPU the same cases also check graph replay against the eager step, bit for bit, for
// l2a_dense and l2a_fused.
#include <gtest/gtest.h>

#include <cmath>

#include "model/decode_session.h"
#include "train_test_util.h"
#include "test_util.h"
#ifdef RT_TEST_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace {

using namespace rt;

struct Case {
  std::string name, model, layout;
  bool force_local;
  std::string router = "linear_sigmoid";  // fixed_rate: random pattern at sparsity 0.5
};
std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

Options l2a_options(const Case& c) {
  Options o;
  o.set("layout", c.layout);
  o.set("window", "3");
  o.set("tau", "1");
  o.set("force_local", c.force_local ? "true" : "false");
  o.set("router", c.router);
  if (c.router == "fixed_rate") {
    o.set("sparsity", "0.5");
    o.set("seed", "7");
  }
  return o;
}

void randomize_routers(rt::test::TrainFixture& f) {
  uint64_t seed = 11;
  for (const auto& n : f.model->parameter_names())
    if (n.find("router.weight") != std::string::npos) rt::test::randomize_parameter(f, n, seed++, 0.5);
}

std::vector<float> host(Ops& ops, TensorView v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  ops.copy(v.reshaped({v.numel()}), TensorView::contiguous(out.data(), DType::F32, Device::CPU, {v.numel()}));
  return out;
}

class L2aDecode : public ::testing::TestWithParam<Case> {};

TEST_P(L2aDecode, StepAtMatchesTheForwardAndRoutesTheSameTokens) {
  const Case& c = GetParam();
  rt::test::TrainFixture f(rt::test::kModelsDir + c.model, "l2a_dense", l2a_options(c), DType::F32);
  randomize_routers(f);
  const int64_t vocab = f.model->dims().vocab, L = f.model->dims().n_layers;
  const std::vector<int32_t> prompt = {3, 17, 5, 9, 40};
  const int steps = 44;
  DecodeSession session(*f.model, 5 + steps, /*graphs=*/true);
  auto states = f.model->new_states(5 + steps);
  session.prefill(prompt);
  f.model->forward(prompt, &states, true);
  double worst = 0;
  int64_t routed_forward = 0;
  for (int t = 0; t < steps; ++t) {
    const int32_t id = static_cast<int32_t>((t * 131 + 7) % vocab);
    const auto a = host(*f.ops, session.step(id));
    const auto b = host(*f.ops, f.model->forward(std::span<const int32_t>(&id, 1), &states, true));
    worst = std::max(worst, rt::test::rel_err(std::vector<double>(a.begin(), a.end()),
                                              std::vector<double>(b.begin(), b.end())));
    for (int64_t l = 0; l < L; ++l)
      for (float d : f.attention->last_decisions(static_cast<int>(l))) routed_forward += d != 0.f;
  }
  EXPECT_EQ(session.mode(), DecodeSession::Mode::Eager);
  EXPECT_LT(worst, 1e-5);
  int64_t routed = 0, counted = 0;
  for (const auto& s : session.states()) {
    int64_t r = 0, n = 0;
    ASSERT_TRUE(s->decode_routing(&r, &n));
    EXPECT_EQ(n, steps);
    routed += r;
    counted += n;
  }
  EXPECT_EQ(routed, routed_forward);
  EXPECT_EQ(counted, steps * L);
  // The routers split the tokens (otherwise the gate is never exercised).
  EXPECT_GT(routed, 0);
  EXPECT_LT(routed, counted);
}

TEST(L2aDecodeRouter, HostPositionRouterDecodesThroughTheForward) {
  Options o;
  o.set("window", "3");
  o.set("router", "fixed_rate");
  o.set("sparsity", "0.5");
  o.set("pattern", "strided");
  rt::test::TrainFixture f(rt::test::kModelsDir + "gqa_untied_f32", "l2a_dense", o, DType::F32);
  DecodeSession session(*f.model, 16);
  EXPECT_EQ(session.mode(), DecodeSession::Mode::Forward);
}

// The device-side draw is the host draw: every position of a range, a few keys and rates.
TEST(L2aDecodeRouter, PositionDrawAtIsTheHostDraw) {
  std::unique_ptr<Ops> ops = make_cpu_ops();
  Tensor pos = ops->alloc(DType::I32, {1}), out = ops->alloc(DType::F32, {1});
  int64_t hits = 0;
  for (uint64_t key : {0ull, 1ull, 0xdeadbeefcafef00dull})
    for (double below : {0.0, 0.2, 0.5, 1.0})
      for (int32_t t = 0; t < 300; ++t) {
        *pos.ptr<int32_t>() = t;
        ops->position_draw_at(pos, key, below, out);
        ASSERT_EQ(*out.ptr<float>(), position_draw(key, t, below) ? 1.f : 0.f);
        hits += *out.ptr<float>() != 0.f;
      }
  EXPECT_EQ(hits > 0 && hits < 3 * 4 * 300, true);
}

// The whole-sequence draw (fixed_rate's forward) is the host draw too, from any start position.
TEST(L2aDecodeRouter, PositionDrawRowsIsTheHostDraw) {
  std::unique_ptr<Ops> ops = make_cpu_ops();
  Tensor out = ops->alloc(DType::F32, {300});
  for (int64_t pos0 : {0, 7, 100000}) {
    ops->position_draw_rows(pos0, 0xdeadbeefcafef00dull, 0.3, out);
    for (int64_t i = 0; i < 300; ++i)
      ASSERT_EQ(out.ptr<float>()[i], position_draw(0xdeadbeefcafef00dull, pos0 + i, 0.3) ? 1.f : 0.f) << i;
  }
  EXPECT_THROW(ops->position_draw_rows(-1, 1, 0.5, out), std::exception);
}

#ifdef RT_TEST_WITH_CUDA
// The captured step replayed gives the bits of the same step launched op by op.
TEST_P(L2aDecode, GraphReplayBitIdenticalToEager) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA GPU";
  const Case& c = GetParam();
  for (const char* backend : {"l2a_dense", "l2a_fused"}) {
    SCOPED_TRACE(backend);
    rt::test::TrainFixture g(rt::test::kModelsDir + c.model, backend, l2a_options(c), make_cuda_ops());
    const int64_t vocab = g.model->dims().vocab;
    for (const auto& n : g.model->parameter_names()) {
      if (n.find("router.weight") == std::string::npos) continue;
      TensorView p = g.model->parameter(n);
      std::vector<float> h = rt::test::randn(static_cast<size_t>(p.numel()), 11, 0.5f);
      g.ops->copy(TensorView::contiguous(h.data(), DType::F32, Device::CPU, {p.shape[0], p.shape[1]}), p);
    }
    const std::vector<int32_t> prompt = {3, 17, 5, 9, 40};
    const int steps = 44;
    DecodeSession graph(*g.model, 5 + steps, true), eager(*g.model, 5 + steps, false);
    graph.prefill(prompt);
    eager.prefill(prompt);
    for (int t = 0; t < steps; ++t) {
      const int32_t id = static_cast<int32_t>((t * 131 + 7) % vocab);
      ASSERT_EQ(host(*g.ops, graph.step(id)), host(*g.ops, eager.step(id))) << "step " << t;
    }
    EXPECT_EQ(graph.mode(), DecodeSession::Mode::Graph);
  }
}
#endif

INSTANTIATE_TEST_SUITE_P(
    Layouts, L2aDecode,
    ::testing::Values(Case{"qwen2_paper", "gqa_untied_f32", "paper", false},
                      Case{"qwen2_paper_force_local", "gqa_untied_f32", "paper", true},
                      Case{"qwen2_parallel", "gqa_untied_f32", "parallel", true},
                      Case{"qwen2_parallel_no_force", "gqa_untied_f32", "parallel", false},
                      Case{"qwen3_paper", "qwen3_hd16", "paper", false},
                      Case{"qwen3_parallel", "qwen3_hd16", "parallel", true},
                      Case{"qwen2_paper_fixed_rate", "gqa_untied_f32", "paper", true, "fixed_rate"},
                      Case{"qwen3_parallel_fixed_rate", "qwen3_hd16", "parallel", false, "fixed_rate"}),
    [](const auto& info) { return info.param.name; });

}  // namespace
