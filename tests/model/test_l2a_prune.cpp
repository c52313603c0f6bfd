// Pruned L2A layers (option pruned_layers, `runtime prune`): a pruned layer is the unpruned layer
// with its global branch off (d = 0), keeps no global KV cache, decodes with its window ring, and
// trains; bad layer lists are refused naming the option and the layer count.
#include <algorithm>
#include <cmath>
#include <set>

#include "model/decode_session.h"
#include "train_test_util.h"

namespace {

using namespace rt;
using rt::test::TrainFixture;

// The real router, with its decisions in `layers` forced to d = 0 (exactly: the branch is off).
class ForceLocal final : public rt::test::WrappedRouter {
 public:
  ForceLocal(Router* inner, std::set<int> layers) : WrappedRouter(inner), layers_(std::move(layers)) {}

 protected:
  void adjust(const LayerContext& ctx, TensorView, TensorView d) override {
    if (layers_.count(ctx.layer)) ctx.ops->fill(d, 0.f);
  }

 private:
  std::set<int> layers_;
};

struct Case {
  std::string name, model, layout;
  std::vector<int> pruned;
};
std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

Options options_for(const Case& c, bool pruned) {
  Options o;
  o.set("window", "4");
  o.set("layout", c.layout);
  o.set("leak_prob", "0");
  if (pruned) {
    std::string list;
    for (int l : c.pruned) list += (list.empty() ? "" : ",") + std::to_string(l);
    o.set("pruned_layers", list);
  }
  return o;
}

// Router weights with both signs of z on these inputs: some tokens routed, some not, per layer.
void randomize_routers(TrainFixture& f) {
  for (int64_t l = 0; l < f.n_layers(); ++l) {
    const std::string name = "model.layers." + std::to_string(l) + ".router.weight";
    const auto names = f.model->parameter_names();
    if (std::find(names.begin(), names.end(), name) != names.end())
      rt::test::randomize_parameter(f, name, 100 + static_cast<uint64_t>(l), 1.0);
  }
}

std::vector<int32_t> test_ids(int64_t vocab, int n) {
  std::vector<int32_t> ids;
  for (int t = 0; t < n; ++t) ids.push_back(static_cast<int32_t>((t * 37 + 11) % vocab));
  return ids;
}

std::vector<float> logits(TrainFixture& f, const std::vector<int32_t>& ids) {
  return host_floats(*f.ops, f.model->forward(ids, nullptr, false));
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

class L2aPrune : public ::testing::TestWithParam<Case> {};

TEST_P(L2aPrune, EqualsGlobalBranchForcedOff) {
  const Case& c = GetParam();
  const std::string dir = rt::test::kModelsDir + c.model;
  const std::set<int> pruned(c.pruned.begin(), c.pruned.end());
  TrainFixture forced(dir, "l2a_dense", options_for(c, false), DType::F32,
                      [&](Router* r) { return std::make_unique<ForceLocal>(r, pruned); });
  TrainFixture plain(dir, "l2a_dense", options_for(c, false), DType::F32);
  TrainFixture cut(dir, "l2a_dense", options_for(c, true), DType::F32);
  for (TrainFixture* f : {&forced, &plain, &cut}) randomize_routers(*f);
  const auto ids = test_ids(forced.model->dims().vocab, 24);

  const auto ref = logits(forced, ids), out = logits(cut, ids), routed = logits(plain, ids);
  EXPECT_LE(max_abs_diff(out, ref), 1e-5) << "pruned model vs its global branch forced off";
  // The test can fail: unforced, the pruned layers route tokens global and the logits move.
  for (int l : c.pruned) {
    const auto d = plain.attention->last_decisions(l);
    EXPECT_GT(std::count(d.begin(), d.end(), 1.f), 0) << "layer " << l << " routes nothing";
    // A pruned layer reports all decisions local.
    const auto dc = cut.attention->last_decisions(l);
    ASSERT_EQ(dc.size(), ids.size());
    EXPECT_EQ(std::count(dc.begin(), dc.end(), 0.f), static_cast<long>(ids.size()));
  }
  EXPECT_GT(max_abs_diff(routed, ref), 1e-3);

  // Its global parameters are gone; the others' stay.
  const auto names = cut.model->parameter_names();
  for (int64_t l = 0; l < cut.n_layers(); ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const bool has_router = std::find(names.begin(), names.end(), pre + "router.weight") != names.end();
    const bool has_global = std::any_of(names.begin(), names.end(), [&](const std::string& n) {
      return n.rfind(pre, 0) == 0 && n.find("global_") != std::string::npos;
    });
    EXPECT_EQ(has_router, !pruned.count(static_cast<int>(l))) << pre;
    EXPECT_EQ(has_global, c.layout == "paper" && !pruned.count(static_cast<int>(l))) << pre;
  }

  // Training forward: the same loss as the forced model.
  TrainContext tc;
  const double lm_ref = rt::test::run_sequence(forced, ids, tc, {}).lm;
  const double lm_cut = rt::test::run_sequence(cut, ids, tc, {}).lm;
  EXPECT_NEAR(lm_cut, lm_ref, 1e-5 * std::abs(lm_ref));
}

TEST_P(L2aPrune, KvCacheDropsByTheGlobalCaches) {
  const Case& c = GetParam();
  const std::string dir = rt::test::kModelsDir + c.model;
  TrainFixture full(dir, "l2a_dense", options_for(c, false), DType::F32);
  TrainFixture cut(dir, "l2a_dense", options_for(c, true), DType::F32);
  const ModelDims& d = full.model->dims();
  const double row = 2.0 * static_cast<double>(d.n_kv_heads * d.head_dim) * 4.0;  // K and V, f32 on the CPU
  for (int64_t T : {3, 4, 17, 40}) {
    auto bytes = [&](TrainFixture& f) {
      size_t n = 0;
      for (const auto& s : f.model->new_states(T)) n += s->kv_bytes();
      return static_cast<double>(n);
    };
    const double n = static_cast<double>(c.pruned.size());
    // Paper: the pruned layers lose their global cache (T rows) and keep their ring; parallel: they
    // had no ring and gain one of min(T, W) over the shared projections.
    const double expected = n * static_cast<double>(T) * row -
                            (c.layout == "parallel" ? n * static_cast<double>(std::min<int64_t>(T, 4)) * row : 0.0);
    EXPECT_EQ(bytes(full) - bytes(cut), expected) << "T=" << T;
  }
}

TEST_P(L2aPrune, DecodeWithCacheEqualsFullForward) {
  const Case& c = GetParam();
  TrainFixture cut(rt::test::kModelsDir + c.model, "l2a_dense", options_for(c, true), DType::F32);
  randomize_routers(cut);
  const auto ids = test_ids(cut.model->dims().vocab, 20);
  const auto full = logits(cut, ids);
  const int64_t V = cut.model->dims().vocab;
  DecodeSession dec(*cut.model, static_cast<int64_t>(ids.size()), /*graphs=*/false);
  std::vector<float> got = host_floats(*cut.ops, dec.prefill(std::span<const int32_t>(ids.data(), 3)));
  for (size_t t = 3; t <= ids.size(); ++t) {
    const std::vector<float> want(full.begin() + static_cast<long>((t - 1) * V), full.begin() + static_cast<long>(t * V));
    EXPECT_LE(max_abs_diff(got, want), 1e-4) << "position " << t - 1;
    if (t < ids.size()) got = host_floats(*cut.ops, dec.step(ids[t]));
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, L2aPrune,
                         ::testing::Values(Case{"qwen3_paper", "qwen3_hd16", "paper", {1}},
                                           Case{"qwen2_paper", "tied_bf16_theta5e6", "paper", {0, 2}},
                                           Case{"qwen2_parallel", "gqa_untied_f32", "parallel", {0}}),
                         [](const auto& info) { return info.param.name; });

TEST(L2aPruneOptions, BadLayerListsAreRefused) {
  const std::string dir = rt::test::kModelsDir + "qwen3_hd16";  // 2 layers
  auto refused = [&](const std::string& list, std::vector<std::string> words) {
    Options o;
    o.set("window", "4");
    o.set("pruned_layers", list);
    try {
      TrainFixture f(dir, "l2a_dense", o, DType::F32);
      ADD_FAILURE() << "pruned_layers=" << list << " was accepted";
    } catch (const Error& e) {
      words.push_back("pruned_layers");
      for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  refused("2", {"layer 2", "2 layers"});
  refused("0,-1", {"negative"});
  refused("1,1", {"twice"});
  refused("x", {"'x'"});
  // Both spellings, and every layer pruned.
  for (const char* ok : {"[0, 1]", "0,1", "[]"}) {
    Options o;
    o.set("window", "4");
    o.set("pruned_layers", ok);
    EXPECT_NO_THROW(TrainFixture(dir, "l2a_dense", o, DType::F32)) << ok;
  }
}

}  // namespace
