// The trainer's experiment config: a TOML file with a [train] table (optimizer, schedule, data
// and safety settings, all typed and range-checked here) and an [attention] table (plugin options,
// passed through as strings because only the plugin knows their meaning), plus `--set key=value`
// overrides from the command line. Every error is an rt::Error naming the file (or the --set
// argument), the key, what was expected and what was found.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rt {

// Which parameters train (DESIGN.md section 4): only the router, the router plus attention
// projections and norms (the paper's), or everything.
enum class TrainRegime { RouterOnly, Attention, Full };
// What to do when the collapse detector fires.
enum class CollapseAction { Stop, Warn };

const char* regime_name(TrainRegime r);           // "router_only", "attention", "full"
const char* collapse_action_name(CollapseAction a);  // "stop", "warn"

struct TrainConfig {
  // [train]
  TrainRegime regime = TrainRegime::Full;
  int64_t seq_len = 1024;
  int64_t batch_size = 8;   // sequences per optimizer step
  int64_t micro_batch = 1;  // sequences per forward; batch_size is a multiple of it
  double lr = 1e-4;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;  // cosine floor as a fraction of lr
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double clip_norm = 1.0;  // global grad-norm clip; 0 = off
  uint64_t seed = 0;
  bool shuffle = true;
  bool recompute = false;        // gradient checkpointing
  // Checkpoints (none of these change the math, so none is part of config_hash()): every
  // checkpoint_every steps or every checkpoint_minutes of wall time, whichever comes first (0
  // disables each), plus always at the last step, on a collapse stop and on SIGINT/SIGTERM. Only
  // the newest keep_checkpoints step directories are kept (0 = keep all).
  int64_t checkpoint_every = 100;
  double checkpoint_minutes = 30;
  int64_t keep_checkpoints = 2;
  // When stderr is not a terminal (a log file, CI), print a plain progress line every log_every
  // steps; 0 (default): every ~5% of the run or 30 s, whichever comes first. On a terminal the bar
  // is redrawn in place; metrics.jsonl always gets every step. Not part of config_hash().
  int64_t log_every = 0;
  // Held-out validation (`runtime train --val-data FILE`): every eval_every steps and at the last
  // step, the mean next-token loss (the language-model loss only, no regularizer) over
  // val_sequences fixed sequences of seq_len tokens, spread evenly over the validation data, is
  // logged as val_loss / val_ppl. eval_every unset: checkpoint_every (or 100 when that is 0);
  // 0: only at the last step. Without --val-data neither has any effect. Not part of config_hash().
  std::optional<int64_t> eval_every;
  int64_t val_sequences = 32;
  double collapse_loss = 0.05;      // collapse = loss below this ...
  double collapse_sparsity = 0.98;  // ... and sparsity (fraction) above this ...
  int64_t collapse_patience = 5;    // ... for this many consecutive steps
  CollapseAction collapse_action = CollapseAction::Stop;
  // A step whose loss or gradient norm is not finite is skipped (no parameter or optimizer-moment
  // update; the LR schedule and AdamW's bias correction do not advance), as mixed-precision
  // trainers skip an overflowed step; this many consecutive skipped steps stop the run with an
  // error naming the first non-finite gradient. Not part of config_hash().
  int64_t max_nonfinite_steps = 3;
  // Data parallelism: 1 shards the optimizer state (fp32 masters and moments) over the ranks
  // (ZeRO stage 1): each rank updates its share of the parameters and sends them to the others.
  // The same updates as 0 (unsharded), bit for bit; not part of config_hash().
  int64_t zero_stage = 0;

  // [attention]: plugin options as written (numbers in round-trippable form, bools
  // "true"/"false"). Sorted by key so that to_json() and config_hash() are stable.
  std::map<std::string, std::string> attention;

  // Where the config came from (for messages); not part of to_json() or the hash.
  std::string source;

  int64_t grad_accum_steps() const { return batch_size / micro_batch; }
  // The evaluation interval in steps for a run with (or without) validation data: 0 = none
  // besides the last step (and nothing at all without validation data).
  int64_t effective_eval_every(bool has_val_data) const {
    if (!has_val_data) return 0;
    if (eval_every) return *eval_every;
    return checkpoint_every > 0 ? checkpoint_every : 100;
  }
  // Every [train] field and the [attention] map as one compact JSON object, keys in a fixed
  // order: the checkpoint manifest and run record store it.
  std::string to_json() const;
  // 16 hex digits: FNV-1a 64 of to_json() without the keys that do not change the training math
  // (checkpoint_every, checkpoint_minutes, keep_checkpoints, log_every, eval_every, val_sequences,
  // recompute, collapse_*, max_nonfinite_steps, zero_stage).
  // Equal configs hash equal on every platform, so a resume can tell whether the config changed;
  // the excluded keys may change between a run and its resume.
  std::string config_hash() const;
};

// Reads `toml_file` (top-level tables [train] and [attention] only; both optional), applies
// `set_overrides` in order ("train.lr=3e-4", "attention.window=512", or a bare "lr=3e-4": a
// [train] key if it is one, else an [attention] key), then validates ranges. Override values are
// parsed as the key's type (integers and numbers strictly, bools as true/false, strings as is
// with optional surrounding double quotes removed).
TrainConfig load_train_config(const std::filesystem::path& toml_file,
                              const std::vector<std::string>& set_overrides = {});

// The same from TOML text; `what` names the source in errors. For tests and for configs that are
// not files.
TrainConfig parse_train_config(std::string_view toml_text, const std::string& what,
                               const std::vector<std::string>& set_overrides = {});

}  // namespace rt
