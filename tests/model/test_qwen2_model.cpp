// The model graph beyond HF parity (tests/cli covers that): KV-cache consistency for every
// cache layout, random init, and the init rules of plugin-declared parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "cpu/cpu_ops.h"
#include "loader/hf_config.h"
#include "loader/weight_store.h"
#include "model/decode_session.h"
#include "model/qwen2_model.h"
#include "plugin_host/plugin_registry.h"
#include "rt/sdk/error.h"
#include "test_util.h"

namespace {

const std::string kModels = std::string(RT_FIXTURES_DIR) + "/models/";

std::vector<float> to_host(rt::Ops& ops, const rt::TensorView& v) {
  std::vector<float> h(static_cast<size_t>(v.numel()));
  rt::TensorView dst = v;
  dst.data = h.data();
  ops.copy(v, dst);
  return h;
}
std::vector<float> to_host(rt::Ops& ops, const rt::Tensor& t) { return to_host(ops, t.view); }

using rt::test::rel_err;

struct Fixture {
  rt::PluginRegistry registry;
  std::unique_ptr<rt::Ops> ops = rt::make_cpu_ops();
  rt::AttentionBackendPtr attention;
  rt::WeightStore store;
  std::unique_ptr<rt::Qwen2Model> model;

  Fixture(const std::string& model_name, const std::string& backend, int64_t window) {
    registry.scan_directory(RT_BIN_DIR);
    attention = registry.create_attention(backend, rt::Device::CPU);
    rt::HfConfig cfg = rt::parse_hf_config(kModels + model_name + "/config.json");
    rt::Options opts;
    if (window) opts.set("window", std::to_string(window));
    attention->configure(opts, rt::ModelDims{});
    model = std::make_unique<rt::Qwen2Model>(cfg, *ops, *attention);
    store = rt::WeightStore::open(kModels + model_name);
    model->load_weights(store);
  }
};

std::vector<int32_t> some_ids(int n, int vocab) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 7919 + 13) % vocab;
  return ids;
}

// Logits of the last position must not depend on how the sequence reached the cache: one
// prefill, or a prefill followed by chunks and single-token decode steps.
void expect_cache_consistent(const std::string& backend, int64_t window) {
  Fixture f("tied_bf16_theta5e6", backend, window);
  const auto ids = some_ids(23, 300);
  auto full = to_host(*f.ops, f.model->forward(ids, nullptr, /*last_only=*/true));

  auto states = f.model->new_states(64);
  std::span<const int32_t> all(ids);
  f.model->forward(all.subspan(0, 9), &states, true);
  f.model->forward(all.subspan(9, 6), &states, true);  // a chunk after a prefill
  rt::Tensor last;
  for (size_t t = 15; t < ids.size(); ++t) last = f.model->forward(all.subspan(t, 1), &states, true);
  EXPECT_EQ(states[0]->tokens_seen(), 23);
  EXPECT_LT(rel_err(to_host(*f.ops, last), full), 1e-5) << backend << " window " << window;
}

TEST(KvCache, FullCausalIncrementalMatchesPrefill) { expect_cache_consistent("full_causal", 0); }
TEST(KvCache, SlidingRingIncrementalMatchesPrefill) { expect_cache_consistent("swa", 4); }
TEST(KvCache, SlidingRingWindowOne) { expect_cache_consistent("swa", 1); }
TEST(KvCache, SlidingWindowLargerThanSequence) { expect_cache_consistent("swa", 100); }

// DecodeSession's step (the device-position decode step that CUDA captures as a graph) gives the
// logits of the batched forward fed one token at a time: on the CPU, where nothing is captured, it
// runs the same ops op by op.
void expect_session_matches_forward(const std::string& backend, int64_t window) {
  Fixture f("tied_bf16_theta5e6", backend, window);
  const auto ids = some_ids(23, 300);
  std::span<const int32_t> all(ids);
  auto states = f.model->new_states(30);
  f.model->forward(all.subspan(0, 9), &states, true);
  rt::DecodeSession session(*f.model, 30);
  session.prefill(all.subspan(0, 9));
  EXPECT_EQ(session.position(), 9);
  for (size_t t = 9; t < ids.size(); ++t) {
    const auto want = to_host(*f.ops, f.model->forward(all.subspan(t, 1), &states, true));
    EXPECT_LT(rel_err(to_host(*f.ops, session.step(ids[t])), want), 1e-6)
        << backend << " window " << window << " position " << t;
  }
  EXPECT_EQ(session.position(), 23);
  EXPECT_EQ(session.states()[0]->tokens_seen(), 23);
  EXPECT_EQ(session.mode(), rt::DecodeSession::Mode::Eager) << "the CPU backend records no graphs";
  // A prefill after decode steps continues from the same position.
  session.prefill(all.subspan(0, 3));
  EXPECT_EQ(session.states()[0]->tokens_seen(), 26);
}

