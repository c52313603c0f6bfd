// A model's attention setup survives export and is never silently replaced (issue 11, item 5):
// `runtime train --attention swa --window W` records the backend and its window in the exported
// config.json (and Hugging Face's own sliding-window fields), which loading uses by default; an
// L2A layout that contradicts the checkpoint (its config.json's l2a.layout, or what its tensors
// show) is an error naming the file and both layouts; and extra parameters that come from a
// plugin's init rules instead of the checkpoint are named in one warning line.
#include <sstream>

#include "cli_test_util.h"

namespace {

using namespace rt::test;
using json = nlohmann::json;

// A copy of the tiny L2A fixture `name` (base, paper, parallel) under tmp.
fs::path copy_l2a_fixture(const std::string& name, const TempDir& tmp) {
  const fs::path dst = tmp / name;
  fs::copy(l2a_dir() / name, dst, fs::copy_options::recursive);
  return dst;
}

int count_lines_with(const std::string& text, const std::string& what) {
  std::istringstream in(text);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(what) != std::string::npos;
  return n;
}

const std::string kIds = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22";  // 22 > the window

TEST(AttentionExport, SwaRecordsItsBackendAndWindow) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "train.toml", "[train]\nregime = \"full\"\nseq_len = 24\nbatch_size = 1\nlr = 1e-3\n");
  const auto t = run_runtime({"train", "--model", (l2a_dir() / "base").string(), "--attention", "swa", "--window",
                              "16", "--config", (tmp / "train.toml").string(), "--data",
                              (l2a_dir() / "tokens.bin").string(), "--steps", "2", "--out", (tmp / "run").string(),
                              "--quiet"},
                             300);
  ASSERT_TRUE(t.ok()) << t.describe();
  const fs::path model = tmp / "run" / "model";
  const json cfg = read_json(model / "config.json");
  ASSERT_TRUE(cfg.contains("attention_backend")) << cfg.dump(2);
  EXPECT_EQ(cfg["attention_backend"]["name"], "swa");
  EXPECT_EQ(cfg["attention_backend"]["options"]["window"], 16);
  EXPECT_EQ(cfg["use_sliding_window"], true);
  EXPECT_EQ(cfg["sliding_window"], 16);
  EXPECT_EQ(cfg["layer_types"], json::array({"sliding_attention", "sliding_attention"}));
  EXPECT_FALSE(cfg.contains("l2a"));

  // Loaded without --attention it runs as trained: swa with window 16, not full_causal.
  auto logits = [&](std::vector<std::string> extra, const std::string& out) {
    std::vector<std::string> args = {"logits", "--model", model.string(), "--ids", kIds, "--out", (tmp / out).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_runtime(args);
  };
  const auto by_default = logits({}, "default.npy");
  ASSERT_TRUE(by_default.ok()) << by_default.describe();
  EXPECT_NE(by_default.err.find("attention swa"), std::string::npos) << by_default.err;
  const auto swa16 = logits({"--attention", "swa", "--window", "16"}, "swa16.npy");
  ASSERT_TRUE(swa16.ok()) << swa16.describe();
  EXPECT_EQ(read_text(tmp / "default.npy"), read_text(tmp / "swa16.npy"));
  // An explicit --attention still wins (and differs here: 22 tokens exceed the window).
  const auto full = logits({"--attention", "full_causal"}, "full.npy");
  ASSERT_TRUE(full.ok()) << full.describe();
  EXPECT_NE(read_text(tmp / "default.npy"), read_text(tmp / "full.npy"));
  // So does an explicit window.
  const auto swa4 = logits({"--window", "4"}, "swa4.npy");
  ASSERT_TRUE(swa4.ok()) << swa4.describe();
  EXPECT_NE(read_text(tmp / "default.npy"), read_text(tmp / "swa4.npy"));
}

