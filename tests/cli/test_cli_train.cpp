// `runtime train` and `runtime sparsity` end to end on the tiny fixtures of
// tools/make_l2a_fixtures.py: the loss curve of a 50-step run against the same training in
// PyTorch, bit-identical resume (on the CPU, and with --device cuda where there is a GPU), the
// exported model loading back, the tokens-per-parameter warning, the sparsity report, and the
// training command's error paths.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli_test_util.h"

extern char** environ;

namespace {

using namespace rt::test;
using json = nlohmann::json;

std::vector<json> metrics(const fs::path& out) { return read_jsonl(out / "metrics.jsonl"); }

std::string curve_config(const json& c) {
  std::ostringstream t;
  t << "[train]\nregime = \"" << c["regime"].get<std::string>() << "\"\nseq_len = " << c["seq_len"]
    << "\nbatch_size = " << c["batch_size"] << "\nlr = " << c["lr_max"] << "\nwarmup_steps = " << c["warmup_steps"]
    << "\nweight_decay = " << c["weight_decay"] << "\nbeta1 = " << c["betas"][0] << "\nbeta2 = " << c["betas"][1]
    << "\neps = " << c["eps"] << "\nclip_norm = " << c["clip"] << "\nshuffle = false\n";
  return t.str();
}

class TrainCurve : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainCurve, MatchesPyTorch) {
  ASSERT_TRUE(runtime_available());
  json curve;
  const json curves = read_json(l2a_dir() / "curves.json");
  for (const auto& c : curves["curves"])
    if (c["name"] == GetParam()) curve = c;
  ASSERT_FALSE(curve.is_null());
  TempDir tmp;
  write_text(tmp / "train.toml", curve_config(curve));
  const auto r = run_runtime({"train", "--model", (l2a_dir() / curve["model_dir"].get<std::string>()).string(),
                              "--attention", "full_causal", "--config", (tmp / "train.toml").string(), "--data",
                              (l2a_dir() / "tokens.bin").string(), "--steps", curve["steps"].dump(), "--out",
                              (tmp / "run").string(), "--quiet"},
                             300);
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto rows = metrics(tmp / "run");
  ASSERT_EQ(rows.size(), curve["per_step"]["loss"].size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const double want = curve["per_step"]["loss"][i], got = rows[i]["loss"];
    EXPECT_NEAR(got, want, 1e-4 * want) << "step " << i + 1;
    const double gw = curve["per_step"]["grad_norm"][i], gg = rows[i]["grad_norm"];
    EXPECT_NEAR(gg, gw, 1e-3 * gw) << "grad norm, step " << i + 1;
    EXPECT_NEAR(rows[i]["lr"].get<double>(), curve["per_step"]["lr"][i].get<double>(), 1e-12) << "lr, step " << i + 1;
    EXPECT_EQ(rows[i]["clipped"].get<bool>(), curve["per_step"]["clipped"][i].get<bool>()) << "step " << i + 1;
  }
  EXPECT_TRUE(fs::exists(tmp / "run" / "model" / "model.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TrainCurve, ::testing::Values("plain_full", "plain_attention"));

const char* kL2aConfig = R"([train]
regime = "attention"
seq_len = 24
batch_size = 2
lr = 3e-3
warmup_steps = 2
seed = 5
shuffle = true
checkpoint_every = 2

[attention]
layout = "paper"
window = 8
lambda = 0.05
lambda_schedule = "ramp"
)";

std::vector<std::string> train_args(const TempDir& tmp, const std::string& out, int steps) {
  return {"train", "--model", (l2a_dir() / "paper").string(), "--config", (tmp / "l2a.toml").string(), "--data",
          (l2a_dir() / "tokens.bin").string(), "--steps", std::to_string(steps), "--out", (tmp / out).string(),
          "--quiet"};
}

// 6 steps in one go versus --stop-at 3 then --resume: identical losses for steps 4-6 and
// identical metrics files apart from timings.
TEST(TrainResume, BitIdentical) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  auto a = run_runtime(train_args(tmp, "full", 6), 300);
  ASSERT_TRUE(a.ok()) << a.describe();
  auto args = train_args(tmp, "split", 6);
  args.push_back("--stop-at");
  args.push_back("3");
  auto b1 = run_runtime(args, 300);
  ASSERT_TRUE(b1.ok()) << b1.describe();
  EXPECT_FALSE(fs::exists(tmp / "split" / "model")) << "an interrupted run must not export";
  args = train_args(tmp, "split", 6);
  args.push_back("--resume");
  auto b2 = run_runtime(args, 300);
  ASSERT_TRUE(b2.ok()) << b2.describe();
  const auto full = metrics(tmp / "full"), split = metrics(tmp / "split");
  ASSERT_EQ(full.size(), 6u);
  ASSERT_EQ(split.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    for (const char* k : {"step", "loss", "lm_loss", "reg_loss", "sparsity", "lr", "grad_norm", "sparsity_per_layer"})
      EXPECT_EQ(full[i][k], split[i][k]) << k << " at step " << i + 1;
  EXPECT_GT(full[5]["reg_loss"].get<double>(), 0.0);
  EXPECT_EQ(read_text(tmp / "full" / "model" / "model.safetensors"), read_text(tmp / "split" / "model" / "model.safetensors"));

  // Another --model does not resume: the frozen weights of this regime are not in the checkpoint.
  args = train_args(tmp, "other", 6);
  args.insert(args.end(), {"--stop-at", "3"});
  ASSERT_TRUE(run_runtime(args, 300).ok());
  args = train_args(tmp, "other", 6);
  args[2] = (l2a_dir() / "base").string();
  args.insert(args.end(), {"--attention", "l2a_dense", "--resume"});
  const auto other = run_runtime(args, 300);
  EXPECT_FALSE(other.ok());
  EXPECT_NE(other.err.find("was written for model 'paper', this run has 'base'"), std::string::npos) << other.err;

  // The export loads as an L2A model by default and runs.
  auto lg = run_runtime({"logits", "--model", (tmp / "full" / "model").string(), "--ids", "1,2,3,4,5,6,7,8,9,10",
                         "--out", (tmp / "lg.npy").string()});
  ASSERT_TRUE(lg.ok()) << lg.describe();
  EXPECT_NE(lg.err.find("l2a_dense"), std::string::npos) << lg.err;

  // Sparsity report over the data.
  auto sp = run_runtime({"sparsity", "--model", (tmp / "full" / "model").string(), "--data",
                         (l2a_dir() / "tokens.bin").string(), "--seq", "24", "--max-sequences", "4", "--json",
                         (tmp / "sp.json").string(), "--csv", (tmp / "sp.csv").string()});
  ASSERT_TRUE(sp.ok()) << sp.describe();
  const json rep = read_json(tmp / "sp.json");
  EXPECT_EQ(rep["layers"].size(), 2u);
  EXPECT_GE(rep["sparsity"].get<double>(), 0.0);
  EXPECT_LE(rep["sparsity"].get<double>(), 1.0);
  EXPECT_EQ(rep["heatmap"].size(), 2u);
}

// ---- interruption: SIGINT/SIGTERM checkpoint the completed step and exit 128+signal ----------

// `runtime args...` started in the background, stdin /dev/null, stdout and stderr to files.
pid_t spawn_runtime(const std::vector<std::string>& args, const fs::path& out_file, const fs::path& err_file) {
  std::vector<std::string> argv{runtime_bin().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// Waits for the child (SIGKILL after timeout_s); returns its waitpid status, or -1 on timeout.
int wait_child(pid_t pid, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

size_t metrics_lines(const fs::path& out) {
  std::ifstream in(out / "metrics.jsonl");
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty() && line.back() == '}';
  return n;
}

std::vector<std::string> step_dirs(const fs::path& out) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out / "checkpoints"))
    if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0)
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Long enough that a signal sent after the first metrics line lands well before the end (a step
// of this config takes a good fraction of a second on the CPU, so this runs for seconds).
constexpr int kInterruptSteps = 16;

std::string interrupt_config() {
  std::string c = kL2aConfig;
  const std::string from = "checkpoint_every = 2", to = "checkpoint_every = 100000";
  c.replace(c.find(from), from.size(), to);
  return c;
}

// Starts a run of kInterruptSteps, sends `sig` once it has logged a step, and returns the child's
// status and stderr.
std::pair<int, std::string> interrupted_run(const TempDir& tmp, const std::string& out, int sig) {
  const pid_t pid = spawn_runtime(train_args(tmp, out, kInterruptSteps), tmp / (out + ".out"), tmp / (out + ".err"));
  EXPECT_GT(pid, 0);
  if (pid <= 0) return {-1, ""};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (metrics_lines(tmp / out) < 1 && std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) return {st, read_text(tmp / (out + ".err"))};  // ended early
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, sig);
  const int status = wait_child(pid, 300);
  return {status, read_text(tmp / (out + ".err"))};
}

TEST(TrainInterrupt, SigintCheckpointsAndResumesBitIdentically) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", interrupt_config());

  const auto [status, err] = interrupted_run(tmp, "split", SIGINT);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 130) << err;
  const auto rows = metrics(tmp / "split");
  ASSERT_GE(rows.size(), 1u);
  ASSERT_LT(rows.size(), static_cast<size_t>(kInterruptSteps)) << "the run ended before the signal";
  const int64_t k = rows.back()["step"].get<int64_t>();
  const std::string dir = (tmp / "split" / "checkpoints" / ("step_" + [&] {
                            char b[16];
                            std::snprintf(b, sizeof b, "%08lld", static_cast<long long>(k));
                            return std::string(b);
                          }())).string();
  EXPECT_NE(err.find("interrupted at step " + std::to_string(k)), std::string::npos) << err;
  EXPECT_NE(err.find(dir), std::string::npos) << err;
  EXPECT_NE(err.find("--resume"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(fs::path(dir) / "manifest.json")) << dir;
  EXPECT_FALSE(fs::exists(tmp / "split" / "model")) << "an interrupted run must not export";

  auto args = train_args(tmp, "split", kInterruptSteps);
  args.push_back("--resume");
  const auto resumed = run_runtime(args, 600);
  ASSERT_TRUE(resumed.ok()) << resumed.describe();
  const auto full_run = run_runtime(train_args(tmp, "full", kInterruptSteps), 600);
  ASSERT_TRUE(full_run.ok()) << full_run.describe();
  const auto full = metrics(tmp / "full"), split = metrics(tmp / "split");
  ASSERT_EQ(full.size(), static_cast<size_t>(kInterruptSteps));
  ASSERT_EQ(split.size(), static_cast<size_t>(kInterruptSteps));
  size_t mismatches = 0;
  for (size_t i = 0; i < full.size(); ++i)
    for (const char* key : {"step", "loss", "lm_loss", "reg_loss", "grad_norm"})
      if (full[i][key] != split[i][key] && ++mismatches <= 5)
        ADD_FAILURE() << key << " at step " << i + 1 << ": " << full[i][key] << " vs " << split[i][key];
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(read_text(tmp / "full" / "model" / "model.safetensors"),
            read_text(tmp / "split" / "model" / "model.safetensors"));
}

TEST(TrainInterrupt, SigtermExits143WithACheckpoint) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", interrupt_config());
  const auto [status, err] = interrupted_run(tmp, "run", SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 143) << err;
  EXPECT_NE(err.find("interrupted at step"), std::string::npos) << err;
  EXPECT_EQ(step_dirs(tmp / "run").size(), 1u);
}

