// TrainConfig: defaults, every key, [attention] pass-through, --set overrides, every error path,
// and the stability of to_json()/config_hash().
#include <cstdlib>

#include "train/train_config.h"
#include "test_util.h"

namespace rt::test {
namespace {

TrainConfig parse(const std::string& text, const std::vector<std::string>& sets = {}) {
  return parse_train_config(text, "cfg.toml", sets);
}
std::string parse_error(const std::string& text, const std::vector<std::string>& sets = {}) {
  return error_of([&] { parse(text, sets); });
}

TEST(TrainConfig, EmptyFileGivesDefaults) {
  const TrainConfig c = parse("");
  EXPECT_EQ(c.regime, TrainRegime::Full);
  EXPECT_EQ(c.seq_len, 1024);
  EXPECT_EQ(c.batch_size, 8);
  EXPECT_EQ(c.micro_batch, 1);
  EXPECT_EQ(c.grad_accum_steps(), 8);
  EXPECT_DOUBLE_EQ(c.lr, 1e-4);
  EXPECT_EQ(c.warmup_steps, 0);
  EXPECT_DOUBLE_EQ(c.min_lr_ratio, 0.0);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.clip_norm, 1.0);
  EXPECT_EQ(c.seed, 0u);
  EXPECT_TRUE(c.shuffle);
  EXPECT_FALSE(c.recompute);
  EXPECT_EQ(c.checkpoint_every, 100);
  EXPECT_DOUBLE_EQ(c.checkpoint_minutes, 30.0);
  EXPECT_EQ(c.keep_checkpoints, 2);
  EXPECT_EQ(c.log_every, 0);
  EXPECT_FALSE(c.eval_every.has_value());
  EXPECT_EQ(c.val_sequences, 32);
  EXPECT_DOUBLE_EQ(c.collapse_loss, 0.05);
  EXPECT_DOUBLE_EQ(c.collapse_sparsity, 0.98);
  EXPECT_EQ(c.collapse_patience, 5);
  EXPECT_EQ(c.collapse_action, CollapseAction::Stop);
  EXPECT_TRUE(c.attention.empty());
  EXPECT_EQ(c.source, "cfg.toml");
}

TEST(TrainConfig, EveryTrainKey) {
  const TrainConfig c = parse(R"(
[train]
regime = "router_only"
seq_len = 2048
batch_size = 16
micro_batch = 4
lr = 3e-4
warmup_steps = 100
min_lr_ratio = 0.1
weight_decay = 0   # an integer where a number is expected is fine
beta1 = 0.8
beta2 = 0.99
eps = 1e-6
clip_norm = 0
seed = 1234
shuffle = false
recompute = true
checkpoint_every = 50
log_every = 10
eval_every = 25
val_sequences = 8
collapse_loss = 0.1
collapse_sparsity = 0.9
collapse_patience = 3
collapse_action = "warn"
)");
  EXPECT_EQ(c.regime, TrainRegime::RouterOnly);
  EXPECT_EQ(c.seq_len, 2048);
  EXPECT_EQ(c.batch_size, 16);
  EXPECT_EQ(c.micro_batch, 4);
  EXPECT_EQ(c.grad_accum_steps(), 4);
  EXPECT_DOUBLE_EQ(c.lr, 3e-4);
  EXPECT_EQ(c.warmup_steps, 100);
  EXPECT_DOUBLE_EQ(c.min_lr_ratio, 0.1);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(c.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.beta2, 0.99);
  EXPECT_DOUBLE_EQ(c.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.clip_norm, 0.0);
  EXPECT_EQ(c.seed, 1234u);
  EXPECT_FALSE(c.shuffle);
  EXPECT_TRUE(c.recompute);
  EXPECT_EQ(c.checkpoint_every, 50);
  EXPECT_EQ(c.log_every, 10);
  EXPECT_EQ(c.eval_every.value_or(-1), 25);
  EXPECT_EQ(c.val_sequences, 8);
  EXPECT_DOUBLE_EQ(c.collapse_loss, 0.1);
  EXPECT_DOUBLE_EQ(c.collapse_sparsity, 0.9);
  EXPECT_EQ(c.collapse_patience, 3);
  EXPECT_EQ(c.collapse_action, CollapseAction::Warn);
  EXPECT_EQ(parse("[train]\nregime = \"attention\"").regime, TrainRegime::Attention);
  EXPECT_EQ(parse("[train]\nregime = \"full\"").regime, TrainRegime::Full);
}

TEST(TrainConfig, AttentionValuesBecomeStrings) {
  const TrainConfig c = parse(R"(
[attention]
window = 512
tau = 0.1
threshold = 0.5
force_local = true
leak_prob = 0.0
rope_theta = 5e6
lambda = 1e-4
layout = "parallel"
reg_norm = "mean"
lambda_schedule = "ramp"
)");
  const std::map<std::string, std::string> want = {
      {"window", "512"},        {"tau", "0.1"},         {"threshold", "0.5"},
      {"force_local", "true"},  {"leak_prob", "0"},     {"rope_theta", "5e+06"},
      {"lambda", "1e-04"},     {"layout", "parallel"}, {"reg_norm", "mean"},
      {"lambda_schedule", "ramp"}};
  EXPECT_EQ(c.attention, want);
  // Numbers round-trip exactly.
  EXPECT_EQ(std::strtod(c.attention.at("rope_theta").c_str(), nullptr), 5e6);
  EXPECT_EQ(std::strtod(c.attention.at("tau").c_str(), nullptr), 0.1);
  EXPECT_EQ(parse("[attention]\nforce_local = false").attention.at("force_local"), "false");
}

TEST(TrainConfig, SetOverrides) {
  const TrainConfig c = parse("[train]\nlr = 1e-3\nshuffle = true\n[attention]\nwindow = 128\n",
                              {"train.lr=3e-4", "seq_len=256", "window=512", "attention.tau=1",
                               "shuffle=false", "regime=attention", "layout=\"paper\"",
                               "attention.note=a=b", "seed=7"});
  EXPECT_DOUBLE_EQ(c.lr, 3e-4);
  EXPECT_EQ(c.seq_len, 256);  // a bare train key goes to [train]
  EXPECT_FALSE(c.shuffle);
  EXPECT_EQ(c.regime, TrainRegime::Attention);
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.attention.at("window"), "512");  // a bare non-train key goes to [attention]
  EXPECT_EQ(c.attention.at("tau"), "1");
  EXPECT_EQ(c.attention.at("layout"), "paper");  // surrounding quotes dropped
  EXPECT_EQ(c.attention.at("note"), "a=b");      // split at the first '='
  // Later overrides win.
  EXPECT_DOUBLE_EQ(parse("", {"lr=1e-3", "lr=2e-3"}).lr, 2e-3);
  // Overrides are range-checked like file values, and may fix a bad file value.
  EXPECT_EQ(parse("[train]\nbatch_size = 6\nmicro_batch = 4\n", {"micro_batch=3"}).grad_accum_steps(), 2);
}

