// The official L2A checkpoint format (model_type l2a_qwen3) through the CLI: the fixtures of
// tools/make_l2a_official_fixtures.py load and match their independent PyTorch reference (logits,
// and per-layer routing through `runtime sparsity`), `runtime convert --to l2a_qwen3` round-trips
// (official -> ours -> official; and a model trained here), and every way a checkpoint or a model
// cannot be read or written in that format is one clear error line and a non-zero exit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "cli_test_util.h"
#include "common/npy.h"

namespace {

using namespace rt::test;
using json = nlohmann::json;

const std::vector<std::string> kFixtures = {"l2a_untied_f32", "l2a_tied_bf16"};

fs::path official_dir(const std::string& name) { return fixtures_dir().parent_path() / "l2a_official" / name; }

fs::path copy_official(const std::string& name, const TempDir& tmp) {
  const fs::path to = tmp / name;
  fs::create_directories(to);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(official_dir(name) / f, to / f);
  return to;
}

std::vector<float> logits_of(const fs::path& model, const std::vector<int64_t>& ids, const TempDir& tmp,
                             const std::string& tag) {
  const fs::path out = tmp / (tag + ".npy");
  const auto r = run_runtime({"logits", "--model", model.string(), "--ids", join_ids(ids), "--out", out.string()});
  EXPECT_TRUE(r.ok()) << r.describe();
  if (!r.ok()) return {};
  EXPECT_NE(r.err.find("l2a_dense"), std::string::npos) << "an L2A model runs as l2a_dense by default: " << r.err;
  return rt::read_npy(out).data;
}

class OfficialFixture : public ::testing::TestWithParam<std::string> {};

// Logits of every reference case against the independent reference, float32 compute (bf16 storage is
// widened exactly), at the parity tolerance.
TEST_P(OfficialFixture, LogitsMatchReference) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const json ref = read_json(official_dir(GetParam()) / "reference.json");
  for (const auto& c : ref["logits"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    const auto out = logits_of(official_dir(GetParam()), ids, tmp, c["name"].get<std::string>());
    const rt::NpyArray want = rt::read_npy(official_dir(GetParam()) / c["file"].get<std::string>());
    ASSERT_EQ(out.size(), want.data.size()) << c["name"];
    EXPECT_LT(rel_error(out, want.data), ref["parity_tolerance"].get<double>()) << c["name"];
  }
}

// Per-layer routing as `runtime sparsity` reports it over the T = 37 reference sequence: the share
// of unrouted tokens of every layer equals the reference decisions' (the C++ test
// test_l2a_official_model checks the decisions token by token).
TEST_P(OfficialFixture, SparsityMatchesReferenceDecisions) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const json ref = read_json(official_dir(GetParam()) / "reference.json");
  const json& c = ref["logits"][0];
  const auto ids = c["ids"].get<std::vector<int64_t>>();
  std::string bin(ids.size() * 4, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t v = static_cast<uint32_t>(ids[i]);
    std::memcpy(&bin[i * 4], &v, 4);
  }
  write_text(tmp / "ids.bin", bin);
  const auto r = run_runtime({"sparsity", "--model", official_dir(GetParam()).string(), "--data",
                              (tmp / "ids.bin").string(), "--seq", std::to_string(ids.size()), "--max-sequences", "1",
                              "--json", (tmp / "sp.json").string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const json rep = read_json(tmp / "sp.json");
  ASSERT_EQ(rep["layers"].size(), c["decisions"].size()) << rep.dump();
  for (size_t l = 0; l < c["decisions"].size(); ++l) {
    double local = 0;
    for (const auto& d : c["decisions"][l]) local += d.get<int>() == 0;
    local /= static_cast<double>(c["decisions"][l].size());
    const json& layer = rep["layers"][l];
    ASSERT_TRUE(layer.contains("sparsity")) << layer.dump();
    EXPECT_NEAR(layer["sparsity"].get<double>(), local, 1e-9) << "layer " << l;
  }
}

// official -> convert -> the same tensors (names, dtypes, bytes) and config fields, and identical logits.
TEST_P(OfficialFixture, ConvertRoundTrip) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path out = tmp / "converted";
  const auto r = run_runtime({"convert", "--model", official_dir(GetParam()).string(), "--to", "l2a_qwen3", "--out",
                              out.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto a = Safetensors::load(official_dir(GetParam()) / "model.safetensors");
  const auto b = Safetensors::load(out / "model.safetensors");
  auto names_a = a.tensor_names(), names_b = b.tensor_names();
  std::sort(names_a.begin(), names_a.end());
  std::sort(names_b.begin(), names_b.end());
  EXPECT_EQ(names_a, names_b);
  for (const auto& n : names_a) {
    if (!b.header.contains(n)) continue;
    const json &ha = a.header[n], &hb = b.header[n];
    EXPECT_EQ(ha["dtype"], hb["dtype"]) << n;
    EXPECT_EQ(ha["shape"], hb["shape"]) << n;
    const auto span = [](const Safetensors& s, const json& h) {
      const auto o = h["data_offsets"];
      return s.data.substr(o[0].get<size_t>(), o[1].get<size_t>() - o[0].get<size_t>());
    };
    EXPECT_EQ(span(a, ha), span(b, hb)) << n;
  }
  const json ca = read_json(official_dir(GetParam()) / "config.json"), cb = read_json(out / "config.json");
  for (const char* k : {"model_type", "architectures", "sliding_window", "sigmoid_temp", "sigmoid_threshold",
                        "sig_input_type", "sigmoid_linear", "hidden_size", "num_hidden_layers", "head_dim",
                        "tie_word_embeddings", "rms_norm_eps", "rope_parameters", "dtype"})
    EXPECT_EQ(ca[k], cb[k]) << k;
  const json ref = read_json(official_dir(GetParam()) / "reference.json");
  for (const auto& c : ref["logits"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(logits_of(official_dir(GetParam()), ids, tmp, "a"), logits_of(out, ids, tmp, "b")) << c["name"];
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OfficialFixture, ::testing::ValuesIn(kFixtures));

// An L2A model trained here (Qwen3 base, paper layout, our tensor names) converts to the official
// names and config fields, and the conversion loads with the trained model's logits.
TEST(ConvertTrained, SameLogitsAsTheTrainedModel) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", R"([train]
regime = "attention"
seq_len = 16
batch_size = 1
lr = 3e-3
warmup_steps = 1
seed = 3

[attention]
layout = "paper"
window = 4
tau = 0.2
threshold = 0.4
lambda = 0.01
)");
  const auto t = run_runtime({"train", "--model", fixture_model("qwen3_hd16").string(), "--attention", "l2a_dense",
                              "--config", (tmp / "l2a.toml").string(), "--data",
                              (fixtures_dir().parent_path() / "l2a" / "tokens.bin").string(), "--steps", "2", "--out",
                              (tmp / "run").string(), "--quiet"},
                             300);
  ASSERT_TRUE(t.ok()) << t.describe();
  const fs::path trained = tmp / "run" / "model", out = tmp / "official";
  const auto r = run_runtime({"convert", "--model", trained.string(), "--to", "l2a_qwen3", "--out", out.string()});
  ASSERT_TRUE(r.ok()) << r.describe();

  const json cfg = read_json(out / "config.json");
  EXPECT_EQ(cfg["model_type"], "l2a_qwen3");
  EXPECT_EQ(cfg["architectures"], json::array({"L2AQwen3ForCausalLM"}));
  EXPECT_EQ(cfg["sliding_window"], 4);
  EXPECT_DOUBLE_EQ(cfg["sigmoid_temp"].get<double>(), 0.2);
  EXPECT_DOUBLE_EQ(cfg["sigmoid_threshold"].get<double>(), 0.4);
  EXPECT_EQ(cfg["sig_input_type"], "hidden_linearproj");
  EXPECT_EQ(cfg["sigmoid_linear"], true);
  EXPECT_DOUBLE_EQ(cfg["l2a"]["lambda"].get<double>(), 0.01) << "our options survive in the l2a section";

  const auto names = Safetensors::load(out / "model.safetensors").tensor_names();
  const std::set<std::string> have(names.begin(), names.end());
  for (const char* n : {"input_layernorm_global.weight", "self_attn.q_proj_global.weight",
                        "self_attn.k_proj_global.weight", "self_attn.v_proj_global.weight",
                        "self_attn.o_proj_global.weight", "self_attn.q_norm_global.weight",
                        "self_attn.k_norm_global.weight", "self_attn.sigmoid_linear.weight",
                        "self_attn.q_proj.weight", "self_attn.q_norm.weight", "input_layernorm.weight"})
    for (int l = 0; l < 2; ++l)
      EXPECT_TRUE(have.count("model.layers." + std::to_string(l) + "." + n)) << n;
  for (const auto& n : names) {
    EXPECT_EQ(n.find("global_attn"), std::string::npos) << n;
    EXPECT_EQ(n.find("router"), std::string::npos) << n;
  }
  const std::vector<int64_t> ids = {5, 17, 3, 99, 42, 7, 250, 13, 8, 64, 31, 2};
  const auto before = logits_of(trained, ids, tmp, "trained"), after = logits_of(out, ids, tmp, "official");
  ASSERT_FALSE(before.empty());
  EXPECT_EQ(before, after);
}

// ---- Errors: one line, non-zero exit ---------------------------------------------------------

rt::test::RunResult logits_run(const fs::path& model, const TempDir& tmp) {
  return run_runtime({"logits", "--model", model.string(), "--ids", "1,2,3", "--out", (tmp / "x.npy").string()});
}

bool one_line(const RunResult& r) { return std::count(r.err.begin(), r.err.end(), '\n') == 1; }

// Training an official model with another window exports it in step: its official fields follow
// the options it was trained with (the loader checks the two against each other).
TEST(ConvertTrained, OfficialModelTrainedWithAnotherWindowReloads) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  {
    std::vector<uint32_t> ids(2048);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint32_t>((i * 37 + 5) % 170);
    write_text(tmp / "tokens.bin", std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * 4));
  }
  write_text(tmp / "t.toml", "[train]\nregime = \"router_only\"\nseq_len = 16\nbatch_size = 1\nlr = 1e-3\n");
  const fs::path official = fixtures_dir().parent_path() / "l2a_official" / "l2a_untied_f32";
  const auto t = run_runtime({"train", "--model", official.string(), "--window", "3", "--config",
                              (tmp / "t.toml").string(), "--data", (tmp / "tokens.bin").string(), "--steps", "1",
                              "--out", (tmp / "run").string(), "--quiet"},
                             300);
  ASSERT_TRUE(t.ok()) << t.describe();
  const json cfg = read_json(tmp / "run" / "model" / "config.json");
  EXPECT_EQ(cfg["sliding_window"], 3);
  EXPECT_EQ(cfg["l2a"]["window"], 3);
  const auto r = run_runtime({"logits", "--model", (tmp / "run" / "model").string(), "--ids", "1,2,3,4,5,6,7",
                              "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(r.ok()) << r.describe();
}

TEST(OfficialErrors, MissingGlobalTensor) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path m = copy_official("l2a_untied_f32", tmp);
  auto st = Safetensors::load(m / "model.safetensors");
  ASSERT_TRUE(st.remove_tensor("model.layers.1.self_attn.k_proj_global.weight"));
  ASSERT_TRUE(st.remove_tensor("model.layers.0.input_layernorm_global.weight"));
  st.save(m / "model.safetensors");
  const auto r = logits_run(m, tmp);
  EXPECT_TRUE(is_clean_error(r, {"l2a_qwen3", "2 global-attention/router tensor(s)",
                                 "model.layers.1.self_attn.k_proj_global.weight",
                                 "model.layers.0.input_layernorm_global.weight", "model.safetensors"}));
  EXPECT_TRUE(one_line(r)) << r.err;
}

TEST(OfficialErrors, RouterOfWrongShape) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path m = copy_official("l2a_untied_f32", tmp);
  auto st = Safetensors::load(m / "model.safetensors");
  const std::string name = "model.layers.1.self_attn.sigmoid_linear.weight";
  ASSERT_TRUE(st.remove_tensor(name));
  // [2, hidden]: a second row appended as a new tensor at the end of the data.
  const size_t begin = st.data.size(), bytes = 2 * 48 * 4;
  st.data.append(bytes, '\0');
  st.header[name] = {{"dtype", "F32"}, {"shape", {2, 48}}, {"data_offsets", {begin, begin + bytes}}};
  st.save(m / "model.safetensors");
  const auto r = logits_run(m, tmp);
  EXPECT_TRUE(is_clean_error(r, {name, "[2, 48]", "[1, 48]", "model.safetensors", "router"}));
  EXPECT_TRUE(one_line(r)) << r.err;
}

TEST(OfficialErrors, GlobalTensorOfWrongShape) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path m = copy_official("l2a_untied_f32", tmp);
  auto st = Safetensors::load(m / "model.safetensors");
  // Same bytes, transposed shape: only the shape check can tell.
  const std::string name = "model.layers.0.self_attn.o_proj_global.weight";
  st.header[name]["shape"] = {64, 48};
  st.save(m / "model.safetensors");
  const auto r = logits_run(m, tmp);
  EXPECT_TRUE(is_clean_error(r, {name, "[64, 48]", "[48, 64]"}));
  EXPECT_TRUE(one_line(r)) << r.err;
}

TEST(OfficialErrors, UnsupportedRouterConfig) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path m = copy_official("l2a_untied_f32", tmp);
  json cfg = read_json(m / "config.json");
  cfg["sig_input_type"] = "hidden_firstdim";
  write_text(m / "config.json", cfg.dump(2));
  auto r = logits_run(m, tmp);
  EXPECT_TRUE(is_clean_error(r, {"config.json", "sig_input_type", "hidden_firstdim", "hidden_linearproj"}));
  EXPECT_TRUE(one_line(r)) << r.err;