// A step of a huge batch (hours of sequences) stops between its sequences on a signal instead of
// holding the signal until the step ends; nothing of it is applied or checkpointed.
TEST(TrainInterrupt, LongStepStopsBetweenSequences) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  std::string c = interrupt_config();
  const std::string from = "batch_size = 2", to = "batch_size = 100000";
  c.replace(c.find(from), from.size(), to);
  write_text(tmp / "l2a.toml", c);
  const pid_t pid = spawn_runtime(train_args(tmp, "run", 2), tmp / "run.out", tmp / "run.err");
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (read_text(tmp / "run.err").find("train: ") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // into the first step's sequences
  const auto sent = std::chrono::steady_clock::now();
  ::kill(pid, SIGTERM);
  const int status = wait_child(pid, 60);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
  const std::string err = read_text(tmp / "run.err");
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 143) << err;
  EXPECT_LT(waited, 20.0) << "the signal waited for the step to end";
  EXPECT_NE(err.find("before any step of this run finished"), std::string::npos) << err;
  EXPECT_EQ(metrics_lines(tmp / "run"), 0);
  EXPECT_TRUE(!fs::exists(tmp / "run" / "checkpoints") || step_dirs(tmp / "run").empty());
}

TEST(TrainCheckpoints, KeepsTheNewestK) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  auto args = train_args(tmp, "run", 5);
  for (const char* s : {"train.checkpoint_every=1", "train.keep_checkpoints=2"}) {
    args.push_back("--set");
    args.push_back(s);
  }
  const auto r = run_runtime(args, 300);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(step_dirs(tmp / "run"), (std::vector<std::string>{"step_00000004", "step_00000005"}));
}