TEST(TrainConfig, LoadsFromFile) {
  TempDir dir;
  write_file(dir / "exp.toml", "[train]\nseq_len = 64\n[attention]\nwindow = 16\n");
  const TrainConfig c = load_train_config(dir / "exp.toml", {"lr=2e-4"});
  EXPECT_EQ(c.seq_len, 64);
  EXPECT_DOUBLE_EQ(c.lr, 2e-4);
  EXPECT_EQ(c.attention.at("window"), "16");
  EXPECT_EQ(c.source, (dir / "exp.toml").string());
  EXPECT_HAS(error_of([&] { load_train_config(dir / "missing.toml", {}); }), "missing.toml", "cannot open");
}

TEST(TrainConfig, MalformedTomlNamesFileLineAndColumn) {
  const std::string e = parse_error("[train]\nlr = 1e-4\nseq_len = = 3\n");
  EXPECT_HAS(e, "cfg.toml:3:", "invalid TOML");
  EXPECT_HAS(parse_error("[train]\nlr = 1\nlr = 2\n"), "cfg.toml:3", "invalid TOML");  // duplicate key
  EXPECT_HAS(parse_error("[train\n"), "cfg.toml:1:", "invalid TOML");
}

TEST(TrainConfig, UnknownKeysAndSections) {
  std::string e = parse_error("[train]\nlearning_rate = 1e-4\n");
  EXPECT_HAS(e, "cfg.toml:2:1", "train.learning_rate", "unknown key", "valid keys:", "lr");
  e = parse_error("[train]\nseq_lem = 4\n");
  EXPECT_HAS(e, "train.seq_lem", "did you mean \"seq_len\"?");
  EXPECT_HAS(parse_error("[trian]\nlr = 1\n"), "cfg.toml:1", "trian", "unknown top-level key");
  EXPECT_HAS(parse_error("lr = 1e-4\n"), "cfg.toml:1:", "lr", "unknown top-level key");
  EXPECT_HAS(parse_error("train = 5\n"), "train", "expected a table, found integer");
}

