// The official L2A format at the loader level: the name table both ways, WeightStore::rename,
// adopt_official_l2a_names on the fixtures and on every malformed store, and the l2a_qwen3 config
// fields (parse_official_l2a) with the values the official code does not run.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "loader/hf_config.h"
#include "loader/l2a_official.h"
#include "loader/weight_store.h"
#include "test_util.h"

namespace {

using namespace rt;
using rt::test::error_of;

const std::string kDir = std::string(RT_FIXTURES_DIR) + "/l2a_official/";

std::string read(const std::string& path) {
  std::ifstream f(path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

HfConfig fixture_config(const std::string& name) { return parse_hf_config(kDir + name + "/config.json"); }

TEST(L2aOfficialNames, TableMapsBothWays) {
  for (const L2aNamePair& p : l2a_official_name_table()) {
    const std::string off = std::string("model.layers.7.") + p.official, ours = std::string("model.layers.7.") + p.ours;
    EXPECT_EQ(l2a_official_to_ours(off), ours);
    EXPECT_EQ(l2a_ours_to_official(ours), off);
  }
  for (const char* same : {"model.layers.0.self_attn.q_proj.weight", "model.layers.3.self_attn.k_norm.weight",
                           "model.layers.1.input_layernorm.weight", "model.embed_tokens.weight", "lm_head.weight",
                           "router.weight", "model.layers.x", "model.layers..router.weight"}) {
    EXPECT_EQ(l2a_official_to_ours(same), same);
    EXPECT_EQ(l2a_ours_to_official(same), same);
  }
}

TEST(L2aOfficialNames, ExpectedShapesFollowTheConfig) {
  const HfConfig c = fixture_config("l2a_untied_f32");
  const auto e = l2a_official_expected(c);
  ASSERT_EQ(e.size(), 2u * l2a_official_name_table().size());
  std::map<std::string, std::vector<int64_t>> by_name;
  for (const auto& t : e) by_name[t.name] = t.shape;
  EXPECT_EQ(by_name["model.layers.1.self_attn.sigmoid_linear.weight"], (std::vector<int64_t>{1, 48}));
  EXPECT_EQ(by_name["model.layers.0.self_attn.o_proj_global.weight"], (std::vector<int64_t>{48, 64}));
  EXPECT_EQ(by_name["model.layers.0.self_attn.k_proj_global.weight"], (std::vector<int64_t>{32, 48}));
  EXPECT_EQ(by_name["model.layers.0.self_attn.q_norm_global.weight"], (std::vector<int64_t>{16}));
}

TEST(WeightStoreRename, KeepsDataAndRefusesClashes) {
  WeightStore s;
  std::vector<uint8_t> a(8, 1), b(4, 2);
  const WeightInfo* wa = &s.add_owned("a", StDType::F32, {2}, a);
  s.add_owned("b", StDType::F32, {1}, b);
  s.rename("a", "c");
  EXPECT_EQ(s.find("a"), nullptr);
  ASSERT_NE(s.find("c"), nullptr);
  EXPECT_EQ(s.find("c"), wa) << "pointers handed out before a rename stay valid";
  EXPECT_EQ(s.get("c").name, "c");
  EXPECT_EQ(s.get("c").shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(s.get("c").data[0], 1);
  EXPECT_NE(error_of([&] { s.rename("nope", "d"); }).find("\"nope\" not found"), std::string::npos);
  const std::string clash = error_of([&] { s.rename("c", "b"); });
  EXPECT_NE(clash.find("already holds"), std::string::npos) << clash;
  EXPECT_NE(s.find("c"), nullptr) << "a refused rename changes nothing";
  EXPECT_EQ(s.get("b").data[0], 2);
}

TEST(AdoptOfficialNames, FixturesReadUnderOurNames) {
  for (const char* name : {"l2a_untied_f32", "l2a_tied_bf16"}) {
    const HfConfig c = fixture_config(name);
    WeightStore s = WeightStore::open(kDir + name);
    const size_t n = s.size();
    const WeightInfo* router = s.find("model.layers.1.self_attn.sigmoid_linear.weight");
    ASSERT_NE(router, nullptr);
    const uint8_t* router_data = router->data;
    adopt_official_l2a_names(c, s);
    EXPECT_EQ(s.size(), n);
    for (const auto& [k, w] : s.all()) {
      EXPECT_EQ(k.find("_global"), std::string::npos) << k;
      EXPECT_EQ(k.find("sigmoid_linear"), std::string::npos) << k;
    }
    for (const char* ours : {"global_layernorm.weight", "global_attn.q_proj.weight", "global_attn.k_norm.weight",
                             "router.weight"})
      EXPECT_TRUE(s.contains(std::string("model.layers.0.") + ours)) << ours;
    EXPECT_EQ(s.get("model.layers.1.router.weight").data, router_data);
    // Idempotent: a store already in our names (a model trained here from an official one) passes.
    adopt_official_l2a_names(c, s);
    EXPECT_EQ(s.size(), n);
  }
}

TEST(AdoptOfficialNames, OtherModelTypesAreLeftAlone) {
  HfConfig c = fixture_config("l2a_untied_f32");
  c.official_l2a.reset();
  WeightStore s = WeightStore::open(kDir + "l2a_untied_f32");
  adopt_official_l2a_names(c, s);
  EXPECT_TRUE(s.contains("model.layers.0.self_attn.sigmoid_linear.weight"));
}

// An in-memory store holding the official L2A tensors of `c`, edited by `skip` / `shape_of`.
WeightStore official_store(const HfConfig& c, const std::set<std::string>& skip = {},
                           const std::map<std::string, std::vector<int64_t>>& shape_of = {}) {
  WeightStore s;
  for (const auto& e : l2a_official_expected(c)) {
    if (skip.count(e.name)) continue;
    auto shape = shape_of.count(e.name) ? shape_of.at(e.name) : e.shape;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    s.add_owned(e.name, StDType::F32, shape, std::vector<uint8_t>(static_cast<size_t>(n) * 4, 0));
  }
  return s;
}

TEST(AdoptOfficialNames, MissingGlobalTensorsAreListed) {
  const HfConfig c = fixture_config("l2a_untied_f32");
  WeightStore s = official_store(c, {"model.layers.0.self_attn.q_proj_global.weight",
                                     "model.layers.1.input_layernorm_global.weight"});
  const std::string e = error_of([&] { adopt_official_l2a_names(c, s); });
  for (const char* want : {"config.json", "l2a_qwen3", "2 global-attention/router tensor(s)",
                           "model.layers.0.self_attn.q_proj_global.weight",
                           "model.layers.1.input_layernorm_global.weight", "searched"})
    EXPECT_NE(e.find(want), std::string::npos) << want << " in: " << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_TRUE(s.contains("model.layers.0.self_attn.sigmoid_linear.weight")) << "a refused store is not renamed";
}

TEST(AdoptOfficialNames, WrongShapesAreNamed) {
  const HfConfig c = fixture_config("l2a_untied_f32");
  WeightStore s = official_store(c, {}, {{"model.layers.1.self_attn.sigmoid_linear.weight", {2, 48}}});
  std::string e = error_of([&] { adopt_official_l2a_names(c, s); });
  for (const char* want : {"model.layers.1.self_attn.sigmoid_linear.weight", "[2, 48]", "[1, 48]", "router"})
    EXPECT_NE(e.find(want), std::string::npos) << want << " in: " << e;
  WeightStore g = official_store(c, {}, {{"model.layers.0.self_attn.k_norm_global.weight", {48}},
                                          {"model.layers.1.self_attn.v_proj_global.weight", {48, 48}}});
  e = error_of([&] { adopt_official_l2a_names(c, g); });
  for (const char* want : {"k_norm_global.weight", "[48]", "[16]", "and 1 more"})
    EXPECT_NE(e.find(want), std::string::npos) << want << " in: " << e;
}

TEST(AdoptOfficialNames, RouterBiasAndDoubleNamesAreRefused) {
  const HfConfig c = fixture_config("l2a_untied_f32");
  WeightStore s = official_store(c);
  s.add_owned("model.layers.0.self_attn.sigmoid_linear.bias", StDType::F32, {1}, std::vector<uint8_t>(4, 0));
  std::string e = error_of([&] { adopt_official_l2a_names(c, s); });
  EXPECT_NE(e.find("router bias"), std::string::npos) << e;
  WeightStore d = official_store(c);
  d.add_owned("model.layers.1.router.weight", StDType::F32, {1, 48}, std::vector<uint8_t>(48 * 4, 0));
  e = error_of([&] { adopt_official_l2a_names(c, d); });
  EXPECT_NE(e.find("holds both"), std::string::npos) << e;
}

// The router settings the runtime cannot run are refused by the config parser, naming the field.
TEST(OfficialConfig, RefusesOtherRouterInputs) {
  const std::string text = read(kDir + "l2a_untied_f32/config.json");
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    const size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  const HfConfig ok = parse_hf_config_text(text, "c.json");
  ASSERT_TRUE(ok.official_l2a.has_value());
  EXPECT_EQ(ok.official_l2a->sliding_window, 5);
  EXPECT_EQ(ok.raw["l2a"]["layout"], "paper");
  EXPECT_EQ(ok.raw["l2a"]["window"], 5);
  std::string e = error_of([&] {
    parse_hf_config_text(edited("\"sig_input_type\": \"hidden_linearproj\"", "\"sig_input_type\": \"hidden_firstdim\""),
                         "c.json");
  });
  EXPECT_NE(e.find("c.json: sig_input_type \"hidden_firstdim\" is not supported"), std::string::npos) << e;
  e = error_of([&] { parse_hf_config_text(edited("\"sigmoid_linear\": true", "\"sigmoid_linear\": false"), "c.json"); });
  EXPECT_NE(e.find("c.json: sigmoid_linear = false"), std::string::npos) << e;
  e = error_of([&] { parse_hf_config_text(edited("\"sigmoid_threshold\": 0.5", "\"sigmoid_threshold\": 1.5"), "c.json"); });
  EXPECT_NE(e.find("sigmoid_threshold"), std::string::npos) << e;
}

}  // namespace