// ---- the same resume check on the GPU ---------------------------------------------------------
// Why --device cuda cannot run here (no GPU, or a binary without the CUDA backend: the runtime's
// own "--device cuda: ..." message), or empty when it can. Asked once, of the runtime itself, so
// this file needs no CUDA. Any other failure of the probe is left to the tests to report.
const std::string& cuda_unavailable() {
  static const std::string reason = [] {
    TempDir tmp("rt_cuda_probe");
    const auto r = run_runtime({"logits", "--model", (l2a_dir() / "base").string(), "--ids", "1,2,3", "--device",
                                "cuda", "--out", (tmp / "probe.npy").string()});
    const size_t at = r.err.find("--device cuda:");
    if (r.ok() || at == std::string::npos) return std::string();
    return r.err.substr(at, r.err.find('\n', at) - at);
  }();
  return reason;
}

#define SKIP_WITHOUT_CUDA_DEVICE()                                  \
  do {                                                              \
    if (!cuda_unavailable().empty()) GTEST_SKIP() << cuda_unavailable(); \
  } while (0)

// Regime "full": every parameter trains, the embedding's gradient included (its scatter of
// repeated token ids is where an atomicAdd would make the GPU run irreproducible).
const char* kFullConfig = R"([train]
regime = "full"
seq_len = 24
batch_size = 2
lr = 3e-3
warmup_steps = 2
seed = 5
shuffle = true
checkpoint_every = 2
)";

// A tiny Qwen2 with head dim 64, the GPU's tensor-core attention path (the fixtures' head dim is
// 16, which runs the exact f32 kernels): weights from --init random.
const char* kHeadDim64Config = R"({
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
  "hidden_size": 128, "intermediate_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1,
  "num_hidden_layers": 2, "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 128,
  "max_window_layers": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": null,
  "use_sliding_window": false, "tie_word_embeddings": false, "vocab_size": 256, "bos_token_id": 0,
  "eos_token_id": 1, "dtype": "float32"
})";

// `steps` in one go versus --stop-at `stop` then --resume, with `args` (the model, attention and
// config; --data, --steps, --out, --quiet and --device cuda are added here): every metric of every
// step identical (timings and peak memory aside) and the exported weights byte for byte.
void expect_cuda_resume_bit_identical(const TempDir& tmp, const std::vector<std::string>& args, int steps, int stop) {
  auto run = [&](const std::string& out, std::initializer_list<const char*> extra) {
    std::vector<std::string> a = {"train"};
    a.insert(a.end(), args.begin(), args.end());
    for (const char* x : {"--device", "cuda", "--quiet", "--data"}) a.push_back(x);
    a.push_back((l2a_dir() / "tokens.bin").string());
    a.push_back("--steps");
    a.push_back(std::to_string(steps));
    a.push_back("--out");
    a.push_back((tmp / out).string());
    a.insert(a.end(), extra.begin(), extra.end());
    return run_runtime(a, 300);
  };
  const auto a = run("full", {});
  ASSERT_TRUE(a.ok()) << a.describe();
  const std::string stop_at = std::to_string(stop);
  const auto b1 = run("split", {"--stop-at", stop_at.c_str()});
  ASSERT_TRUE(b1.ok()) << b1.describe();
  EXPECT_FALSE(fs::exists(tmp / "split" / "model")) << "an interrupted run must not export";
  const auto b2 = run("split", {"--resume"});
  ASSERT_TRUE(b2.ok()) << b2.describe();
  const auto full = metrics(tmp / "full"), split = metrics(tmp / "split");
  ASSERT_EQ(full.size(), static_cast<size_t>(steps));
  ASSERT_EQ(split.size(), static_cast<size_t>(steps));
  // It ran on the device: only a device reports its peak memory.
  EXPECT_TRUE(full[0].contains("peak_mem_bytes")) << full[0].dump();
  for (size_t i = 0; i < full.size(); ++i) {
    json f = full[i], s = split[i];
    for (const char* k : {"tokens_per_s", "step_seconds", "peak_mem_bytes"}) {
      f.erase(k);
      s.erase(k);
    }
    EXPECT_EQ(f, s) << "step " << i + 1 << (i + 1 > static_cast<size_t>(stop) ? " (resumed)" : "")
                    << "\n  uninterrupted: " << f.dump() << "\n  resumed:       " << s.dump();
  }
  EXPECT_TRUE(std::isfinite(full.back()["loss"].get<double>())) << full.back().dump();
  ASSERT_TRUE(fs::exists(tmp / "full" / "model" / "model.safetensors"));
  EXPECT_TRUE(read_text(tmp / "full" / "model" / "model.safetensors") ==
              read_text(tmp / "split" / "model" / "model.safetensors"))
      << "the exported weights differ";
}