// The reverse: a sliding-window base model trained with full_causal exports as full attention in
// every layer (its window no longer applies), and loads without the sliding-window warning.
TEST(AttentionExport, FullCausalClearsTheBaseModelsWindow) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "train.toml", "[train]\nregime = \"full\"\nseq_len = 16\nbatch_size = 1\nlr = 1e-3\n");
  const auto t = run_runtime({"train", "--model", fixture_model("sliding_window").string(), "--attention",
                              "full_causal", "--config", (tmp / "train.toml").string(), "--data",
                              (l2a_dir() / "tokens.bin").string(), "--steps", "1", "--out", (tmp / "run").string(),
                              "--quiet"},
                             300);
  ASSERT_TRUE(t.ok()) << t.describe();
  const json cfg = read_json(tmp / "run" / "model" / "config.json");
  EXPECT_EQ(cfg["attention_backend"]["name"], "full_causal");
  EXPECT_EQ(cfg["use_sliding_window"], false);
  EXPECT_EQ(cfg["layer_types"], json::array({"full_attention", "full_attention"}));
  const auto lg = run_runtime({"logits", "--model", (tmp / "run" / "model").string(), "--ids", "1,2,3", "--out",
                               (tmp / "x.npy").string()});
  ASSERT_TRUE(lg.ok()) << lg.describe();
  EXPECT_EQ(lg.err.find("warning"), std::string::npos) << lg.err;
}

// A checkpoint that slides only some layers (sliding_mixed: layer 0 full, layers 1-2 with window 4,
// derived by transformers from max_window_layers): runs as HF by default (swa, the window and the
// full layers from the checkpoint; parity in test_cli_parity), warns under full_causal, and a
// model trained from it exports the same per-layer types.
TEST(AttentionExport, SwaKeepsTheCheckpointsFullLayers) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path base = fixture_model("sliding_mixed");
  const auto full = run_runtime({"logits", "--model", base.string(), "--ids", "1,2,3", "--attention", "full_causal",
                                 "--out", (tmp / "full.npy").string()});
  ASSERT_TRUE(full.ok()) << full.describe();
  EXPECT_NE(full.err.find("in 2 of 3 layers"), std::string::npos) << full.err;

  std::string ids;  // uint32 ids under the fixture's vocabulary of 199
  for (uint32_t i = 0; i < 512; ++i) {
    const uint32_t id = (i * 37 + 11) % 199;
    ids.append(reinterpret_cast<const char*>(&id), sizeof id);
  }
  write_text(tmp / "ids.bin", ids);
  write_text(tmp / "train.toml", "[train]\nregime = \"full\"\nseq_len = 16\nbatch_size = 1\nlr = 1e-3\n");
  const auto t = run_runtime({"train", "--model", base.string(), "--config", (tmp / "train.toml").string(), "--data",
                              (tmp / "ids.bin").string(), "--steps", "1", "--out", (tmp / "run").string(), "--quiet"},
                             300);
  ASSERT_TRUE(t.ok()) << t.describe();
  const json cfg = read_json(tmp / "run" / "model" / "config.json");
  EXPECT_EQ(cfg["attention_backend"]["name"], "swa");
  EXPECT_EQ(cfg["attention_backend"]["options"]["window"], 4);
  EXPECT_EQ(cfg["attention_backend"]["options"]["full_layers"], 0);
  EXPECT_EQ(cfg["use_sliding_window"], true);
  EXPECT_EQ(cfg["sliding_window"], 4);
  EXPECT_EQ(cfg["max_window_layers"], 1);
  EXPECT_EQ(cfg["layer_types"], json::array({"full_attention", "sliding_attention", "sliding_attention"}));
  // A bad full_layers option names the option and the model's layers.
  const auto bad = run_runtime({"logits", "--model", base.string(), "--ids", "1,2,3", "--attention", "swa", "--set",
                                "full_layers=3", "--out", (tmp / "bad.npy").string()});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("swa: option full_layers: layer 3 is out of range (the model has 3 layers"),
            std::string::npos)
      << bad.err;
}

