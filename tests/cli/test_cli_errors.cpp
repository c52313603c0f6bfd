// Bad input through the `runtime` CLI. Each case corrupts a fresh temporary copy of a good fixture
// (in C++: no Python at test time) and checks that the runtime refuses it the way every failure
// must end: a non-zero exit (never a signal), stderr starting with "error: ", a message naming the
// offending file / tensor / value and the problem, and no output file.
#include <algorithm>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <functional>

#include "cli_test_util.h"

namespace {

using namespace rt::test;

const std::string kModel = "gqa_untied_f32";  // f32, hidden 40, vocab 257, max_position_embeddings 64
const std::string kSharded = "sharded_f16";
const std::string kTensor = "model.layers.0.self_attn.q_proj.weight";  // [40, 40] float32

// Keyword groups (any one of each group must appear, case-insensitive).
const std::vector<std::string> kPastEnd = {"truncat", "exceed", "beyond", "past", "bounds", "end of file",
                                           "file size", "too short", "too small", "larger than", "outside"};
const std::vector<std::string> kNotFound = {"not found", "no such", "does not exist", "missing", "cannot open",
                                            "can't open", "could not open", "failed to open", "not exist", "has no", "no file"};

class CliErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(runtime_available());
    model_ = copy_fixture(kModel, tmp_);
    out_ = tmp_ / "out.npy";
  }
  // `runtime logits` on `model` (default: the temp copy) with the ids of a short, valid input.
  RunResult logits(const std::vector<std::string>& extra = {}, const fs::path& model = {},
                   const std::string& ids = "5,17,256,0,42") {
    std::vector<std::string> args = {"logits", "--model", (model.empty() ? model_ : model).string(), "--ids", ids,
                                     "--out", out_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_runtime(args, 60);
  }
  void expect_no_output() { EXPECT_FALSE(fs::exists(out_)) << "a failed run left " << out_; }

  fs::path st() const { return model_ / "model.safetensors"; }
  Safetensors load() const { return Safetensors::load(st()); }
  void edit_config(const std::function<void(nlohmann::json&)>& f) {
    auto cfg = read_json(model_ / "config.json");
    f(cfg);
    write_text(model_ / "config.json", cfg.dump(2));
  }

  TempDir tmp_{"rt_cli_errors"};
  fs::path model_, out_;
};

// The baseline: the untouched copy works, so every failure below is caused by its corruption.
TEST_F(CliErrors, PristineCopyWorks) {
  const RunResult r = logits();
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(fs::exists(out_));
  // The copy re-serialized by our own safetensors writer still works (the helpers are faithful).
  load().save(st());
  fs::remove(out_);
  const RunResult r2 = logits();
  ASSERT_TRUE(r2.ok()) << r2.describe();
}

TEST_F(CliErrors, TruncatedSafetensors) {
  const auto size = fs::file_size(st());
  fs::resize_file(st(), size - load().data.size() / 2);
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors"}, {kPastEnd}));
  expect_no_output();
}

TEST_F(CliErrors, EmptySafetensors) {
  fs::resize_file(st(), 0);
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors"},
                             {{"empty", "truncat", "too short", "too small", "header", "bytes", "size"}}));
  expect_no_output();
}

TEST_F(CliErrors, HeaderLengthPastEndOfFile) {
  const Safetensors s = load();
  const std::string h = s.header.dump();
  write_safetensors_raw(st(), h.size() + s.data.size() + 1000, h, s.data);
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors", "header"}, {kPastEnd}));
  expect_no_output();
}

TEST_F(CliErrors, HeaderLengthHuge) {  // 2^64 - 256: overflows naive `8 + n <= size` checks
  const Safetensors s = load();
  const std::string h = s.header.dump();
  write_safetensors_raw(st(), ~uint64_t{0} - 255, h, s.data);
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors", "header"}, {kPastEnd}));
  expect_no_output();
}

TEST_F(CliErrors, GarbageJsonHeader) {
  const Safetensors s = load();
  std::string junk = "{\"model.embed_tokens.weight\": {\"dtype\": \"F32\", \"shape\": [257, 40], oops";
  junk.append((8 - junk.size() % 8) % 8 + 64, '#');
  write_safetensors_raw(st(), junk.size(), junk, s.data);
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors"}, {{"json", "parse", "header", "syntax"}}));
  expect_no_output();
}

TEST_F(CliErrors, HeaderNotAnObject) {
  const Safetensors s = load();
  std::string h = "[1, 2, 3]";
  h.append((8 - h.size() % 8) % 8, ' ');
  write_safetensors_raw(st(), h.size(), h, s.data);
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors"}, {{"object", "json", "header", "expected"}}));
  expect_no_output();
}