// full_causal, every parameter trained (regime full), on the fixture's base model.
TEST(TrainResumeCuda, FullCausalBitIdentical) {
  ASSERT_TRUE(runtime_available());
  SKIP_WITHOUT_CUDA_DEVICE();
  TempDir tmp;
  write_text(tmp / "full.toml", kFullConfig);
  expect_cuda_resume_bit_identical(
      tmp, {"--model", (l2a_dir() / "base").string(), "--attention", "full_causal", "--config", (tmp / "full.toml").string()},
      6, 3);
}

// l2a_fused with the options of the CPU test above (paper layout, window 8, regime attention,
// the ramped sparsity regularizer; the leak draws are a function of the step, so they replay).
TEST(TrainResumeCuda, L2aFusedBitIdentical) {
  ASSERT_TRUE(runtime_available());
  SKIP_WITHOUT_CUDA_DEVICE();
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  expect_cuda_resume_bit_identical(
      tmp, {"--model", (l2a_dir() / "paper").string(), "--attention", "l2a_fused", "--config", (tmp / "l2a.toml").string()},
      6, 3);
  const auto m = metrics(tmp / "split");
  ASSERT_FALSE(m.empty());
  EXPECT_FALSE(m.back()["sparsity"].is_null()) << m.back().dump();
  EXPECT_GT(m.back()["reg_loss"].get<double>(), 0.0) << m.back().dump();
}

// Head dim 64 (bf16 tensor-core attention kernels, forward and backward), both backends. Where
// the dispatcher may also pick cuDNN SDPA for a shape, the pick and cuDNN's backward must not
// make the resumed run differ either.
TEST(TrainResumeCuda, HeadDim64BitIdentical) {
  ASSERT_TRUE(runtime_available());
  SKIP_WITHOUT_CUDA_DEVICE();
  TempDir tmp;
  fs::create_directories(tmp / "d64");
  write_text(tmp / "d64" / "config.json", kHeadDim64Config);
  write_text(tmp / "full.toml", kFullConfig);
  write_text(tmp / "l2a.toml", kL2aConfig);
  for (const char* attention : {"full_causal", "l2a_fused"}) {
    SCOPED_TRACE(attention);
    TempDir runs(std::string("rt_cli_test_") + attention);
    const bool l2a = std::string(attention) == "l2a_fused";
    expect_cuda_resume_bit_identical(runs,
                                     {"--model", (tmp / "d64").string(), "--init", "random", "--seed", "3",
                                      "--attention", attention, "--config", (tmp / (l2a ? "l2a.toml" : "full.toml")).string()},
                                     6, 3);
  }
}

// A budget of fewer training tokens than trainable parameters is announced loudly.
TEST(TrainGuards, TokensPerParameterWarning) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  auto r = run_runtime(train_args(tmp, "run", 1), 300);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.err.find("tokens per"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("WARNING"), std::string::npos) << r.err;
}

void expect_error(const RunResult& r, std::initializer_list<const char*> parts) {
  EXPECT_TRUE(r.exited && r.exit_code != 0 && r.signal == 0) << r.describe();
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.describe();
  for (const char* p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "missing '" << p << "'\n" << r.describe();
}

// --set BACKEND.key=value next to the config's dotted keys: train.lr still reaches [train], the
// scoped options reach the plugin (and the run's record), and a scope outside the run is refused.
TEST(TrainScopedSet, RouterOptionsForTheBackend) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  auto args = train_args(tmp, "run", 1);
  for (const char* a : {"--attention", "l2a_dense", "--set", "train.lr=1e-3", "--set", "l2a_dense.router=fixed_rate",
                        "--set", "l2a_dense.sparsity=0.75", "--set", "sparsity=0.1"})
    args.push_back(a);
  auto r = run_runtime(args, 300);
  ASSERT_TRUE(r.ok()) << r.describe();
  const json cfg = read_json(tmp / "run" / "model" / "config.json");
  ASSERT_TRUE(cfg.contains("l2a")) << cfg.dump();
  EXPECT_EQ(cfg["l2a"]["router"], "fixed_rate") << cfg["l2a"].dump();
  EXPECT_DOUBLE_EQ(cfg["l2a"]["sparsity"].is_string() ? std::stod(cfg["l2a"]["sparsity"].get<std::string>())
                                                      : cfg["l2a"]["sparsity"].get<double>(),
                   0.75)
      << "the scoped value beats the bare one\n" << cfg["l2a"].dump();
  const auto m = metrics(tmp / "run");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_GT(m[0]["sparsity"].get<double>(), 0.5) << m[0].dump();  // fixed_rate at 0.75, not the learned router
  // The run's config record: train.lr reached [train], the scoped options [attention].
  const json manifest = read_json(tmp / "run" / "checkpoints" / "step_00000001" / "manifest.json");
  const json rec = manifest["config"].is_string() ? json::parse(manifest["config"].get<std::string>()) : manifest["config"];
  EXPECT_DOUBLE_EQ(rec["train"]["lr"].get<double>(), 1e-3) << rec.dump();
  EXPECT_EQ(rec["attention"]["router"], "fixed_rate") << rec.dump();
  EXPECT_EQ(rec["attention"]["sparsity"], "0.75") << rec.dump();

  args = train_args(tmp, "bad", 1);
  for (const char* a : {"--attention", "l2a_dense", "--set", "train.lr=1e-3", "--set", "swa.window=4"}) args.push_back(a);
  expect_error(run_runtime(args), {"--set swa.window=4: 'swa' is not one of the backends of this run (l2a_dense)"});
}