// The layout recorded in config.json: the other one is refused, naming file, field and both values.
TEST(AttentionLayout, ContradictingTheRecordedLayoutIsAnError) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const auto p = run_runtime({"logits", "--model", (l2a_dir() / "paper").string(), "--ids", "1,2,3", "--set",
                              "layout=parallel", "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(is_clean_error(p, {"paper/config.json", "l2a.layout", "\"paper\"", "\"parallel\""}));
  EXPECT_FALSE(fs::exists(tmp / "x.npy"));
  const auto q = run_runtime({"logits", "--model", (l2a_dir() / "parallel").string(), "--ids", "1,2,3", "--set",
                              "layout=paper", "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(is_clean_error(q, {"parallel/config.json", "l2a.layout", "\"parallel\"", "\"paper\""}));
  // The same through training (its [attention] options go the same way).
  write_text(tmp / "train.toml", "[train]\nregime = \"router_only\"\nseq_len = 16\nbatch_size = 1\n");
  const auto t = run_runtime({"train", "--model", (l2a_dir() / "paper").string(), "--config",
                              (tmp / "train.toml").string(), "--set", "attention.layout=parallel", "--data",
                              (l2a_dir() / "tokens.bin").string(), "--steps", "1", "--out", (tmp / "run").string(),
                              "--quiet"});
  EXPECT_TRUE(is_clean_error(t, {"l2a.layout", "\"paper\"", "\"parallel\""}));
  // Asking for the recorded layout is fine.
  const auto same = run_runtime({"logits", "--model", (l2a_dir() / "paper").string(), "--ids", "1,2,3", "--set",
                                 "layout=paper", "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(same.ok()) << same.describe();
}

// Without a recorded layout the checkpoint's tensors tell: global_attn weights mean paper, routers
// alone parallel. That layout is the default, and the other one is refused naming the tensor.
TEST(AttentionLayout, DerivedFromTheTensorsWithoutARecord) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  for (const std::string name : {"paper", "parallel"}) {
    const fs::path dir = copy_l2a_fixture(name, tmp);
    json cfg = read_json(dir / "config.json");
    cfg["l2a"].erase("layout");
    cfg["l2a"].erase("tau");  // layout-dependent defaults come with the layout
    cfg["l2a"].erase("force_local");
    write_text(dir / "config.json", cfg.dump(2));
  }
  const auto p = run_runtime({"logits", "--model", (tmp / "paper").string(), "--ids", "1,2,3", "--set",
                              "layout=parallel", "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(is_clean_error(p, {"model.safetensors", "global_attn", "\"paper\"", "\"parallel\""}));
  const auto q = run_runtime({"logits", "--model", (tmp / "parallel").string(), "--ids", "1,2,3", "--set",
                              "layout=paper", "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(is_clean_error(q, {"model.safetensors", "router.weight", "\"parallel\"", "\"paper\""}));
  // By default the derived layout runs, giving the recorded model's logits exactly.
  for (const std::string name : {"paper", "parallel"}) {
    const auto a = run_runtime({"logits", "--model", (tmp / name).string(), "--ids", kIds, "--out",
                                (tmp / (name + "_derived.npy")).string()});
    ASSERT_TRUE(a.ok()) << a.describe();
    const auto b = run_runtime({"logits", "--model", (l2a_dir() / name).string(), "--ids", kIds, "--out",
                                (tmp / (name + "_recorded.npy")).string()});
    ASSERT_TRUE(b.ok()) << b.describe();
    EXPECT_EQ(read_text(tmp / (name + "_derived.npy")), read_text(tmp / (name + "_recorded.npy"))) << name;
  }
}

