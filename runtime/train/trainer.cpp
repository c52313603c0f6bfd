#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <functional>
#include <csignal>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/durable_file.h"
#include "dist/process_group.h"
#include "loader/safetensors_writer.h"
#include "model/host_values.h"
#include "rt/sdk/error.h"
#include "train/adamw_optimizer.h"
#include "train/checkpoint.h"
#include "train/data_fingerprint.h"
#include "train/lr_schedule.h"
#include "train/metrics_log.h"
#include "train/progress_bar.h"
#include "train/token_data.h"
#include "train/tokens_per_param.h"

namespace rt {

namespace {

// Plugin options as typed JSON values where they parse as numbers or booleans.
nlohmann::ordered_json typed_options(const Options& o) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [k, v] : o.all()) {
    if (v == "true" || v == "false") {
      j[k] = v == "true";
      continue;
    }
    try {
      size_t used = 0;
      const double d = std::stod(v, &used);
      if (used == v.size()) {
        if (d == std::floor(d) && std::abs(d) < 1e15 && v.find_first_of(".eE") == std::string::npos)
          j[k] = static_cast<int64_t>(d);
        else
          j[k] = d;
        continue;
      }
    } catch (const std::exception&) {
    }
    j[k] = v;
  }
  return j;
}

// The signal that asked training to stop (0: none). Written only by the handler.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// Installs on_stop_signal for SIGINT and SIGTERM for its lifetime. SA_RESETHAND puts the default
// disposition back as the handler runs, so a second Ctrl-C terminates at once.
class StopSignalGuard {
 public:
  explicit StopSignalGuard(bool active) : active_(active) {
    if (!active_) return;
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignalGuard() {
    if (!active_) return;
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;
  int pending() const { return active_ ? static_cast<int>(g_stop_signal) : 0; }

 private:
  bool active_;
  struct sigaction old_int_ {}, old_term_ {};
};

// "NaN", "inf", "-inf" or the number (printf would say "-nan" for a NaN with its sign bit set).
std::string num(double v) {
  if (std::isnan(v)) return "NaN";
  std::ostringstream o;
  o << v;
  return o.str();
}

struct StepRecord {
  double lm = 0, reg = 0, grad_norm = 0, lr = 0, seconds = 0;
  int64_t tokens = 0;
  std::vector<double> routed;  // per layer
  std::vector<LayerRouteCounts> counts;
};

}  // namespace

void export_model(Ops& ops, Qwen2Model& model, const std::filesystem::path& dir, const std::string& attention,
                  const Options& attention_options, const std::filesystem::path& tokenizer_source,
                  const MasterWeights* masters, const std::vector<std::string>& backend_sections) {
  std::filesystem::create_directories(dir);
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(model.config().raw.dump());
  // The backend and its options, so that loading the export runs it the way it was trained
  // (runtime/cli/model_session.cpp picks them up by default).
  nlohmann::ordered_json backend;
  backend["name"] = attention;
  backend["options"] = typed_options(attention_options);
  cfg["attention_backend"] = backend;
  // The backend's config section (L2A: "l2a") with its options; other backends' sections of the
  // base model's config no longer apply.
  const Capabilities caps = model.attention().capabilities();
  const std::string section = caps.config_section ? caps.config_section : "";
  for (const std::string& other : backend_sections)
    if (other != section) cfg.erase(other);
  if (!section.empty()) {
    nlohmann::ordered_json rec = typed_options(attention_options);
    if (caps.router && !rec.contains("router")) rec["router"] = "linear_sigmoid";  // the runtime's default router
    cfg[section] = rec;
    // An official-format model (l2a_qwen3) keeps its own fields in step with the options it was
    // trained with, which loading checks the "l2a" section against.
    if (cfg.value("model_type", "") == "l2a_qwen3") {
      const std::pair<const char*, const char*> official[] = {
          {"window", "sliding_window"}, {"tau", "sigmoid_temp"}, {"threshold", "sigmoid_threshold"}};
      for (const auto& [mine, theirs] : official)
        if (rec.contains(mine)) cfg[theirs] = rec[mine];
    }
  }
  const int64_t n_layers = model.dims().n_layers;
  auto set_layer_types = [&](const char* type) {
    cfg["layer_types"] = nlohmann::ordered_json::array();
    for (int64_t i = 0; i < n_layers; ++i) cfg["layer_types"].push_back(type);
  };
  if (caps.hf_attention == Capabilities::HfAttention::SlidingWindow && attention_options.has("window")) {
    // Hugging Face's own fields for sliding-window attention in every layer but the full_layers
    // option's, so that transformers (and a loader that reads only them) runs the export the same
    // way. transformers 4 reads max_window_layers (the first layers full), 5 layer_types.
    const std::vector<int> full =
        parse_layer_indices(attention_options.get_string("full_layers", ""), "full_layers", n_layers);
    auto is_full = [&](int64_t l) { return std::find(full.begin(), full.end(), l) != full.end(); };
    int64_t leading_full = 0;
    while (leading_full < n_layers && is_full(leading_full)) ++leading_full;
    cfg["use_sliding_window"] = true;
    cfg["sliding_window"] = attention_options.get_int("window", 0);
    cfg["max_window_layers"] = leading_full;
    set_layer_types("sliding_attention");
    for (int l : full) cfg["layer_types"][static_cast<size_t>(l)] = "full_attention";
  } else if (caps.hf_attention == Capabilities::HfAttention::Full && cfg.contains("use_sliding_window") &&
             cfg["use_sliding_window"] == true) {
    // Trained with full attention in every layer: the base model's window no longer applies.
    cfg["use_sliding_window"] = false;
    if (cfg.contains("layer_types")) set_layer_types("full_attention");
  }
  std::vector<std::vector<float>> data;
  std::vector<StWriteTensor> tensors;
  const auto names = model.parameter_names();
  data.reserve(names.size());
  for (const auto& n : names) {
    // Trained parameters from their fp32 masters (on CUDA the model holds them rounded to bf16).
    const TensorView* m = masters ? masters->find(n) : nullptr;
    data.push_back(host_floats(ops, m ? *m : model.parameter(n)));
  }
  for (size_t i = 0; i < names.size(); ++i) {
    TensorView p = model.parameter(names[i]);
    StWriteTensor t;
    t.name = names[i];
    t.dtype = StDType::F32;
    t.shape.assign(p.shape.begin(), p.shape.begin() + p.ndim);
    t.data = data[i].data();
    t.nbytes = data[i].size() * sizeof(float);
    tensors.push_back(t);
  }
  save_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  cfg["torch_dtype"] = "float32";
  write_file_atomic(dir / "config.json", cfg.dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "generation_config.json"}) {
    if (tokenizer_source.empty()) break;
    std::error_code ec;
    if (std::filesystem::exists(tokenizer_source / f, ec))
      std::filesystem::copy_file(tokenizer_source / f, dir / f, std::filesystem::copy_options::overwrite_existing);
  }
}