TEST(TrainErrors, ClearMessages) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  auto args = train_args(tmp, "none", 3);
  args.push_back("--resume");
  expect_error(run_runtime(args), {"--resume", "no checkpoint"});

  ASSERT_TRUE(run_runtime(train_args(tmp, "done", 2), 300).ok());
  expect_error(run_runtime(train_args(tmp, "done", 2)), {"already holds checkpoints", "--resume"});

  write_text(tmp / "bad.toml", "[train]\nlearning_rate = 3\n");
  expect_error(run_runtime({"train", "--model", (l2a_dir() / "base").string(), "--config", (tmp / "bad.toml").string(),
                            "--data", (l2a_dir() / "tokens.bin").string(), "--steps", "1", "--out",
                            (tmp / "x").string()}),
               {"bad.toml", "learning_rate"});

  write_text(tmp / "ro.toml", "[train]\nregime = \"router_only\"\nseq_len = 16\nbatch_size = 1\n");
  expect_error(run_runtime({"train", "--model", (l2a_dir() / "base").string(), "--attention", "full_causal", "--config",
                            (tmp / "ro.toml").string(), "--data", (l2a_dir() / "tokens.bin").string(), "--steps", "1",
                            "--out", (tmp / "y").string()}),
               {"router_only", "full_causal"});

  write_text(tmp / "odd.bin", "abcdefg");
  expect_error(run_runtime({"train", "--model", (l2a_dir() / "base").string(), "--config", (tmp / "ro.toml").string(),
                            "--attention", "l2a_dense", "--set", "window=4", "--data", (tmp / "odd.bin").string(),
                            "--steps", "1", "--out", (tmp / "z").string()}),
               {"odd.bin"});

  auto stop = train_args(tmp, "w", 3);
  stop.push_back("--stop-at");
  stop.push_back("4");
  expect_error(run_runtime(stop), {"--stop-at"});

  // --resume with a --stop-at at or before the checkpoint's step has nothing to do: an error, not
  // a silent exit 0. (The run "done" above checkpointed at its last step, 2, of 2; resume it as a
  // run of 3 steps stopping at 2.)
  auto early = train_args(tmp, "early", 3);
  early.insert(early.end(), {"--stop-at", "2"});
  ASSERT_TRUE(run_runtime(early, 300).ok());
  auto again = train_args(tmp, "early", 3);
  again.insert(again.end(), {"--resume", "--stop-at", "1"});
  expect_error(run_runtime(again), {"--stop-at 1", "step 2", "nothing to train"});

  // A step count whose token count overflows 64 bits is refused, not trained on "0 tokens".
  expect_error(run_runtime(train_args(tmp, "huge", 0) /* replaced below */), {"--steps"});
  auto huge = train_args(tmp, "huge", 1);
  for (size_t i = 0; i + 1 < huge.size(); ++i)
    if (huge[i] == "--steps") huge[i + 1] = "4611686018427387904";
  expect_error(run_runtime(huge), {"--steps 4611686018427387904", "64-bit"});
}

// ---- non-finite steps (issue 11, item 4) -------------------------------------------------------
// lr = 1e30: step 1 is finite and moves every weight by ~1e30, so from step 2 on the forward
// overflows and the loss and every gradient are NaN. Such a step is never applied: it is skipped
// (logged "skipped": true, grad_norm null, a warning line), the checkpoints written after it hold
// exactly the state after step 1 (masters and moments), and max_nonfinite_steps skips in a row
// stop the run with an error naming the loss and the first non-finite gradient, writing no
// checkpoint of the failing step and no export.
const char* kDivergeConfig = R"([train]
regime = "full"
seq_len = 16
batch_size = 1
lr = 1e30
clip_norm = 0
checkpoint_every = 1
keep_checkpoints = 0
)";

std::vector<std::string> diverge_args(const TempDir& tmp, int steps) {
  return {"train", "--model", (l2a_dir() / "base").string(), "--attention", "full_causal", "--config",
          (tmp / "diverge.toml").string(), "--data", (l2a_dir() / "tokens.bin").string(), "--steps",
          std::to_string(steps), "--out", (tmp / "run").string(), "--quiet"};
}

TEST(TrainNonFinite, SkipsStepsThenStopsNamingTheTensor) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "diverge.toml", kDivergeConfig);
  const auto r = run_runtime(diverge_args(tmp, 10), 300);
  // stderr carries the run's header and the skip warnings before the error line.
  ASSERT_TRUE(r.exited && r.exit_code != 0 && !r.timed_out) << r.describe();
  const std::string err_line = r.err.substr(r.err.rfind("error: "));
  for (const char* s : {"3 consecutive steps (2..4)", "train.max_nonfinite_steps = 3", "the loss is NaN",
                        "first non-finite gradient: lm_head.weight"})
    EXPECT_NE(err_line.find(s), std::string::npos) << s << "\n" << r.describe();
  for (const char* s : {"warning: train: step 2 skipped", "warning: train: step 3 skipped",
                        "warning: train: step 4 skipped"})
    EXPECT_NE(r.err.find(s), std::string::npos) << s << "\n" << r.describe();

  const auto rows = metrics(tmp / "run");
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_FALSE(rows[0]["skipped"].get<bool>());
  EXPECT_TRUE(rows[0]["grad_norm"].is_number());
  for (size_t i = 1; i < 4; ++i) {
    EXPECT_TRUE(rows[i]["skipped"].get<bool>()) << "step " << i + 1;
    EXPECT_TRUE(rows[i]["grad_norm"].is_null()) << "step " << i + 1;
    // The schedule does not advance over a skipped step.
    EXPECT_EQ(rows[i]["lr"], rows[1]["lr"]) << "step " << i + 1;
  }
  // Checkpoints of steps 1-3 (the skipped steps 2 and 3 changed nothing), none of the failing step 4.
  ASSERT_EQ(step_dirs(tmp / "run"), (std::vector<std::string>{"step_00000001", "step_00000002", "step_00000003"}));
  const fs::path ck = tmp / "run" / "checkpoints";
  const std::string after_step1 = read_text(ck / "step_00000001" / "state.safetensors");
  EXPECT_EQ(read_text(ck / "step_00000002" / "state.safetensors"), after_step1);
  EXPECT_EQ(read_text(ck / "step_00000003" / "state.safetensors"), after_step1);
  // ... and step 1 did change the weights (the test would prove nothing otherwise).
  const auto base = Safetensors::load(l2a_dir() / "base" / "model.safetensors");
  const auto state = Safetensors::load(ck / "step_00000001" / "state.safetensors");
  ASSERT_TRUE(state.header.contains("lm_head.weight"));
  EXPECT_NE(state.data.substr(state.header["lm_head.weight"]["data_offsets"][0].get<size_t>(), 64),
            base.data.substr(base.header["lm_head.weight"]["data_offsets"][0].get<size_t>(), 64));
  EXPECT_FALSE(fs::exists(tmp / "run" / "model")) << "a failed run must not export";
}