// A base model run with an L2A plugin: one warning line naming the parameters its init rules made
// (untrained routers, global weights copied from the local ones); none for a trained L2A model.
TEST(AttentionInitRules, BaseModelWithL2aWarnsOnce) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const auto r = run_runtime({"logits", "--model", (l2a_dir() / "base").string(), "--attention", "l2a_dense",
                              "--window", "8", "--ids", "1,2,3", "--out", (tmp / "x.npy").string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(count_lines_with(r.err, "warning:"), 1) << r.err;
  EXPECT_EQ(count_lines_with(r.err, "init rules"), 1) << r.err;
  for (const char* s : {"model.layers.*.router.weight (zeros)",
                        "model.layers.*.global_attn.q_proj.weight (copy_of:self_attn.q_proj.weight)",
                        "model.layers.*.global_layernorm.weight (copy_of:input_layernorm.weight)"})
    EXPECT_NE(r.err.find(s), std::string::npos) << s << "\n" << r.err;
  // The parallel layout adds only the router.
  const auto par = run_runtime({"logits", "--model", (l2a_dir() / "base").string(), "--attention", "l2a_dense",
                                "--window", "8", "--set", "layout=parallel", "--ids", "1,2,3", "--out",
                                (tmp / "x.npy").string()});
  ASSERT_TRUE(par.ok()) << par.describe();
  EXPECT_NE(par.err.find("model.layers.*.router.weight (zeros)"), std::string::npos) << par.err;
  EXPECT_EQ(par.err.find("global_attn"), std::string::npos) << par.err;
  // A trained L2A model has them all: no warning.
  for (const char* name : {"paper", "parallel"}) {
    const auto t = run_runtime({"logits", "--model", (l2a_dir() / name).string(), "--ids", "1,2,3", "--out",
                                (tmp / "x.npy").string()});
    ASSERT_TRUE(t.ok()) << t.describe();
    EXPECT_EQ(t.err.find("init rules"), std::string::npos) << name << ": " << t.err;
  }
  // Only some layers missing a parameter: those layers are named.
  const fs::path dir = copy_l2a_fixture("paper", tmp);
  auto st = Safetensors::load(dir / "model.safetensors");
  ASSERT_TRUE(st.remove_tensor("model.layers.1.router.weight"));
  st.save(dir / "model.safetensors");
  const auto part = run_runtime({"logits", "--model", dir.string(), "--ids", "1,2,3", "--out", (tmp / "x.npy").string()});
  ASSERT_TRUE(part.ok()) << part.describe();
  EXPECT_NE(part.err.find("model.layers.{1}.router.weight (zeros)"), std::string::npos) << part.err;
}

}  // namespace

namespace {

// The runtime decides from what a backend declares (Capabilities), not from its name: --window is
// refused by a backend that takes no window, with the list of those that do; a base model's
// sliding window is the default window of the backend that declares Hugging Face's
// sliding-window attention; an L2A checkpoint runs by default on the first backend that declares
// its config section and runs on the device.
TEST(AttentionCapabilities, WindowRefusedByBackendsWithoutOne) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const auto r = run_runtime({"logits", "--model", (fixtures_dir() / "gqa7_hd64").string(), "--ids", "1,2,3",
                              "--attention", "full_causal", "--window", "4", "--out", (tmp / "x.npy").string()});
  EXPECT_TRUE(is_clean_error(r, {"--window 4", "full_causal", "takes no window", "l2a_dense", "swa"}));
  EXPECT_FALSE(fs::exists(tmp / "x.npy"));
}

TEST(AttentionCapabilities, L2aCheckpointDefaultsToItsReferenceBackend) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  // No --attention: the paper fixture (config.json has an "l2a" section) runs on l2a_dense on the
  // CPU, the same logits as naming it.
  const auto d = run_runtime({"logits", "--model", (l2a_dir() / "paper").string(), "--ids", "1,2,3", "--out",
                              (tmp / "default.npy").string()});
  ASSERT_TRUE(d.ok()) << d.describe();
  const auto n = run_runtime({"logits", "--model", (l2a_dir() / "paper").string(), "--ids", "1,2,3", "--attention",
                              "l2a_dense", "--out", (tmp / "named.npy").string()});
  ASSERT_TRUE(n.ok()) << n.describe();
  EXPECT_EQ(read_text(tmp / "default.npy"), read_text(tmp / "named.npy"));
}

}  // namespace