TEST(DecodeSession, FullCausalStepsMatchForward) { expect_session_matches_forward("full_causal", 0); }
TEST(DecodeSession, RingStepsMatchForwardAcrossTheWrap) { expect_session_matches_forward("swa", 4); }
TEST(DecodeSession, RingOfOne) { expect_session_matches_forward("swa", 1); }
TEST(DecodeSession, WindowLargerThanTheCache) { expect_session_matches_forward("swa", 100); }

// A plugin without decode_step_at (Capabilities::graph_decode false, e.g. l2a_dense) decodes
// through its batched forward, one token at a time.
class WithoutGraphDecode final : public rt::AttentionBackend {
 public:
  explicit WithoutGraphDecode(rt::AttentionBackend& inner) : inner_(inner) {}
  rt::Capabilities capabilities() const override {
    rt::Capabilities c = inner_.capabilities();
    c.graph_decode = false;
    return c;
  }
  void configure(const rt::Options& o, const rt::ModelDims& d) override { inner_.configure(o, d); }
  std::unique_ptr<rt::AttentionState> new_state(const rt::LayerContext& ctx, int64_t max_tokens) override {
    return inner_.new_state(ctx, max_tokens);
  }
  void forward(const rt::LayerContext& ctx, rt::TensorView x, rt::AttentionState* state) override {
    inner_.forward(ctx, x, state);
  }

 private:
  rt::AttentionBackend& inner_;
};

TEST(DecodeSession, PluginWithoutDecodeStepAtRunsItsForward) {
  Fixture f("tied_bf16_theta5e6", "swa", 4);
  WithoutGraphDecode plain(*f.attention);
  rt::Qwen2Model m(rt::parse_hf_config(kModels + "tied_bf16_theta5e6/config.json"), *f.ops, plain);
  m.load_weights(f.store);
  const auto ids = some_ids(12, 300);
  rt::DecodeSession a(m, 12), b(*f.model, 12);
  EXPECT_EQ(a.mode(), rt::DecodeSession::Mode::Forward);
  a.prefill(std::span<const int32_t>(ids).subspan(0, 5));
  b.prefill(std::span<const int32_t>(ids).subspan(0, 5));
  for (size_t t = 5; t < ids.size(); ++t) {
    const auto ha = to_host(*f.ops, a.step(ids[t]));
    EXPECT_LT(rel_err(ha, to_host(*f.ops, b.step(ids[t]))), 1e-6) << "position " << t;
  }
  EXPECT_EQ(a.states()[0]->tokens_seen(), 12);
}