// train.max_nonfinite_steps sets K; with K = 1 the first non-finite step stops the run.
TEST(TrainNonFinite, LimitIsConfigurable) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "diverge.toml", kDivergeConfig);
  auto args = diverge_args(tmp, 10);
  args.insert(args.end(), {"--set", "train.max_nonfinite_steps=1"});
  const auto r = run_runtime(args, 300);
  ASSERT_TRUE(r.exited && r.exit_code == 1) << r.describe();
  EXPECT_NE(r.err.find("error: train: 1 consecutive steps (2..2)"), std::string::npos) << r.describe();
  EXPECT_EQ(step_dirs(tmp / "run"), (std::vector<std::string>{"step_00000001"}));
  EXPECT_EQ(metrics(tmp / "run").size(), 2u);
}

// The issue's own case: a finite loss whose gradient norm is not (grad_norm null), which AdamW used
// to apply. model.norm.weight scaled by 1e20 makes the logits ~1e21: the loss stays finite, but
// lm_head's gradient norm overflows float. Step 1 is skipped, so the checkpoint after it holds the
// base model's weights and zero moments; the second skip in a row (max_nonfinite_steps = 2) stops
// the run naming lm_head.weight.
TEST(TrainNonFinite, FiniteLossWithNonFiniteGradNormIsNotApplied) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  fs::copy(l2a_dir() / "base", tmp / "huge", fs::copy_options::recursive);
  auto st = Safetensors::load(tmp / "huge" / "model.safetensors");
  const json& info = st.header["model.norm.weight"];
  ASSERT_EQ(info["dtype"], "F32");
  for (size_t o = info["data_offsets"][0].get<size_t>(); o < info["data_offsets"][1].get<size_t>(); o += 4) {
    float v;
    std::memcpy(&v, st.data.data() + o, 4);
    v *= 1e20f;
    std::memcpy(st.data.data() + o, &v, 4);
  }
  st.save(tmp / "huge" / "model.safetensors");
  write_text(tmp / "c.toml", "[train]\nregime = \"full\"\nseq_len = 16\nbatch_size = 1\nlr = 1e-3\n"
                             "checkpoint_every = 1\nkeep_checkpoints = 0\nmax_nonfinite_steps = 2\n");
  const auto r = run_runtime({"train", "--model", (tmp / "huge").string(), "--attention", "full_causal", "--config",
                              (tmp / "c.toml").string(), "--data", (l2a_dir() / "tokens.bin").string(), "--steps",
                              "5", "--out", (tmp / "run").string(), "--quiet"},
                             300);
  ASSERT_TRUE(r.exited && r.exit_code == 1) << r.describe();
  const std::string err_line = r.err.substr(r.err.rfind("error: "));
  EXPECT_NE(err_line.find("2 consecutive steps (1..2)"), std::string::npos) << r.describe();
  EXPECT_NE(err_line.find("first non-finite gradient: lm_head.weight"), std::string::npos) << r.describe();
  const auto rows = metrics(tmp / "run");
  ASSERT_EQ(rows.size(), 2u);
  for (const auto& row : rows) {
    EXPECT_TRUE(row["loss"].is_number()) << row.dump();
    EXPECT_TRUE(row["grad_norm"].is_null()) << row.dump();
    EXPECT_TRUE(row["skipped"].get<bool>()) << row.dump();
  }
  ASSERT_EQ(step_dirs(tmp / "run"), (std::vector<std::string>{"step_00000001"}));
  const auto state = Safetensors::load(tmp / "run" / "checkpoints" / "step_00000001" / "state.safetensors");
  auto bytes = [](const Safetensors& f, const std::string& name) {
    const json& t = f.header.at(name);
    const size_t b = t["data_offsets"][0], e = t["data_offsets"][1];
    return f.data.substr(b, e - b);
  };
  for (const char* name : {"lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"}) {
    EXPECT_EQ(bytes(state, name), bytes(st, name)) << name << " changed in a skipped step";
    const std::string m = bytes(state, std::string(name) + ".exp_avg");
    EXPECT_EQ(m, std::string(m.size(), '\0')) << name << ": the moments changed in a skipped step";
  }
}

// The run of skipped steps is part of the checkpoint: stopped in the middle of one (--stop-at) and
// resumed, the run fails at the same step with the same count as when run in one go.
TEST(TrainNonFinite, StreakSurvivesResume) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "diverge.toml", kDivergeConfig);
  auto whole = diverge_args(tmp, 10);
  whole.insert(whole.end(), {"--set", "train.max_nonfinite_steps=4"});
  const auto a = run_runtime(whole, 300);
  ASSERT_TRUE(a.exited && a.exit_code == 1) << a.describe();
  EXPECT_NE(a.err.find("error: train: 4 consecutive steps (2..5)"), std::string::npos) << a.describe();

  fs::remove_all(tmp / "run");
  auto first = whole;
  first.insert(first.end(), {"--stop-at", "3"});
  const auto b1 = run_runtime(first, 300);
  ASSERT_TRUE(b1.ok()) << b1.describe();
  auto second = whole;
  second.push_back("--resume");
  const auto b2 = run_runtime(second, 300);
  ASSERT_TRUE(b2.exited && b2.exit_code == 1) << b2.describe();
  EXPECT_NE(b2.err.find("error: train: 4 consecutive steps (2..5)"), std::string::npos) << b2.describe();
  const auto rows = metrics(tmp / "run");
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[4]["lr"], rows[1]["lr"]);  // the schedule stood still across the resume too
}

// ---- held-out validation, data identity, log_every, the budget warning (issue 11, item 6 and usability)