TEST_F(CliErrors, OffsetsOutOfBounds) {
  Safetensors s = load();
  auto& off = s.header.at(kTensor).at("data_offsets");
  const uint64_t n = off[1].get<uint64_t>() - off[0].get<uint64_t>();
  const uint64_t begin = s.data.size() + 64;  // the right length, past the end of the data
  off = {begin, begin + n};
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors", kTensor},
                             {{"offset", "bounds", "exceed", "beyond", "past", "outside", "end"}}));
  expect_no_output();
}

TEST_F(CliErrors, OffsetsDisagreeWithShape) {
  Safetensors s = load();
  auto& off = s.header.at(kTensor).at("data_offsets");
  off[1] = off[1].get<uint64_t>() - 4;  // one float short of [40, 40]
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors", kTensor},
                             {{"size", "bytes", "offset", "mismatch", "expected"}}));
  expect_no_output();
}

TEST_F(CliErrors, WrongDtype) {
  Safetensors s = load();
  s.header.at(kTensor).at("dtype") = "I32";  // same byte size as F32
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {kTensor}, {{"dtype", "i32", "int32", "type"}}));
  expect_no_output();
}

TEST_F(CliErrors, UnknownDtype) {
  Safetensors s = load();
  s.header.at(kTensor).at("dtype") = "F33";
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {"F33"}, {{"dtype", "type"}}));
  expect_no_output();
}

TEST_F(CliErrors, TensorShapeContradictsConfig) {
  Safetensors s = load();
  s.header.at(kTensor).at("shape") = {20, 80};  // same number of elements as [40, 40]
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {kTensor}, {{"shape", "expected", "mismatch", "dimension"}}));
  expect_no_output();
}

TEST_F(CliErrors, ConfigContradictsTensorShapes) {
  edit_config([](nlohmann::json& c) { c["intermediate_size"] = 73; });
  EXPECT_TRUE(is_clean_error(logits(), {"mlp"}, {{"shape", "expected", "mismatch", "dimension"}}));
  expect_no_output();
}

TEST_F(CliErrors, MissingTensor) {
  Safetensors s = load();
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  ASSERT_TRUE(s.remove_tensor(name));
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {name}, {{"missing", "not found", "no tensor", "absent", "lacks"}}));
  expect_no_output();
}

TEST_F(CliErrors, IndexNamesMissingShard) {
  const fs::path m = copy_fixture(kSharded, tmp_);
  auto index = read_json(m / "model.safetensors.index.json");
  index.at("weight_map").at("model.layers.1.mlp.up_proj.weight") = "model-00009-of-00009.safetensors";
  write_text(m / "model.safetensors.index.json", index.dump(2));
  EXPECT_TRUE(is_clean_error(logits({}, m), {"model-00009-of-00009.safetensors"}, {kNotFound}));
  expect_no_output();
}

TEST_F(CliErrors, ShardFileDeleted) {
  const fs::path m = copy_fixture(kSharded, tmp_);
  fs::remove(m / "model-00002-of-00003.safetensors");
  EXPECT_TRUE(is_clean_error(logits({}, m), {"model-00002-of-00003.safetensors"}, {kNotFound}));
  expect_no_output();
}

TEST_F(CliErrors, MissingConfig) {
  fs::remove(model_ / "config.json");
  EXPECT_TRUE(is_clean_error(logits(), {"config.json"}, {kNotFound}));
  expect_no_output();
}

TEST_F(CliErrors, GarbageConfig) {
  write_text(model_ / "config.json", "{ \"hidden_size\": 40, this is not json");
  EXPECT_TRUE(is_clean_error(logits(), {"config.json"}, {{"json", "parse", "syntax", "invalid"}}));
  expect_no_output();
}

TEST_F(CliErrors, ConfigMissingHiddenSize) {
  edit_config([](nlohmann::json& c) { c.erase("hidden_size"); });
  EXPECT_TRUE(is_clean_error(logits(), {"config.json", "hidden_size"}));
  expect_no_output();
}

TEST_F(CliErrors, ConfigFieldWrongType) {
  edit_config([](nlohmann::json& c) { c["num_attention_heads"] = "five"; });
  EXPECT_TRUE(is_clean_error(logits(), {"config.json", "num_attention_heads"}));
  expect_no_output();
}

TEST_F(CliErrors, UnknownAttentionBackend) {
  const RunResult r = logits({"--attention", "nope"});
  EXPECT_TRUE(is_clean_error(r, {"nope", "full_causal", "swa"}));  // names the bad one, lists the real ones
  expect_no_output();
}

// l2a_fused has no CPU path: refused up front, naming the device and the CPU alternative.
TEST_F(CliErrors, FusedL2aOnTheCpu) {
  const RunResult r = logits({"--attention", "l2a_fused", "--window", "4", "--device", "cpu"});
  EXPECT_TRUE(is_clean_error(r, {"l2a_fused", "cpu", "l2a_dense"}));
  expect_no_output();
}

