// Whole-model CUDA vs CPU on the Hugging Face fixtures: logits within bf16 tolerance, and greedy
// generation with the KV cache identical to the CPU path. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "cpu/cpu_ops.h"
#include "cuda/cuda_ops.h"
#include "loader/hf_config.h"
#include "loader/weight_store.h"
#include "model/decode_session.h"
#include "model/model_dims.h"
#include "model/qwen2_model.h"
#include "plugin_host/plugin_registry.h"
#include "test_util.h"

namespace {

const std::string kModels = std::string(RT_FIXTURES_DIR) + "/models/";

struct Loaded {
  rt::RouterPtr router;  // L2A: declared before the backend that points to it
  rt::AttentionBackendPtr attention;
  rt::WeightStore store;
  std::unique_ptr<rt::Qwen2Model> model;
};

Loaded load(rt::PluginRegistry& reg, rt::Ops& ops, const std::string& name, const std::string& backend,
            int64_t window) {
  Loaded l;
  // The CPU runs l2a_fused's reference, l2a_dense: the same L2A.
  const std::string b = ops.device() == rt::Device::CPU && backend == "l2a_fused" ? "l2a_dense" : backend;
  l.attention = reg.create_attention(b, ops.device());
  rt::Options opts;
  if (window) opts.set("window", std::to_string(window));
  const rt::HfConfig cfg = rt::parse_hf_config(kModels + name + "/config.json");
  if (l.attention->capabilities().router) {
    l.router = reg.create_router("linear_sigmoid");
    l.attention->attach_router(l.router.get());
    opts.set("tau", "1");
  }
  l.attention->configure(opts, rt::dims_from_config(cfg));
  l.model = std::make_unique<rt::Qwen2Model>(cfg, ops, *l.attention);
  l.store = rt::WeightStore::open(kModels + name);
  l.model->load_weights(l.store);
  // Routers that split the tokens (zero-initialized ones route every token), the same on every device.
  uint64_t seed = 3;
  for (const auto& n : l.model->parameter_names()) {
    if (n.find("router.weight") == std::string::npos) continue;
    const rt::TensorView p = l.model->parameter(n);
    std::vector<float> w = rt::test::randn(static_cast<size_t>(p.numel()), seed++, 0.5f);
    ops.copy(rt::TensorView::contiguous(w.data(), rt::DType::F32, rt::Device::CPU, {p.shape[0], p.shape[1]}), p);
  }
  return l;
}

std::vector<float> host(rt::Ops& ops, const rt::Tensor& t) {
  std::vector<float> h(static_cast<size_t>(t.view.numel()));
  rt::TensorView dst = rt::TensorView::contiguous(h.data(), rt::DType::F32, rt::Device::CPU,
                                                  {t.view.shape[0], t.view.shape[1]});
  ops.copy(t.view, dst);
  ops.synchronize();
  return h;
}

std::vector<float> host(rt::Ops& ops, const rt::TensorView& v) { return host(ops, rt::Tensor{v, nullptr}); }

// Greedy tokens through DecodeSession (graph replay on CUDA).
std::vector<int32_t> greedy_session(rt::Ops& ops, rt::Qwen2Model& m, std::vector<int32_t> prompt, int n) {
  rt::DecodeSession s(m, static_cast<int64_t>(prompt.size()) + n);
  rt::TensorView logits = s.prefill(prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(static_cast<int32_t>(ops.argmax(logits)));
    logits = s.step(out.back());
  }
  return out;
}

std::vector<int32_t> greedy(rt::Ops& ops, rt::Qwen2Model& m, std::vector<int32_t> prompt, int n) {
  auto states = m.new_states(static_cast<int64_t>(prompt.size()) + n);
  std::vector<int32_t> out;
  rt::Tensor logits = m.forward(prompt, &states, true);
  for (int i = 0; i < n; ++i) {
    auto h = host(ops, logits);
    const int32_t next = static_cast<int32_t>(std::max_element(h.begin(), h.end()) - h.begin());
    out.push_back(next);
    logits = m.forward(std::span<const int32_t>(&next, 1), &states, true);
  }
  return out;
}

class CudaModel : public ::testing::TestWithParam<std::tuple<std::string, std::string, int>> {
 protected:
  void SetUp() override {
    if (!rt::cuda_device_available()) GTEST_SKIP() << "no CUDA device";
    reg.scan_directory(RT_BIN_DIR);
    cpu = rt::make_cpu_ops();
    gpu = rt::make_cuda_ops();
  }
  rt::PluginRegistry reg;
  std::unique_ptr<rt::Ops> cpu, gpu;
};

TEST_P(CudaModel, LogitsMatchCpuWithinBf16Tolerance) {
  const auto& [name, backend, window] = GetParam();
  Loaded c = load(reg, *cpu, name, backend, window);
  Loaded g = load(reg, *gpu, name, backend, window);
  std::vector<int32_t> ids;
  for (int i = 0; i < 37; ++i) ids.push_back((i * 7919 + 11) % static_cast<int>(c.model->dims().vocab));
  const auto a = host(*cpu, c.model->forward(ids, nullptr, false));
  const auto b = host(*gpu, g.model->forward(ids, nullptr, false));
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(b[i])) << "non-finite CUDA logit at " << i;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(a[i]) * a[i];
  }
  const double rel = std::sqrt(num / den);
  std::printf("%s %s w=%d: CUDA vs CPU logits rel err %.3g\n", name.c_str(), backend.c_str(), window, rel);
  EXPECT_LT(rel, 2e-2);
}