TEST(TrainConfig, WrongTypes) {
  std::string e = parse_error("[train]\nlr = \"abc\"\n");
  EXPECT_HAS(e, "cfg.toml:2:6", "train.lr", "expected a number, found string");
  EXPECT_HAS(parse_error("[train]\nseq_len = 1024.0\n"), "train.seq_len", "expected an integer, found floating-point");
  EXPECT_HAS(parse_error("[train]\nshuffle = 1\n"), "train.shuffle", "expected a boolean, found integer");
  EXPECT_HAS(parse_error("[train]\nregime = 2\n"), "train.regime", "expected a string, found integer");
  EXPECT_HAS(parse_error("[train]\nbatch_size = [1, 2]\n"), "train.batch_size", "expected an integer, found array");
  EXPECT_HAS(parse_error("[attention]\nwindow = [1, 2]\n"), "cfg.toml:2", "attention.window",
             "expected a string, number or boolean", "found array");
  EXPECT_HAS(parse_error("[attention.router]\nkind = \"x\"\n"), "attention.router", "found table");
}

TEST(TrainConfig, OutOfRangeValues) {
  struct Case {
    std::string toml, key, expect;
  };
  const Case cases[] = {
      {"lr = 0", "train.lr", "expected a finite number > 0, found 0"},
      {"lr = -1e-4", "train.lr", "found -1e-04"},
      {"lr = inf", "train.lr", "found inf"},
      {"lr = nan", "train.lr", "found nan"},
      {"seq_len = 1", "train.seq_len", "expected an integer >= 2, found 1"},
      {"batch_size = 0", "train.batch_size", "expected an integer >= 1, found 0"},
      {"micro_batch = 0", "train.micro_batch", ">= 1, found 0"},
      {"batch_size = 10\nmicro_batch = 3", "train.batch_size", "expected a multiple of train.micro_batch = 3"},
      {"warmup_steps = -1", "train.warmup_steps", ">= 0, found -1"},
      {"min_lr_ratio = 1.5", "train.min_lr_ratio", "in [0, 1], found 1.5"},
      {"weight_decay = -0.1", "train.weight_decay", ">= 0, found -0.1"},
      {"beta1 = 1.0", "train.beta1", "in [0, 1), found 1"},
      {"beta2 = -0.1", "train.beta2", "in [0, 1), found -0.1"},
      {"eps = 0", "train.eps", "> 0, found 0"},
      {"clip_norm = -1", "train.clip_norm", ">= 0, found -1"},
      {"seed = -3", "train.seed", ">= 0, found -3"},
      {"checkpoint_every = -1", "train.checkpoint_every", ">= 0"},
      {"log_every = -1", "train.log_every", ">= 0, found -1"},
      {"eval_every = -1", "train.eval_every", ">= 0, found -1"},
      {"val_sequences = 0", "train.val_sequences", ">= 1, found 0"},
      {"zero_stage = 2", "train.zero_stage", "expected 0 (optimizer state on every rank) or 1"},
      {"collapse_loss = -1", "train.collapse_loss", ">= 0"},
      {"collapse_sparsity = 1.5", "train.collapse_sparsity", "in [0, 1], found 1.5"},
      {"collapse_patience = 0", "train.collapse_patience", ">= 1, found 0"},
      {"regime = \"routers\"", "train.regime", "expected \"router_only\", \"attention\" or \"full\", found \"routers\""},
      {"collapse_action = \"abort\"", "train.collapse_action", "expected \"stop\" or \"warn\", found \"abort\""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.toml);
    EXPECT_HAS(parse_error("[train]\n" + c.toml + "\n"), "cfg.toml:", c.key, c.expect);
  }
}