// A flag out of range says what it needs, in one line (not CLI11's 300-digit bound).
TEST_F(CliErrors, RangeErrorsAreOneShortLine) {
  const RunResult r = run_runtime({"train", "--model", "x", "--data", "y", "--out", "z", "--steps", "0"});
  EXPECT_TRUE(is_clean_error(r, {"--steps", ">= 1", "'0'"})) << r.describe();
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_LT(r.err.size(), 120u) << r.err;
}

TEST_F(CliErrors, BadWindow) {
  EXPECT_TRUE(is_clean_error(logits({"--attention", "swa", "--window", "0"}), {"window"}));
  expect_no_output();
}

TEST_F(CliErrors, TokenIdOutOfVocab) {
  EXPECT_TRUE(is_clean_error(logits({}, {}, "1,257,3"), {"257"}, {{"vocab", "range", "out of", "exceed"}}));
  expect_no_output();
}

TEST_F(CliErrors, GarbageIds) {
  for (const std::string ids : {"1,x", "1,,2", "1.5", "1,-3", "", "7,99999999999999999999"}) {
    SCOPED_TRACE("--ids '" + ids + "'");
    EXPECT_TRUE(is_clean_error(logits({}, {}, ids), {}, {{"ids", "token"}}));
    expect_no_output();
  }
}

TEST_F(CliErrors, NonexistentModelPath) {
  const fs::path missing = tmp_ / "no_such_model_dir";
  EXPECT_TRUE(is_clean_error(logits({}, missing), {missing.string()}, {kNotFound}));
  expect_no_output();
}

TEST_F(CliErrors, SequenceLongerThanMaxPositions) {
  std::vector<int64_t> ids;
  for (int i = 0; i < 65; ++i) ids.push_back((i * 37 + 11) % 257);  // max_position_embeddings is 64
  EXPECT_TRUE(is_clean_error(logits({}, {}, join_ids(ids)), {},
                             {{"64", "65"}, {"max_position_embeddings", "too long", "longer", "exceed", "maximum",
                                             "max"}}));
  expect_no_output();
  // ... while exactly 64 tokens are fine.
  ids.pop_back();
  const RunResult ok = logits({}, {}, join_ids(ids));
  EXPECT_TRUE(ok.ok()) << ok.describe();
}

TEST_F(CliErrors, OutputDirectoryMissing) {
  const fs::path out = tmp_ / "no_such_dir" / "out.npy";
  const RunResult r = run_runtime({"logits", "--model", model_.string(), "--ids", "1,2,3", "--out", out.string()}, 60);
  EXPECT_TRUE(is_clean_error(r, {"out.npy"}));
  EXPECT_FALSE(fs::exists(out));
}

// --set BACKEND.key=value on a one-backend command: the scope must be that backend.
TEST_F(CliErrors, SetScopedToAnotherBackend) {
  EXPECT_TRUE(is_clean_error(logits({"--set", "swa.window=4"}),
                             {"--set swa.window=4: 'swa' is not one of the backends of this run (full_causal)"}));
  expect_no_output();
  const RunResult g = run_runtime({"generate", "--model", model_.string(), "--ids", "1,2,3", "-n", "2", "--print-ids",
                                   "--attention", "swa", "--set", "l2a_dense.window=4"},
                                  60);
  EXPECT_TRUE(is_clean_error(g, {"'l2a_dense' is not one of the backends of this run (swa)"}));
  // Scoped to the backend in use, it applies (swa needs its window).
  const RunResult ok = logits({"--attention", "swa", "--set", "swa.window=4"});
  EXPECT_TRUE(ok.ok()) << ok.describe();
}

TEST_F(CliErrors, GenerateOnCorruptModel) {
  fs::resize_file(st(), fs::file_size(st()) / 3);
  const RunResult r =
      run_runtime({"generate", "--model", model_.string(), "--ids", "1,2,3", "--max-new-tokens", "4", "--print-ids"}, 60);
  EXPECT_TRUE(is_clean_error(r, {"model.safetensors"}, {kPastEnd}));
  EXPECT_TRUE(r.out.empty() || r.out == "\n") << "ids printed for a corrupt model: " << r.out;
}

// A NaN in a norm weight (issue 11): the model would otherwise run and print finite logits.
// Rejected at load, naming the file, the tensor, the kind and the element.
TEST_F(CliErrors, NanInNormWeight) {
  const std::string name = "model.layers.1.post_attention_layernorm.weight";  // [40] float32
  Safetensors s = load();
  const size_t begin = s.header.at(name).at("data_offsets").at(0).get<size_t>();
  const uint32_t nan_bits = 0x7fc00000u;
  std::memcpy(s.data.data() + begin + 3 * 4, &nan_bits, 4);
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {"model.safetensors", "tensor '" + name + "'",
                                        "non-finite value (nan) at element 3"}));
  expect_no_output();
}