namespace {

// Data parallelism: after each rank has accumulated its block of the step's sequences, every sum
// the step reports or applies becomes the sum over ranks: the gradients (one buffer in the
// optimizer's order, the same on every rank), the LM loss, the router statistics and the host-side
// routing counts.
// Every rank then holds the same bits and takes the same optimizer step.
void reduce_step(dist::ProcessGroup& group, Ops& ops, AdamWOptimizer& opt, TensorView lm, TensorView stats,
                 std::vector<LayerRouteCounts>& counts, bool grads_summed) {
  if (!grads_summed) opt.grad_buffer().sum_over_ranks(group);
  group.allreduce_sum(lm);
  group.allreduce_sum(stats);
  const int64_t L = static_cast<int64_t>(counts.size());
  std::vector<float> host(static_cast<size_t>(3 * L));
  for (int64_t l = 0; l < L; ++l) {
    host[static_cast<size_t>(3 * l)] = static_cast<float>(counts[static_cast<size_t>(l)].tokens);
    host[static_cast<size_t>(3 * l + 1)] = static_cast<float>(counts[static_cast<size_t>(l)].forced_local);
    host[static_cast<size_t>(3 * l + 2)] = static_cast<float>(counts[static_cast<size_t>(l)].leaked);
  }
  if (L > 0) {
    Tensor dev = ops.alloc(DType::F32, {3 * L});
    ops.copy(TensorView::contiguous(host.data(), DType::F32, Device::CPU, {3 * L}), dev);
    group.allreduce_sum(dev);
    ops.copy(dev, TensorView::contiguous(host.data(), DType::F32, Device::CPU, {3 * L}));
  }
  for (int64_t l = 0; l < L; ++l) {
    counts[static_cast<size_t>(l)].tokens = static_cast<int64_t>(std::llround(host[static_cast<size_t>(3 * l)]));
    counts[static_cast<size_t>(l)].forced_local = static_cast<int64_t>(std::llround(host[static_cast<size_t>(3 * l + 1)]));
    counts[static_cast<size_t>(l)].leaked = static_cast<int64_t>(std::llround(host[static_cast<size_t>(3 * l + 2)]));
  }
}

// Whether `mine` holds on any rank (one small sum over ranks; `mine` itself without a group).
bool any_rank(dist::ProcessGroup* group, Ops& ops, bool mine) {
  if (!group || group->size() == 1) return mine;
  Tensor flag = ops.alloc(DType::F32, {1});
  ops.fill(flag, mine ? 1.f : 0.f);
  group->allreduce_sum(flag);
  float any = 0;
  ops.copy(flag, TensorView::contiguous(&any, DType::F32, Device::CPU, {1}));
  return any > 0;
}

// A stop signal any rank caught stops every rank after the same step (each would otherwise wait
// for the others' next collective). Returns the signal to act on (SIGTERM for one seen elsewhere).
int agree_on_stop(dist::ProcessGroup* group, Ops& ops, int local_signal) {
  const bool any = any_rank(group, ops, local_signal != 0);
  return local_signal ? local_signal : any ? SIGTERM : 0;
}

}  // namespace