TEST(TrainConfig, BadOverrides) {
  EXPECT_HAS(parse_error("", {"lr"}), "--set \"lr\"", "expected key=value", "no '='");
  EXPECT_HAS(parse_error("", {"train.lr=abc"}), "--set \"train.lr=abc\"", "train.lr",
             "expected a number, found \"abc\"");
  EXPECT_HAS(parse_error("", {"lr=1e-4x"}), "expected a number, found \"1e-4x\"");
  EXPECT_HAS(parse_error("", {"seq_len=12.5"}), "train.seq_len", "expected an integer, found \"12.5\"");
  EXPECT_HAS(parse_error("", {"shuffle=yes"}), "train.shuffle", "expected true or false, found \"yes\"");
  EXPECT_HAS(parse_error("", {"lr=0"}), "--set \"lr=0\" (train.lr)", "expected a finite number > 0, found 0");
  EXPECT_HAS(parse_error("", {"lr=nan"}), "train.lr", "found nan");
  EXPECT_HAS(parse_error("", {"train.foo=1"}), "--set \"train.foo=1\"", "unknown key train.foo");
  EXPECT_HAS(parse_error("", {"model.x=1"}), "unknown section \"model\"", "expected train or attention");
  EXPECT_HAS(parse_error("", {"=3"}), "--set \"=3\"", "expected a key");
  EXPECT_HAS(parse_error("", {"attention.a.b=3"}), "expected a key", "\"a.b\"");
  EXPECT_HAS(parse_error("", {"regime=bogus"}), "--set \"regime=bogus\" (train.regime)", "found \"bogus\"");
  // The batch/micro-batch check names where both values came from.
  EXPECT_HAS(parse_error("[train]\nbatch_size = 8\n", {"micro_batch=3"}), "cfg.toml:2:", "train.batch_size",
             "--set \"micro_batch=3\"", "found 8");
}

TEST(TrainConfig, JsonAndHashAreStable) {
  const TrainConfig d = parse("");
  EXPECT_EQ(d.to_json(),
            R"({"train":{"regime":"full","seq_len":1024,"batch_size":8,"micro_batch":1,"lr":0.0001,)"
            R"("warmup_steps":0,"min_lr_ratio":0.0,"weight_decay":0.1,"beta1":0.9,"beta2":0.95,"eps":1e-08,)"
            R"("clip_norm":1.0,"seed":0,"shuffle":true,"recompute":false,"checkpoint_every":100,)"
            R"("checkpoint_minutes":30.0,"keep_checkpoints":2,"log_every":0,"eval_every":null,"val_sequences":32,)"
            R"("collapse_loss":0.05,"collapse_sparsity":0.98,"collapse_patience":5,"collapse_action":"stop",)"
            R"("max_nonfinite_steps":3,"zero_stage":0},)"
            R"("attention":{}})");
  EXPECT_EQ(d.config_hash().size(), 16u);
  EXPECT_EQ(d.config_hash(), parse("# comment\n[train]\nlr = 1e-4\n").config_hash());
  // Key order in the file does not matter; values do.
  const TrainConfig a = parse("[attention]\nwindow = 4\ntau = 0.1\n");
  const TrainConfig b = parse("[attention]\ntau = 0.1\nwindow = 4\n");
  EXPECT_EQ(a.to_json(), b.to_json());
  EXPECT_EQ(a.config_hash(), b.config_hash());
  EXPECT_NE(a.config_hash(), d.config_hash());
  EXPECT_NE(parse("[train]\nlr = 2e-4").config_hash(), d.config_hash());
  EXPECT_NE(parse("", {"seed=1"}).config_hash(), d.config_hash());
  // The source path is not part of the identity.
  EXPECT_EQ(parse_train_config("", "other.toml").config_hash(), d.config_hash());
  // Neither are the keys that do not change the math: a resume may change them.
  for (const char* k : {"checkpoint_every=7", "checkpoint_minutes=0.5", "keep_checkpoints=0", "log_every=3",
                        "eval_every=5", "eval_every=0", "val_sequences=4",
                        "recompute=true", "collapse_loss=0.5", "collapse_sparsity=0.5", "collapse_patience=9",
                        "collapse_action=warn", "max_nonfinite_steps=1", "zero_stage=1"}) {
    const TrainConfig e = parse("", {k});
    EXPECT_NE(e.to_json(), d.to_json()) << k;
    EXPECT_EQ(e.config_hash(), d.config_hash()) << k;
  }
}