  cfg["sig_input_type"] = "hidden_linearproj";
  cfg["sigmoid_linear"] = false;
  write_text(m / "config.json", cfg.dump(2));
  r = logits_run(m, tmp);
  EXPECT_TRUE(is_clean_error(r, {"config.json", "sigmoid_linear"}));
  EXPECT_TRUE(one_line(r)) << r.err;
}

TEST(ConvertErrors, RefusesWhatTheOfficialFormatCannotHold) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const auto convert = [&](const fs::path& m) {
    return run_runtime({"convert", "--model", m.string(), "--to", "l2a_qwen3", "--out", (tmp / "out").string()});
  };
  // Qwen2: biases, no QK-norm.
  auto r = convert(fixture_model("gqa_untied_f32"));
  EXPECT_TRUE(is_clean_error(r, {"qwen2", "QK-norm", "l2a_qwen3"}));
  EXPECT_TRUE(one_line(r)) << r.err;
  // A Qwen3 base model: no L2A at all.
  r = convert(fixture_model("qwen3_hd16"));
  EXPECT_TRUE(is_clean_error(r, {"not an L2A model", "runtime train"}));
  // L2A options on a Qwen3 base without trained weights; then the parallel layout; then another router.
  const fs::path m = copy_fixture("qwen3_hd16", tmp);
  json cfg = read_json(m / "config.json");
  cfg["l2a"] = {{"layout", "paper"}, {"window", 4}};
  write_text(m / "config.json", cfg.dump(2));
  r = convert(m);
  EXPECT_TRUE(is_clean_error(r, {"no trained L2A weights", "global_attn"}));
  EXPECT_TRUE(one_line(r)) << r.err;
  cfg["l2a"] = {{"layout", "parallel"}, {"window", 4}};
  write_text(m / "config.json", cfg.dump(2));
  r = convert(m);
  EXPECT_TRUE(is_clean_error(r, {"layout \"parallel\"", "paper"}));
  EXPECT_TRUE(one_line(r)) << r.err;
  cfg["l2a"] = {{"layout", "paper"}, {"window", 4}, {"router", "fixed_rate"}, {"sparsity", 0.5}};
  write_text(m / "config.json", cfg.dump(2));
  r = convert(m);
  EXPECT_TRUE(is_clean_error(r, {"router \"fixed_rate\"", "linear_sigmoid"}));
  EXPECT_TRUE(one_line(r)) << r.err;
  // Nothing was written by any refused conversion.
  EXPECT_FALSE(fs::exists(tmp / "out" / "model.safetensors"));
  // A target format other than l2a_qwen3 is a usage error.
  r = run_runtime({"convert", "--model", official_dir("l2a_untied_f32").string(), "--to", "gguf", "--out",
                   (tmp / "out").string()});
  EXPECT_TRUE(is_clean_error(r, {"--to", "gguf"}));
}

TEST(ConvertHelp, Teaches) {
  ASSERT_TRUE(runtime_available());
  const auto r = run_runtime({"convert", "--help"});
  ASSERT_TRUE(r.ok()) << r.describe();
  for (const char* s : {"l2a_qwen3", "sigmoid_linear", "q_proj_global", "input_layernorm_global", "sigmoid_temp",
                        "Example", "runtime convert --model"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
}

}  // namespace
