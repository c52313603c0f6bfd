// An official L2A checkpoint (tools/make_l2a_official_fixtures.py) loaded through the C++ API as the
// CLI loads it (adopt_official_l2a_names, then l2a_dense with the derived "l2a" section as options):
// the routing decision of every token in every layer equals the independent reference's, and the
// logits match it.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "common/npy.h"
#include "cpu/cpu_ops.h"
#include "loader/hf_config.h"
#include "loader/l2a_official.h"
#include "loader/weight_store.h"
#include "model/model_dims.h"
#include "model/qwen2_model.h"
#include "plugin_host/plugin_registry.h"
#include "test_util.h"

namespace {

using namespace rt;
using json = nlohmann::json;

class OfficialModel : public ::testing::TestWithParam<std::string> {};

TEST_P(OfficialModel, DecisionsAndLogitsMatchReference) {
  const std::string dir = std::string(RT_FIXTURES_DIR) + "/l2a_official/" + GetParam();
  const json ref = json::parse(std::ifstream(dir + "/reference.json"));
  const HfConfig cfg = parse_hf_config(dir + "/config.json");
  ASSERT_TRUE(cfg.official_l2a.has_value());

  PluginRegistry registry;
  registry.scan_directory(RT_BIN_DIR);
  auto ops = make_cpu_ops();
  auto attention = registry.create_attention("l2a_dense", Device::CPU);
  Options opts;
  for (const auto& [k, v] : cfg.raw["l2a"].items()) opts.set(k, v.is_string() ? v.get<std::string>() : v.dump());
  auto router = registry.create_router(opts.get_string("router", "linear_sigmoid"));
  attention->attach_router(router.get());
  attention->configure(opts, dims_from_config(cfg));
  Qwen2Model model(cfg, *ops, *attention);
  WeightStore store = WeightStore::open(dir);
  adopt_official_l2a_names(cfg, store);
  model.load_weights(store);
  EXPECT_TRUE(model.params_from_init_rules().empty()) << "every L2A weight comes from the checkpoint";

  for (const auto& c : ref["logits"]) {
    const auto ids64 = c["ids"].get<std::vector<int64_t>>();
    const std::vector<int32_t> ids(ids64.begin(), ids64.end());
    Tensor logits = model.forward(ids, nullptr, false);
    const NpyArray want = read_npy(dir + "/" + c["file"].get<std::string>());
    std::vector<float> got(want.data.size());
    ASSERT_EQ(logits.view.numel(), static_cast<int64_t>(got.size()));
    ops->copy(logits.view, TensorView::contiguous(got.data(), DType::F32, Device::CPU, {logits.view.shape[0], logits.view.shape[1]}));
    EXPECT_LT(test::rel_err(got, want.data), 1e-4) << c["name"];
    for (size_t l = 0; l < c["decisions"].size(); ++l) {
      const std::vector<float> d = attention->last_decisions(static_cast<int>(l));
      const auto want_d = c["decisions"][l].get<std::vector<int>>();
      ASSERT_EQ(d.size(), want_d.size()) << c["name"] << " layer " << l;
      for (size_t t = 0; t < d.size(); ++t)
        EXPECT_EQ(d[t], static_cast<float>(want_d[t])) << c["name"] << " layer " << l << " token " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OfficialModel, ::testing::Values("l2a_untied_f32", "l2a_tied_bf16"));

}  // namespace