TrainSummary run_training(Ops& ops, Qwen2Model& model, const TrainConfig& cfg, const TrainRun& run,
                          const Tokenizer* tokenizer) {
  RT_CHECK(run.steps >= 1, "train: --steps must be >= 1, found ", run.steps);
  RT_CHECK(!run.stop_at || (*run.stop_at >= 1 && *run.stop_at <= run.steps), "train: --stop-at must be in [1, ",
           run.steps, "], found ", run.stop_at.value_or(0));
  RT_CHECK(cfg.micro_batch == 1, cfg.source, ": [train] micro_batch must be 1 (each forward is one packed ",
           "sequence; batch_size sequences are accumulated per step), found ", cfg.micro_batch);
  RT_CHECK(cfg.seq_len <= model.dims().max_positions, cfg.source, ": [train] seq_len ", cfg.seq_len,
           " exceeds the model's max_position_embeddings (", model.dims().max_positions, ")");
  const ModelDims& dims = model.dims();
  const int L = static_cast<int>(dims.n_layers);
  const bool routed = model.attention().capabilities().router;
  const int rank = run.group ? run.group->rank() : 0, world = run.group ? run.group->size() : 1;
  const bool lead = rank == 0;  // writes metrics, checkpoints, the export and the messages
  RT_CHECK(cfg.batch_size % world == 0, cfg.source, ": [train] batch_size ", cfg.batch_size,
           " is not divisible by the ", world, " ranks of this run (batch_size is the global number of sequences ",
           "per step; each rank trains batch_size / ranks of them)");
  const int64_t per_rank = cfg.batch_size / world;

  AdamWSettings hp{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay};
  AdamWOptimizer opt(ops, model, trainable_parameters(regime_name(cfg.regime), model.parameter_names(), run.attention),
                     hp, cfg.zero_stage == 1 ? run.group : nullptr);
  TokenDataset data = TokenDataset::load(run.data, tokenizer, dims.vocab);
  SequenceSampler sampler(data, cfg.seq_len, cfg.seed, cfg.shuffle);
  // The data's identity for resume: its size and the crc32 of its head and tail, not its path.
  const DataFingerprint data_fp = fingerprint_data_file(run.data);
  // Held-out validation: a fixed set of sequences, evaluated with the inference forward (no
  // gradients, no regularizer, nothing of the training state read or advanced).
  std::vector<std::vector<int32_t>> val_seqs;
  int64_t val_available = 0, val_tokens = 0;
  if (!run.val_data.empty()) {
    const TokenDataset val = TokenDataset::load(run.val_data, tokenizer, dims.vocab);
    RT_CHECK(val.size() >= cfg.seq_len, "train: --val-data ", run.val_data.string(), ": ", val.size(),
             " tokens do not fill one sequence of train.seq_len = ", cfg.seq_len);
    val_seqs = evaluation_sequences(val, cfg.seq_len, cfg.val_sequences);
    val_available = val.size() / cfg.seq_len;
    val_tokens = val.size();
  }
  const int64_t eval_every = cfg.effective_eval_every(!val_seqs.empty());

  std::filesystem::create_directories(run.out);
  int64_t start = 0;
  int64_t applied = 0;           // optimizer updates applied (steps minus skipped non-finite steps)
  int64_t nonfinite_streak = 0;  // consecutive skipped steps up to the last one run
  if (run.resume) {
    // The newest intact checkpoint: checksums verified, corrupt newer ones skipped with a warning.
    auto loaded = load_latest_checkpoint(run.out);
    RT_CHECK(loaded.has_value(), "train --resume: no checkpoint in ", (run.out / "checkpoints").string(),
             " (start without --resume)");
    Checkpoint ck = std::move(*loaded);
    const std::filesystem::path* dir = &ck.dir;
    RT_CHECK(ck.meta.config_hash == cfg.config_hash(), "train --resume: ", dir->string(),
             " was written with a different training config (hash ", ck.meta.config_hash, ", now ",
             cfg.config_hash(), "); resume with the same --config and --set, or start a new --out");
    auto want = [&](const std::string& k, const std::string& v) {
      auto it = ck.meta.extra.find(k);
      RT_CHECK(it != ck.meta.extra.end() && it->second == v, "train --resume: ", dir->string(), " was written for ",
               k, " '", it == ck.meta.extra.end() ? "?" : it->second, "', this run has '", v, "'");
    };
    want("attention", run.attention);
    want("model", run.model_name);  // its frozen weights are not in the checkpoint
    want("steps", std::to_string(run.steps));
    if (const auto recorded = DataFingerprint::from_fields(ck.meta.extra, (*dir / "manifest.json").string())) {
      // The data by content: the same file moved or renamed resumes; another file at the same
      // path does not.
      const std::string diff = describe_fingerprint_difference(data_fp, *recorded);
      auto path = ck.meta.extra.find("data");
      RT_CHECK(diff.empty(), "train --resume: --data ", run.data.string(), " is not the data ", dir->string(),
               " was trained on (", path == ck.meta.extra.end() ? std::string("?") : path->second, "): ", diff,
               "; resume with that data, or start a new --out");
    } else {
      // A checkpoint from before data fingerprints: its path is all there is to compare.
      want("data", std::filesystem::absolute(run.data).string());
    }
    RT_CHECK(!run.stop_at || *run.stop_at > ck.meta.step, "train --resume: --stop-at ", run.stop_at.value_or(0),
             " is not after the checkpoint's step ", ck.meta.step, " (", dir->string(),
             "): there is nothing to train; give a later --stop-at, or none");
    opt.load_state(ck.tensors);
    sampler.set_cursor(ck.meta.cursor);
    start = ck.meta.step;
    // Skipped (non-finite) steps do not count as optimizer updates; checkpoints written before
    // step skipping existed have none.
    auto extra_int = [&](const std::string& k, int64_t dflt) {
      auto it = ck.meta.extra.find(k);
      if (it == ck.meta.extra.end()) return dflt;
      try {
        size_t used = 0;
        const long long v = std::stoll(it->second, &used);
        if (used == it->second.size() && v >= 0) return static_cast<int64_t>(v);
      } catch (const std::exception&) {
      }
      fail("train --resume: ", dir->string(), ": manifest field ", k, " is '", it->second,
           "', expected a non-negative integer");
    };
    applied = extra_int("optimizer_steps", start);
    nonfinite_streak = extra_int("nonfinite_streak", 0);
    // The sampler's cursor is global (every rank draws every sequence), so any world size resumes;
    // only the same one sums the gradients in the same order.
    const int64_t ck_world = extra_int("world_size", 1);
    if (lead && ck_world != world)
      std::cerr << "note: train --resume: " << dir->string() << " was written by " << ck_world << " rank(s), this run has "
                << world << ": the sequences and steps continue exactly, but gradients summed in another order "
                << "make the run not bit-identical to an uninterrupted one\n";
  } else {
    RT_CHECK(!find_latest_checkpoint(run.out).has_value(), "train: ", run.out.string(),
             " already holds checkpoints of a run; pass --resume to continue it, or choose another --out");
  }
  // Every rank checked the directory above before rank 0 writes anything into it.
  if (run.group) run.group->barrier();
  std::optional<MetricsLog> metrics;
  if (lead) metrics.emplace(run.out, run.resume ? std::optional<int64_t>(start) : std::nullopt);

  int64_t tokens_per_step = 0, total_tokens = 0;
  RT_CHECK(!__builtin_mul_overflow(cfg.batch_size, cfg.seq_len, &tokens_per_step) &&
               !__builtin_mul_overflow(tokens_per_step, run.steps, &total_tokens),
           "train: --steps ", run.steps, " x batch_size ", cfg.batch_size, " x seq_len ", cfg.seq_len,
           " tokens does not fit a 64-bit count; give fewer --steps");
  const int64_t trainable = opt.trainable_count();
  if (lead) {
    std::cerr << "train: " << run.model_name << " with " << run.attention << ", regime "
              << regime_name(cfg.regime) << ", " << opt.trainable().size() << " trainable tensors\n"
              << budget_line(trainable, total_tokens) << "\n";
    std::string warning;
    if (below_collapse_threshold(trainable, total_tokens, routed ? BudgetWarning::Routed : BudgetWarning::Plain,
                                 &warning))
      std::cerr << warning << "\n";
    std::cerr << "data: " << run.data.string() << ": " << data.size() << " tokens, " << sampler.num_sequences()
              << " sequences of " << cfg.seq_len << "\n";
    if (world > 1)
      std::cerr << "data parallel: " << world << " ranks, " << per_rank << " of the " << cfg.batch_size
                << " sequences of every step each; optimizer state "
                << (opt.sharded() ? "sharded (zero_stage 1): " : "on every rank: ") << std::fixed << std::setprecision(2)
                << static_cast<double>(opt.state_bytes()) / (1 << 20) << std::defaultfloat << " MiB on rank 0\n";
    if (!val_seqs.empty()) {
      std::cerr << "val data: " << run.val_data.string() << ": " << val_tokens << " tokens, " << val_seqs.size()
                << " of its " << val_available << " sequences of " << cfg.seq_len << " (train.val_sequences = "
                << cfg.val_sequences << "), evaluated ";
      if (eval_every > 0) std::cerr << "every " << eval_every << " steps and ";
      std::cerr << "at the last step\n";
    }
  }

  CollapseDetector collapse(cfg.collapse_loss, cfg.collapse_sparsity, cfg.collapse_patience);
  ProgressBar::Options popt;
  popt.every_steps = cfg.log_every;
  std::optional<ProgressBar> bar;
  if (!run.quiet && lead) bar.emplace(run.steps, start, popt);
  TrainSummary summary;
  summary.first_step = start + 1;
  summary.last_step = start;
  const int64_t last = run.stop_at ? *run.stop_at : run.steps;
  Tensor lm = ops.alloc(ops.accum_dtype(), {1});
  Tensor stats = ops.alloc(ops.accum_dtype(), {L, 2});
  std::vector<int32_t> seq;
  int64_t streak_first_step = 0;  // the first skipped step of the current streak, and what went wrong
  std::string streak_first;

  StopSignalGuard signals(run.handle_signals);
  const int keep_last = cfg.keep_checkpoints > 0 && cfg.keep_checkpoints < INT_MAX
                            ? static_cast<int>(cfg.keep_checkpoints)
                            : INT_MAX;  // 0: keep every checkpoint
  auto last_save = std::chrono::steady_clock::now();

  // The state after step `at` (the sampler at `cursor`, the optimizer as it is now).
  auto checkpoint = [&](int64_t at, SequenceSampler::Cursor cursor) {
    CheckpointMeta meta;
    meta.step = at;
    meta.cursor = cursor;
    meta.rng_state = "stateless: per-step randomness is a hash of (seed, step)";
    meta.config_json = cfg.to_json();
    meta.config_hash = cfg.config_hash();
    meta.extra = {{"attention", run.attention},
                  {"model", run.model_name},
                  {"steps", std::to_string(run.steps)},
                  {"data", std::filesystem::absolute(run.data).string()},  // for the record; resume compares data_*
                  {"optimizer_steps", std::to_string(applied)},
                  {"nonfinite_streak", std::to_string(nonfinite_streak)},
                  {"world_size", std::to_string(world)}};
    data_fp.to_fields(meta.extra);
    // Sharded, the state comes from every rank (a collective); rank 0 writes it.
    if (!lead && !opt.sharded()) return;
    const auto state = opt.state();
    if (lead) summary.last_checkpoint = save_checkpoint(run.out, meta, state, keep_last);
    summary.last_checkpoint_step = at;
    last_save = std::chrono::steady_clock::now();
  };
  ops.reset_peak_memory();
  for (int64_t step = start + 1; step <= last; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    TrainContext tc;
    tc.step = step;
    tc.total_steps = run.steps;
    tc.warmup_steps = cfg.warmup_steps;
    tc.loss_scale = 1.f / static_cast<float>(cfg.batch_size);
    tc.seed = cfg.seed;  // routed plugins draw their leaks per layer and forward from it
    std::vector<LayerRouteCounts> counts(static_cast<size_t>(L));
    tc.route_stats = stats;
    tc.route_counts = counts.data();
    ops.fill(lm, 0.f);
    ops.fill(stats, 0.f);
    opt.zero_grad();
    // On the CPU the last sequence's backward overlaps with summing the gradients it has finished
    // (a device backend sums them after the backward: its kernels are still queued when the host
    // reaches a stage).
    std::optional<OverlappedGradSum> overlap;
    const SequenceSampler::Cursor step_cursor = sampler.cursor();
    bool abandoned = false;
    for (int64_t b = 0; b < cfg.batch_size; ++b) {
      // A stop signal between the sequences of a long step (a large batch) abandons the step in a
      // single process: nothing of it is applied (ranks would have to agree first, so they finish it).
      if (world == 1 && b > 0 && signals.pending()) {
        abandoned = true;
        break;
      }
      sampler.next(seq);  // every rank draws every sequence: the single-process order and cursor
      if (b / per_rank != rank) continue;
      tc.micro = b;
      std::function<void(int)> final_stage;
      if (world > 1 && ops.device() == Device::CPU && b == (rank + 1) * per_rank - 1) {
        overlap.emplace(opt.grad_buffer(), *run.group);
        final_stage = [&](int stage) { overlap->stage_done(stage); };
      }
      model.train_sequence(seq, tc, opt.grads(), cfg.recompute, lm, final_stage);
    }
    if (abandoned) {
      if (bar) bar->finish();
      bar.reset();
      // The state before this step, unless the last checkpoint already holds it (or no step ran).
      if (step - 1 > start && summary.last_checkpoint_step != step - 1) checkpoint(step - 1, step_cursor);
      summary.interrupted_by = signals.pending();
      return summary;
    }
    if (overlap) overlap->finish();
    if (world > 1) reduce_step(*run.group, ops, opt, lm, stats, counts, /*grads_summed=*/overlap.has_value());
    StepRecord r;
    r.lm = host_doubles(ops, lm)[0];
    const auto st = host_doubles(ops, stats);
    r.routed.resize(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) {
      r.reg += st[static_cast<size_t>(2 * l)];
      r.routed[static_cast<size_t>(l)] = st[static_cast<size_t>(2 * l + 1)];
    }
    const double loss = r.lm + r.reg;
    r.grad_norm = opt.grad_norm();
    // A non-finite loss or gradient is never applied: the step is skipped (parameters, moments,
    // the LR schedule and AdamW's bias-correction count stay as they are), as mixed-precision
    // trainers skip an overflowed step, and max_nonfinite_steps skips in a row stop the run.
    const bool skipped = !std::isfinite(loss) || !std::isfinite(r.grad_norm);
    double clip = 1.0;
    r.lr = lr_at(cfg, applied, run.steps);
    if (!skipped) {
      clip = cfg.clip_norm > 0 && r.grad_norm > cfg.clip_norm ? cfg.clip_norm / (r.grad_norm + 1e-6) : 1.0;
      opt.step(r.lr, applied + 1, clip);
      ++applied;
      nonfinite_streak = 0;
    } else {
      ++nonfinite_streak;
      ++summary.skipped_steps;
      const auto bad = opt.first_nonfinite_grad();
      std::ostringstream what;
      if (!std::isfinite(loss)) what << "the loss is " << num(loss) << " (lm " << num(r.lm) << ", reg " << num(r.reg) << "); ";
      if (bad && !bad->norm_overflow)
        what << "first non-finite gradient: " << bad->name << " (element " << bad->index << " = " << num(bad->value) << ")";
      else if (bad)
        what << "grad norm " << num(r.grad_norm) << "; first non-finite gradient: " << bad->name
             << " (its norm overflows float; largest element " << bad->index << " = " << num(bad->value) << ")";
      else
        what << "every gradient is finite but their norm is " << num(r.grad_norm);
      if (nonfinite_streak == 1 || streak_first.empty()) {
        streak_first_step = step;
        streak_first = what.str();
      }
      if (bar && ::isatty(STDERR_FILENO)) std::cerr << "\n";
      if (lead)
        std::cerr << "warning: train: step " << step << " skipped (no update): " << what.str() << " ["
                  << nonfinite_streak << " in a row; the run stops at " << cfg.max_nonfinite_steps
                  << ", train.max_nonfinite_steps]\n";
    }
    ops.synchronize();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.tokens = tokens_per_step;

    nlohmann::ordered_json rec;
    rec["step"] = step;
    rec["loss"] = loss;
    rec["lm_loss"] = r.lm;
    rec["reg_loss"] = r.reg;
    std::optional<double> sparsity;
    if (routed) {
      double tok = 0, forced = 0, glob = 0;
      nlohmann::ordered_json per = nlohmann::ordered_json::array();
      for (int l = 0; l < L; ++l) {
        const double t = static_cast<double>(counts[static_cast<size_t>(l)].tokens);
        tok += t;
        forced += static_cast<double>(counts[static_cast<size_t>(l)].forced_local);
        glob += r.routed[static_cast<size_t>(l)];
        per.push_back(t > 0 ? 1.0 - r.routed[static_cast<size_t>(l)] / t : 0.0);
      }
      sparsity = tok > 0 ? 1.0 - glob / tok : 0.0;
      rec["sparsity"] = *sparsity;
      rec["sparsity_excl_forced"] = tok - forced > 0 ? 1.0 - glob / (tok - forced) : 0.0;
      rec["sparsity_per_layer"] = per;
    } else {
      rec["sparsity"] = nullptr;
    }
    rec["lr"] = r.lr;
    rec["grad_norm"] = r.grad_norm;
    rec["clipped"] = clip < 1.0;
    rec["skipped"] = skipped;
    std::string val_line;  // printed after the step's progress line
    if (lead && !val_seqs.empty() && ((eval_every > 0 && step % eval_every == 0) || step == run.steps)) {
      // The mean next-token loss over every predicted token of the validation set (the LM loss
      // alone: the L2A regularizer is a training objective, not a measure of the model).
      double sum = 0;
      int64_t predicted = 0;
      for (const auto& v : val_seqs) {
        int64_t n = 0;
        sum += model.sequence_loss(v, &n);
        predicted += n;
      }
      const double val_loss = sum / static_cast<double>(predicted);
      rec["val_loss"] = val_loss;
      rec["val_ppl"] = std::exp(val_loss);
      summary.last_val_loss = val_loss;
      std::ostringstream line;
      line << "val: step " << step << "/" << run.steps << "  val_loss " << num(val_loss) << "  val_ppl "
           << num(std::exp(val_loss)) << "  (" << val_seqs.size() << " sequences of " << cfg.seq_len << ")\n";
      val_line = line.str();
    }
    if (routed) {
      int64_t leaked = 0;
      for (const auto& c : counts) leaked += c.leaked;
      rec["leak_layers"] = leaked;  // layer forwards of this step whose global attention ran for every token
    }
    rec["tokens"] = r.tokens;
    rec["tokens_per_s"] = r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0.0;
    rec["step_seconds"] = r.seconds;
    if (const auto mem = ops.memory_stats(); mem.peak > 0) rec["peak_mem_bytes"] = mem.peak;
    rec["epoch"] = sampler.epochs_completed();
    if (metrics) metrics->append(rec);
    if (skipped && nonfinite_streak >= cfg.max_nonfinite_steps) {
      if (bar) bar->finish();
      bar.reset();
      // No checkpoint of this step: the last one written (if any) holds the last good state.
      fail("train: ", nonfinite_streak, " consecutive steps (", step - nonfinite_streak + 1, "..", step,
           ") had a non-finite loss or gradient and were skipped (train.max_nonfinite_steps = ",
           cfg.max_nonfinite_steps, "); at step ", streak_first_step, " ", streak_first,
           ". Lower [train] lr, set clip_norm, or check the data and the model's weights; no checkpoint of the",
           " skipped steps is written by this stop");
    }
    if (bar) bar->update(step, skipped ? summary.last_loss : loss, sparsity, r.tokens);
    if (!val_line.empty()) {
      if (bar && ::isatty(STDERR_FILENO)) std::cerr << "\n";  // below the bar's in-place line
      std::cerr << val_line << std::flush;
    }
    summary.last_step = step;
    if (!skipped) summary.last_loss = loss;

    const bool final_step = step == last;
    const bool collapsed = !skipped && collapse.update(step, loss, sparsity);
    // The last step finishes the run anyway.
    const int stop_signal = final_step ? 0 : agree_on_stop(run.group, ops, signals.pending());
    const bool timed = cfg.checkpoint_minutes > 0 &&
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save).count() >=
                           cfg.checkpoint_minutes * 60.0;
    bool save = (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || timed || final_step || stop_signal ||
                (collapsed && cfg.collapse_action == CollapseAction::Stop);
    // Rank 0's clock decides a timed checkpoint; a sharded state needs every rank to take part.
    if (opt.sharded()) save = any_rank(run.group, ops, lead && save);
    if (save) checkpoint(step, sampler.cursor());
    if (collapsed && !summary.collapsed) {
      summary.collapsed = true;
      if (bar) bar->finish();
      bar.reset();
      if (lead) std::cerr << collapse.message() << "\n";
      if (cfg.collapse_action == CollapseAction::Stop) return summary;
    }
    if (stop_signal) {
      if (bar) bar->finish();
      bar.reset();
      summary.interrupted_by = stop_signal;
      return summary;
    }
  }
  if (bar) bar->finish();
  const bool finished = last == run.steps && summary.last_step == run.steps;
  // Sharded, the masters come from every rank (a collective) before rank 0 exports them.
  std::map<std::string, std::vector<float>> gathered;
  if (finished && opt.sharded()) gathered = opt.masters();
  if (lead && finished) {
    summary.exported = run.out / "model";
    MasterWeights masters;
    std::vector<Tensor> uploaded;
    for (const auto& n : opt.trainable()) {
      if (!opt.sharded()) {
        masters.emplace(n, opt.master(n));
        continue;
      }
      std::vector<float>& host = gathered.at(n);
      const TensorView p = model.parameter(n);
      Tensor t = p.ndim == 1 ? ops.alloc(DType::F32, {p.shape[0]}) : ops.alloc(DType::F32, {p.shape[0], p.shape[1]});
      ops.copy(TensorView::contiguous(host.data(), DType::F32, Device::CPU, {p.numel()}), t.view.reshaped({p.numel()}));
      masters.emplace(n, t.view);
      uploaded.push_back(std::move(t));
    }
    export_model(ops, model, summary.exported, run.attention, run.attention_options, run.model_dir, &masters,
                 run.backend_sections);
    if (!run.quiet) std::cerr << "exported the trained model to " << summary.exported.string() << "\n";
  }
  return summary;
}

}  // namespace rt