TEST_F(CliErrors, InfInWeight) {
  Safetensors s = load();
  const size_t begin = s.header.at(kTensor).at("data_offsets").at(0).get<size_t>();
  const uint32_t neg_inf_bits = 0xff800000u;
  std::memcpy(s.data.data() + begin + 41 * 4, &neg_inf_bits, 4);
  s.save(st());
  EXPECT_TRUE(is_clean_error(logits(), {"tensor '" + kTensor + "'", "non-finite value (-inf) at element 41"}));
  expect_no_output();
}

}  // namespace

// Cases a CLI fuzz found (each once a crash, a hang or a silent exit 0): a clean error now.
TEST_F(CliErrors, FuzzFoundFlagValues) {
  // --threads past what the OpenMP runtime can create (once a segfault).
  EXPECT_TRUE(is_clean_error(logits({"--threads", "100000"}), {"--threads", "100000"})) << "threads";
  // RoPE bases that are NaN (once ignored) or so small the frequencies overflow (once NaN logits).
  for (const std::string theta : {"nan", "1e-300", "inf"}) {
    EXPECT_TRUE(is_clean_error(logits({"--rope-theta", theta}), {"--rope-theta"})) << theta;
    EXPECT_TRUE(is_clean_error(logits({"--set", "rope_theta=" + theta}), {"rope_theta"})) << theta;
  }
  expect_no_output();
}

TEST_F(CliErrors, FuzzFoundFiles) {
  // A FIFO where config.json should be: an error, not a read that blocks for ever.
  fs::remove(model_ / "config.json");
  ASSERT_EQ(::mkfifo((model_ / "config.json").c_str(), 0644), 0);
  EXPECT_TRUE(is_clean_error(logits(), {"config.json", "not a regular file"}));
  // A train config that is a directory; an empty --out.
  fs::create_directories(tmp_ / "cfgdir");
  const RunResult dir_cfg = run_runtime({"train", "--model", (l2a_dir() / "paper").string(), "--config",
                                         (tmp_ / "cfgdir").string(), "--data", (l2a_dir() / "tokens.bin").string(),
                                         "--steps", "1", "--out", (tmp_ / "run").string()});
  EXPECT_TRUE(is_clean_error(dir_cfg, {"cfgdir", "is a directory"})) << dir_cfg.describe();
  const RunResult empty_out = run_runtime({"train", "--model", (l2a_dir() / "paper").string(), "--data",
                                           (l2a_dir() / "tokens.bin").string(), "--steps", "1", "--out", ""});
  EXPECT_TRUE(is_clean_error(empty_out, {"--out", "empty path"})) << empty_out.describe();
}

// runtime eval checks every backend, flag and document before it writes anything.
TEST_F(CliErrors, EvalWritesNothingBeforeItsChecksPass) {
  const fs::path eval_dir = fs::path(RT_FIXTURES_DIR) / "eval";
  const std::string tok = (fs::path(RT_SHARED_DATA_DIR) / "qwen2.5-tokenizer").string();
  auto eval = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"eval", "--model", (eval_dir / "model").string(), "--tokenizer", tok,
                                  "--output", (tmp_ / "ev").string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return run_runtime(a, 120);
  };
  const std::string ppl = "ppl=" + (eval_dir / "data" / "ppl.txt").string();
  EXPECT_TRUE(is_clean_error(eval({"--tasks", "ppl", "--data", ppl, "--attention", "full_causal,zz"}), {"zz"}));
  EXPECT_TRUE(is_clean_error(eval({"--tasks", "ppl", "--data", ppl, "--attention", "swa,swa", "--window", "4"}),
                             {"'swa' is listed twice"}));
  write_text(tmp_ / "bad.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"label\": 0}\n");
  EXPECT_TRUE(is_clean_error(eval({"--tasks", "piqa", "--data", "piqa=" + (tmp_ / "bad.jsonl").string()}),
                             {"missing field 'sol2'"}));
  const std::string hay = "niah=" + (fs::path(RT_SHARED_DATA_DIR) / "wikitext-2" / "test.txt").string();
  EXPECT_TRUE(is_clean_error(eval({"--tasks", "niah", "--data", hay, "--niah-lengths", ""}),
                             {"--niah-lengths", "no length"}));
  EXPECT_FALSE(fs::exists(tmp_ / "ev")) << "a refused eval created its output directory";
  // profile: an unknown training regime.
  const RunResult p = run_runtime({"profile", "--model", model_.string(), "--attention", "full_causal", "--seq", "8",
                                   "--train", "bogus"});
  EXPECT_TRUE(is_clean_error(p, {"--train", "bogus"})) << p.describe();
}