// tokens.bin reversed: held-out data the fixtures' model has not been trained on.
fs::path write_val_bin(const TempDir& tmp) {
  const std::string src = read_text(l2a_dir() / "tokens.bin");
  std::string rev;
  for (size_t i = src.size(); i >= 4; i -= 4) rev += src.substr(i - 4, 4);
  write_text(tmp / "val.bin", rev);
  return tmp / "val.bin";
}

std::vector<std::string> with(std::vector<std::string> a, std::initializer_list<const char*> more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// --val-data: val_loss and val_ppl at every eval_every-th step (unset: checkpoint_every, 2 here) and
// the last, a stderr line for each; the training itself is exactly that of a run without it.
TEST(TrainValidation, LogsValLossWithoutChangingTraining) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  const std::string val = write_val_bin(tmp).string();
  auto a = run_runtime(train_args(tmp, "plain", 5), 300);
  ASSERT_TRUE(a.ok()) << a.describe();
  auto b = run_runtime(with(train_args(tmp, "val", 5), {"--val-data", val.c_str(), "--set", "train.val_sequences=4"}),
                       300);
  ASSERT_TRUE(b.ok()) << b.describe();
  const auto plain = metrics(tmp / "plain"), rows = metrics(tmp / "val");
  ASSERT_EQ(plain.size(), 5u);
  ASSERT_EQ(rows.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    const int64_t step = static_cast<int64_t>(i) + 1;
    EXPECT_FALSE(plain[i].contains("val_loss")) << plain[i].dump();
    for (const char* k : {"loss", "lm_loss", "reg_loss", "grad_norm", "sparsity", "lr"})
      EXPECT_EQ(plain[i][k], rows[i][k]) << k << " at step " << step;
    const bool evaluated = step % 2 == 0 || step == 5;
    ASSERT_EQ(rows[i].contains("val_loss"), evaluated) << rows[i].dump();
    ASSERT_EQ(rows[i].contains("val_ppl"), evaluated) << rows[i].dump();
    if (!evaluated) continue;
    const double vl = rows[i]["val_loss"], vp = rows[i]["val_ppl"];
    EXPECT_GT(vl, 0.0);
    EXPECT_LT(vl, 20.0);
    EXPECT_NEAR(vp, std::exp(vl), 1e-9 * vp);
    const std::string line = "val: step " + std::to_string(step) + "/5  val_loss ";
    EXPECT_NE(b.err.find(line), std::string::npos) << line << "\n" << b.err;
  }
  EXPECT_NE(b.err.find("val data: " + val + ": 4096 tokens, 4 of its 170 sequences of 24"), std::string::npos)
      << b.err;
  EXPECT_EQ(read_text(tmp / "plain" / "model" / "model.safetensors"),
            read_text(tmp / "val" / "model" / "model.safetensors"));

  // eval_every = 0: the last step only.
  auto c = run_runtime(
      with(train_args(tmp, "last", 3), {"--val-data", val.c_str(), "--set", "train.eval_every=0"}), 300);
  ASSERT_TRUE(c.ok()) << c.describe();
  const auto last = metrics(tmp / "last");
  ASSERT_EQ(last.size(), 3u);
  EXPECT_FALSE(last[0].contains("val_loss"));
  EXPECT_FALSE(last[1].contains("val_loss"));
  EXPECT_TRUE(last[2].contains("val_loss")) << last[2].dump();
}

// val_loss is the language-model loss alone: with lr so small that no weight moves, runs whose L2A
// regularizer weights differ by 1000x report the same val_loss while their reg_loss differs.
TEST(TrainValidation, ExcludesTheRegularizer) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  const std::string val = write_val_bin(tmp).string();
  std::vector<json> last;
  for (const char* lambda : {"attention.lambda=0.05", "attention.lambda=50"}) {
    const std::string out = std::string("run_") + (lambda + 17);
    auto r = run_runtime(with(train_args(tmp, out, 3), {"--val-data", val.c_str(), "--set", "train.lr=1e-30",
                                                        "--set", "train.weight_decay=0", "--set", lambda}),
                         300);
    ASSERT_TRUE(r.ok()) << r.describe();
    last.push_back(metrics(tmp / out).back());
  }
  EXPECT_GT(last[1]["reg_loss"].get<double>(), 100 * last[0]["reg_loss"].get<double>()) << last[1].dump();
  EXPECT_EQ(last[0]["val_loss"], last[1]["val_loss"]) << last[0].dump() << "\n" << last[1].dump();
}

// Stopped and resumed, a run with validation logs what it logs in one go: evaluation reads no
// training state (sampler, RNG) and advances none. eval_every and val_sequences may change on resume.
TEST(TrainValidation, ResumeBitIdentical) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  const std::string val = write_val_bin(tmp).string();
  auto args = [&](const char* out) {
    return with(train_args(tmp, out, 6), {"--val-data", val.c_str(), "--set", "train.val_sequences=3"});
  };
  ASSERT_TRUE(run_runtime(args("full"), 300).ok());
  auto b1 = run_runtime(with(args("split"), {"--stop-at", "3"}), 300);
  ASSERT_TRUE(b1.ok()) << b1.describe();
  auto b2 = run_runtime(with(args("split"), {"--resume"}), 300);
  ASSERT_TRUE(b2.ok()) << b2.describe();
  const auto full = metrics(tmp / "full"), split = metrics(tmp / "split");
  ASSERT_EQ(full.size(), 6u);
  ASSERT_EQ(split.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    for (const char* k : {"step", "loss", "lm_loss", "reg_loss", "grad_norm", "sparsity", "val_loss", "val_ppl"})
      EXPECT_EQ(full[i].value(k, json()), split[i].value(k, json())) << k << " at step " << i + 1;
  EXPECT_TRUE(full[5].contains("val_loss"));

  // Evaluation settings do not change the math: a resume may change them.
  auto c1 = run_runtime(with(args("other"), {"--stop-at", "2"}), 300);
  ASSERT_TRUE(c1.ok()) << c1.describe();
  auto c2 = run_runtime(with(args("other"), {"--resume", "--set", "train.eval_every=1", "--set",
                                             "train.val_sequences=5"}),
                        300);
  ASSERT_TRUE(c2.ok()) << c2.describe();
  const auto other = metrics(tmp / "other");
  ASSERT_EQ(other.size(), 6u);
  for (size_t i = 2; i < 6; ++i) {
    EXPECT_EQ(other[i]["loss"], full[i]["loss"]) << "step " << i + 1;
    EXPECT_TRUE(other[i].contains("val_loss")) << other[i].dump();
  }
}