// Teacher-forced on the CPU's greedy tokens: wherever the CPU's top-1 leads its top-2 by more
// than bf16 noise, the GPU must pick the same token. (Free-running sequences legitimately part
// ways after a near-tie; the next test pins one fixture where none occurs.)
TEST_P(CudaModel, GreedyChoicesMatchCpuWhereDecisive) {
  const auto& [name, backend, window] = GetParam();
  Loaded c = load(reg, *cpu, name, backend, window);
  Loaded g = load(reg, *gpu, name, backend, window);
  const int vocab = static_cast<int>(c.model->dims().vocab);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 6; ++i) prompt.push_back((i * 97 + 23) % vocab);
  auto cs = c.model->new_states(64);
  auto gs = g.model->new_states(64);
  rt::Tensor cl = c.model->forward(prompt, &cs, true), gl = g.model->forward(prompt, &gs, true);
  int decisive = 0;
  for (int step = 0; step < 32; ++step) {
    auto a = host(*cpu, cl), b = host(*gpu, gl);
    std::vector<float> sorted = a;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    const int32_t ca = static_cast<int32_t>(std::max_element(a.begin(), a.end()) - a.begin());
    const int32_t ga = static_cast<int32_t>(std::max_element(b.begin(), b.end()) - b.begin());
    if (sorted[0] - sorted[1] > 0.05f) {
      ++decisive;
      EXPECT_EQ(ga, ca) << "step " << step << ", CPU margin " << sorted[0] - sorted[1];
    }
    cl = c.model->forward(std::span<const int32_t>(&ca, 1), &cs, true);
    gl = g.model->forward(std::span<const int32_t>(&ca, 1), &gs, true);
  }
  EXPECT_GE(decisive, 16) << "too few decisive steps to mean anything";
}

TEST(CudaModelGreedy, FreeRunningIdenticalToCpuFor32Tokens) {
  if (!rt::cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  rt::PluginRegistry reg;
  reg.scan_directory(RT_BIN_DIR);
  auto cpu = rt::make_cpu_ops();
  auto gpu = rt::make_cuda_ops();
  Loaded c = load(reg, *cpu, "tied_bf16_theta5e6", "full_causal", 0);
  Loaded g = load(reg, *gpu, "tied_bf16_theta5e6", "full_causal", 0);
  const std::vector<int32_t> prompt = {23, 252, 65, 252, 53, 216};
  const std::vector<int32_t> want = greedy(*cpu, *c.model, prompt, 32);
  EXPECT_EQ(greedy(*gpu, *g.model, prompt, 32), want) << "batched forward, one token at a time";
  EXPECT_EQ(greedy_session(*gpu, *g.model, prompt, 32), want) << "DecodeSession (CUDA graph)";
}

// The captured decode step replayed for every token gives the same bits as the same step launched
// op by op, for 40 tokens: full cache, and rings of the window that wrap several times. Both are
// within bf16 noise of the batched forward (which splits the keys differently).
TEST_P(CudaModel, GraphDecodeBitIdenticalToEager) {
  const auto& [name, backend, window] = GetParam();
  Loaded g = load(reg, *gpu, name, backend, window);
  const int vocab = static_cast<int>(g.model->dims().vocab);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 6; ++i) prompt.push_back((i * 97 + 23) % vocab);
  const int steps = 40;
  rt::DecodeSession graph(*g.model, 6 + steps, /*graphs=*/true), eager(*g.model, 6 + steps, /*graphs=*/false);
  auto states = g.model->new_states(6 + steps);
  graph.prefill(prompt);
  eager.prefill(prompt);
  g.model->forward(prompt, &states, true);
  double worst = 0;
  for (int t = 0; t < steps; ++t) {
    const int32_t id = (t * 131 + 7) % vocab;
    const auto a = host(*gpu, graph.step(id));
    const auto b = host(*gpu, eager.step(id));
    const auto c = host(*gpu, g.model->forward(std::span<const int32_t>(&id, 1), &states, true));
    ASSERT_EQ(a, b) << "step " << t;
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (double(a[i]) - c[i]) * (double(a[i]) - c[i]);
      den += double(c[i]) * c[i];
    }
    worst = std::max(worst, std::sqrt(num / den));
  }
  EXPECT_EQ(graph.mode(), rt::DecodeSession::Mode::Graph);
  EXPECT_EQ(eager.mode(), rt::DecodeSession::Mode::Eager);
  std::printf("%s %s w=%d: graph decode vs batched forward, worst rel err %.3g\n", name.c_str(), backend.c_str(),
              window, worst);
  EXPECT_LT(worst, 2e-2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModel,
                         ::testing::Values(std::make_tuple("gqa_untied_f32", "full_causal", 0),
                                           std::make_tuple("tied_bf16_theta5e6", "full_causal", 0),
                                           std::make_tuple("gqa7_hd64", "full_causal", 0),
                                           std::make_tuple("sliding_window", "swa", 5),
                                           std::make_tuple("gqa7_hd64", "swa", 3),
                                           std::make_tuple("qwen3_hd64_bf16", "full_causal", 0),
                                           std::make_tuple("qwen3_hd64_bf16", "swa", 3),
                                           // L2A: greedy decode through graphs (routed decode) against the CPU.
                                           std::make_tuple("qwen3_hd64_bf16", "l2a_dense", 3),
                                           std::make_tuple("gqa7_hd64", "l2a_fused", 3),
                                           std::make_tuple("qwen3_hd64_bf16", "l2a_fused", 3)));

}  // namespace