TEST(TrainConfig, CheckpointKeys) {
  const TrainConfig c = parse("[train]\ncheckpoint_every = 0\ncheckpoint_minutes = 2.5\nkeep_checkpoints = 5\n");
  EXPECT_EQ(c.checkpoint_every, 0);
  EXPECT_DOUBLE_EQ(c.checkpoint_minutes, 2.5);
  EXPECT_EQ(c.keep_checkpoints, 5);
  EXPECT_EQ(parse("", {"checkpoint_minutes=0"}).checkpoint_minutes, 0.0);
  EXPECT_HAS(parse_error("[train]\ncheckpoint_minutes = -1\n"), "train.checkpoint_minutes", ">= 0");
  EXPECT_HAS(parse_error("[train]\nkeep_checkpoints = -1\n"), "train.keep_checkpoints", ">= 0");
}

}  // namespace
}  // namespace rt::test

namespace rt::test {
namespace {

// The experiment configs shipped in configs/ must load (and stay loadable as keys evolve).
TEST(TrainConfig, ShippedConfigsLoad) {
  const fs::path dir = fs::path(RT_SOURCE_DIR) / "configs";
  int n = 0;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() != ".toml") continue;
      SCOPED_TRACE(e.path().string());
      EXPECT_NO_THROW(load_train_config(e.path()));
      ++n;
    }
  if (n == 0) GTEST_SKIP() << "no configs/*.toml";
}

}  // namespace
// Non-finite steps: skipped, and this many in a row stop the run (default 3, at least 1).
TEST(TrainConfig, MaxNonfiniteSteps) {
  EXPECT_EQ(parse("").max_nonfinite_steps, 3);
  EXPECT_EQ(parse("[train]\nmax_nonfinite_steps = 7\n").max_nonfinite_steps, 7);
  EXPECT_EQ(parse("", {"train.max_nonfinite_steps=2"}).max_nonfinite_steps, 2);
  EXPECT_HAS(parse_error("[train]\nmax_nonfinite_steps = 0\n"), "train.max_nonfinite_steps", ">= 1, found 0");
  EXPECT_HAS(parse_error("[train]\nmax_nonfinite_steps = 1.5\n"), "train.max_nonfinite_steps", "an integer");
}

}  // namespace rt::test

namespace rt::test {
namespace {

// Held-out validation: eval_every unset follows checkpoint_every (100 when that is 0), 0 leaves
// only the last step; nothing is evaluated without validation data.
TEST(TrainConfig, EvalEvery) {
  EXPECT_EQ(parse("").effective_eval_every(true), 100);
  EXPECT_EQ(parse("", {"checkpoint_every=7"}).effective_eval_every(true), 7);
  EXPECT_EQ(parse("", {"checkpoint_every=0"}).effective_eval_every(true), 100);
  EXPECT_EQ(parse("", {"eval_every=3", "checkpoint_every=7"}).effective_eval_every(true), 3);
  EXPECT_EQ(parse("[train]\neval_every = 0\n").effective_eval_every(true), 0);
  EXPECT_EQ(parse("", {"eval_every=3"}).effective_eval_every(false), 0);
  EXPECT_EQ(parse("").effective_eval_every(false), 0);
  EXPECT_HAS(parse_error("", {"eval_every=1.5"}), "train.eval_every", "an integer");
  EXPECT_HAS(parse_error("", {"val_sequences=x"}), "train.val_sequences", "an integer");
}

}  // namespace
}  // namespace rt::test