// Validation data that is missing, or too short for one sequence, is an error naming the file.
TEST(TrainValidation, Errors) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  write_text(tmp / "tiny.bin", std::string(40, '\0'));  // 10 tokens < seq_len 24
  expect_error(run_runtime(with(train_args(tmp, "e1", 2), {"--val-data", (tmp / "tiny.bin").c_str()})),
               {"--val-data", "tiny.bin", "10 tokens", "seq_len = 24"});
  expect_error(run_runtime(with(train_args(tmp, "e2", 2), {"--val-data", (tmp / "nope.bin").c_str()})),
               {"--val-data", "nope.bin", "No such file"});
}

// --resume identifies the data by its content: the same file under another name resumes; another
// file under the same name is refused, naming it and what differs.
TEST(TrainResume, DataIdentifiedByContent) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  const std::string tokens = read_text(l2a_dir() / "tokens.bin");
  write_text(tmp / "a.bin", tokens);
  auto args = [&](const char* out, const fs::path& data) {
    auto a = train_args(tmp, out, 4);
    for (size_t i = 0; i + 1 < a.size(); ++i)
      if (a[i] == "--data") a[i + 1] = data.string();
    return a;
  };
  ASSERT_TRUE(run_runtime(with(args("moved", tmp / "a.bin"), {"--stop-at", "2"}), 300).ok());
  fs::create_directories(tmp / "elsewhere");
  fs::rename(tmp / "a.bin", tmp / "elsewhere" / "renamed.bin");
  auto r = run_runtime(with(args("moved", tmp / "elsewhere" / "renamed.bin"), {"--resume"}), 300);
  ASSERT_TRUE(r.ok()) << r.describe();
  ASSERT_EQ(metrics(tmp / "moved").size(), 4u);
  const json manifest = read_json(tmp / "moved" / "checkpoints" / "step_00000004" / "manifest.json");
  EXPECT_NE(manifest.dump().find("\"data_size\""), std::string::npos) << manifest.dump();

  // Same path, same size, different last token: refused.
  write_text(tmp / "b.bin", tokens);
  ASSERT_TRUE(run_runtime(with(args("changed", tmp / "b.bin"), {"--stop-at", "2"}), 300).ok());
  std::string edited = tokens;
  edited[edited.size() - 4] = static_cast<char>(edited[edited.size() - 4] ^ 1);
  write_text(tmp / "b.bin", edited);
  expect_error(run_runtime(with(args("changed", tmp / "b.bin"), {"--resume"})),
               {"--data", "b.bin", "is not the data", "crc32 of the last 1 MiB"});
  // Different size.
  write_text(tmp / "b.bin", tokens.substr(0, tokens.size() - 400));
  expect_error(run_runtime(with(args("changed", tmp / "b.bin"), {"--resume"})),
               {"b.bin", "size 15984 bytes, the checkpoint's data had 16384"});
}

// train.log_every: with stderr not a terminal, a progress line every log_every steps (and the
// last), not the default rhythm.
TEST(TrainLogEvery, PrintsEveryNStepsToALog) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "l2a.toml", kL2aConfig);
  auto args = train_args(tmp, "run", 7);
  args.erase(std::find(args.begin(), args.end(), "--quiet"));
  args.insert(args.end(), {"--set", "train.log_every=3"});
  auto r = run_runtime(args, 300);
  ASSERT_TRUE(r.ok()) << r.describe();
  for (const char* s : {"] step 3/7 ", "] step 6/7 ", "] step 7/7 "})
    EXPECT_NE(r.err.find(s), std::string::npos) << s << "\n" << r.err;
  for (const char* s : {"] step 1/7 ", "] step 2/7 ", "] step 4/7 ", "] step 5/7 "})
    EXPECT_EQ(r.err.find(s), std::string::npos) << s << "\n" << r.err;
  EXPECT_EQ(metrics(tmp / "run").size(), 7u);  // metrics.jsonl still has every step
}

// The low-budget warning for a backend without routing speaks of the budget only; an L2A backend's
// of the router's sparsity and the collapse detector.
TEST(TrainGuards, BudgetWarningFitsTheBackend) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  write_text(tmp / "full.toml", "[train]\nregime = \"full\"\nseq_len = 16\nbatch_size = 1\n");
  auto r = run_runtime({"train", "--model", (l2a_dir() / "base").string(), "--attention", "full_causal", "--config",
                        (tmp / "full.toml").string(), "--data", (l2a_dir() / "tokens.bin").string(), "--steps", "1",
                        "--out", (tmp / "full").string(), "--quiet"},
                       300);
  ASSERT_TRUE(r.ok()) << r.describe();
  std::string warning;
  std::istringstream in(r.err);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("WARNING: ", 0) == 0) warning += line + "\n";
  EXPECT_NE(warning.find("tokens per trainable parameter"), std::string::npos) << r.err;
  for (const char* s : {"sparsity", "router", "collapse", "COLLAPSES"})
    EXPECT_EQ(warning.find(s), std::string::npos) << s << "\n" << warning;

  write_text(tmp / "l2a.toml", kL2aConfig);
  auto l = run_runtime(train_args(tmp, "l2a", 1), 300);
  ASSERT_TRUE(l.ok()) << l.describe();
  for (const char* s : {"WARNING: ", "sparsity", "router_only", "collapse detector"})
    EXPECT_NE(l.err.find(s), std::string::npos) << s << "\n" << l.err;
}

}  // namespace