TEST(DecodeSession, BadStepsAreErrors) {
  Fixture f("tied_bf16_theta5e6", "full_causal", 0);
  rt::DecodeSession session(*f.model, 3);
  try {
    session.step(static_cast<int32_t>(f.model->dims().vocab));
    FAIL() << "expected an error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  EXPECT_EQ(session.position(), 0) << "a refused step changes nothing";
  session.step(1);
  EXPECT_THROW(session.prefill(some_ids(3, 300)), rt::Error);  // 1 + 3 > 3 positions
  session.step(2);
  session.step(3);
  try {
    session.step(4);
    FAIL() << "expected an error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("past the KV cache, sized for 3"), std::string::npos) << e.what();
  }
}

TEST(KvCache, RingBufferHoldsOnlyTheWindow) {
  Fixture f("tied_bf16_theta5e6", "swa", 4);
  Fixture g("tied_bf16_theta5e6", "full_causal", 0);
  auto ring = f.model->new_states(64);
  auto full = g.model->new_states(64);
  EXPECT_EQ(ring[0]->kv_bytes() * 16, full[0]->kv_bytes());  // 4 of 64 positions
}

TEST(KvCache, OverflowIsAnError) {
  Fixture f("tied_bf16_theta5e6", "full_causal", 0);
  auto states = f.model->new_states(8);
  const auto ids = some_ids(9, 300);
  EXPECT_THROW(f.model->forward(ids, &states, true), rt::Error);
}

// The loader stores each layer's q/k/v weights, q/k/v biases and gate/up weights as consecutive
// rows of one buffer (one GEMM per group), with every Hugging Face name still holding its values.
TEST(StackedWeights, ProjectionGroupsShareOneBuffer) {
  Fixture f("gqa_untied_f32", "full_causal", 0);
  for (int layer = 0; layer < 2; ++layer) {
    const std::string pre = "model.layers." + std::to_string(layer) + ".";
    for (const char* kind : {"weight", "bias"}) {
      std::vector<rt::TensorView> parts;
      for (const char* proj : {"q_proj.", "k_proj.", "v_proj."})
        parts.push_back(f.model->parameter(pre + "self_attn." + proj + kind));
      const rt::TensorView all = rt::stacked_rows({parts[0], parts[1], parts[2]});
      ASSERT_NE(all.data, nullptr) << pre << " q/k/v " << kind;
      EXPECT_EQ(all.shape[0], parts[0].shape[0] + parts[1].shape[0] + parts[2].shape[0]);
    }
    EXPECT_NE(rt::stacked_rows({f.model->parameter(pre + "mlp.gate_proj.weight"),
                                f.model->parameter(pre + "mlp.up_proj.weight")})
                  .data,
              nullptr);
    for (const char* name : {"self_attn.k_proj.weight", "self_attn.v_proj.bias", "mlp.up_proj.weight"}) {
      const rt::WeightInfo& stored = f.store.get(pre + name);
      const rt::TensorView got = f.model->parameter(pre + name);
      ASSERT_EQ(static_cast<size_t>(got.numel()) * sizeof(float), stored.nbytes) << name;
      EXPECT_EQ(std::memcmp(got.data, stored.data, stored.nbytes), 0) << pre << name;
    }
  }
}

TEST(RandomInit, DeterministicInSeed) {
  auto ops = rt::make_cpu_ops();
  rt::PluginRegistry reg;
  reg.scan_directory(RT_BIN_DIR);
  auto attn = reg.create_attention("full_causal", rt::Device::CPU);
  attn->configure(rt::Options{}, rt::ModelDims{});
  rt::HfConfig cfg = rt::parse_hf_config(kModels + "sharded_f16/config.json");
  const auto ids = some_ids(5, static_cast<int>(cfg.vocab_size));
  auto run = [&](uint64_t seed) {
    rt::Qwen2Model m(cfg, *ops, *attn);
    m.init_random(seed);
    return to_host(*ops, m.forward(ids, nullptr, false));
  };
  const auto a = run(1), b = run(1), c = run(2);
  EXPECT_EQ(a, b);
  EXPECT_GT(rel_err(a, c), 0.1);
  for (float x : a) ASSERT_TRUE(std::isfinite(x));
}

// A backend that declares one parameter per init rule and checks, in forward, that the model
// created them as declared.
class DeclaringBackend final : public rt::AttentionBackend {
 public:
  explicit DeclaringBackend(std::string bad_rule = "") : bad_rule_(std::move(bad_rule)) {}
  rt::Capabilities capabilities() const override { return {}; }
  void configure(const rt::Options&, const rt::ModelDims&) override {}
  std::vector<rt::ParamDecl> extra_params(const rt::ModelDims& d) const override {
    std::vector<rt::ParamDecl> p = {{"extra.norm", {d.hidden}, "copy_of:input_layernorm.weight"},
                                     {"extra.zeros", {d.hidden}, "zeros"},
                                     {"extra.proj", {d.n_kv_heads * d.head_dim, d.hidden}, "copy_of:self_attn.k_proj.weight"}};
    if (!bad_rule_.empty()) p.push_back({"extra.bad", {d.hidden}, bad_rule_});
    return p;
  }
  std::unique_ptr<rt::AttentionState> new_state(const rt::LayerContext&, int64_t) override { return nullptr; }
  void forward(const rt::LayerContext& ctx, rt::TensorView, rt::AttentionState*) override {
    const auto& p = *ctx.params;
    auto same = [](rt::TensorView a, rt::TensorView b) {
      return a.numel() == b.numel() && std::equal(a.ptr<float>(), a.ptr<float>() + a.numel(), b.ptr<float>());
    };
    EXPECT_TRUE(same(p.get("extra.norm"), p.get("input_layernorm.weight")));
    EXPECT_TRUE(same(p.get("extra.proj"), p.get("self_attn.k_proj.weight")));
    const float* z = p.get("extra.zeros").ptr<float>();
    EXPECT_TRUE(std::all_of(z, z + ctx.dims->hidden, [](float v) { return v == 0.f; }));
    ++calls;
  }
  int calls = 0;

 private:
  std::string bad_rule_;
};

TEST(ExtraParams, CreatedFromInitRules) {
  auto ops = rt::make_cpu_ops();
  DeclaringBackend backend;
  rt::HfConfig cfg = rt::parse_hf_config(kModels + "gqa_untied_f32/config.json");
  rt::Qwen2Model m(cfg, *ops, backend);
  auto store = rt::WeightStore::open(kModels + "gqa_untied_f32");
  m.load_weights(store);
  m.forward(some_ids(3, 257), nullptr, true);
  EXPECT_EQ(backend.calls, cfg.num_hidden_layers);
}

TEST(ExtraParams, UnknownInitRuleIsAnError) {
  auto ops = rt::make_cpu_ops();
  DeclaringBackend backend("gaussian");
  rt::HfConfig cfg = rt::parse_hf_config(kModels + "gqa_untied_f32/config.json");
  rt::Qwen2Model m(cfg, *ops, backend);
  auto store = rt::WeightStore::open(kModels + "gqa_untied_f32");
  try {
    m.load_weights(store);
    FAIL() << "expected an error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown init rule 'gaussian'"), std::string::npos) << e.what();
  }
}

}  // namespace
