// The training loop behind `runtime train`: data -> per-sequence forward/backward (gradient
// accumulation over the batch) -> grad-norm clip -> AdamW -> metrics, progress, checkpoints, and
// at the end a merged model directory that `runtime logits/generate --model OUT/model` loads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model/qwen2_model.h"
#include "rt/sdk/options.h"
#include "tokenizer/tokenizer.h"
#include "train/train_config.h"

namespace rt {
namespace dist {
class ProcessGroup;
}

struct TrainRun {
  std::filesystem::path data;
  // Held-out validation data (same formats as data; empty: none): every cfg.effective_eval_every()
  // steps and at the run's last step, val_loss and val_ppl join that step's metrics.jsonl row.
  std::filesystem::path val_data;
  std::filesystem::path out;
  int64_t steps = 0;
  std::optional<int64_t> stop_at;  // stop after this step as if interrupted (checkpoint written)
  bool resume = false;             // continue from the newest checkpoint in out
  std::string attention;           // the backend's name, for records and the export
  Options attention_options;       // as configured (exported into the model's "attention_backend" section, and
                                   // the backend's own config section, e.g. "l2a")
  // The config sections every loaded backend declares (Capabilities::config_section): the export
  // drops those of other backends, which no longer apply to the trained model.
  std::vector<std::string> backend_sections;
  std::filesystem::path model_dir; // where the base model came from (tokenizer files are copied); may be empty
  std::string model_name;
  bool quiet = false;              // no progress bar (tests)
  // Catch SIGINT/SIGTERM while training (`runtime train` sets it): the handler only sets a flag;
  // after the step in progress completes a checkpoint of it is written and run_training returns
  // with TrainSummary::interrupted_by set. The handler resets itself (SA_RESETHAND), so a second
  // signal kills the process at once. The previous handlers are restored on return.
  bool handle_signals = false;
  // Data parallelism (runtime launch, torchrun, mpirun): this rank's group, or null for one process.
  // batch_size stays the global number of sequences per step; every rank draws all of them in the
  // single-process order and trains batch_size / world of them (a contiguous block), gradients,
  // losses and routing counts are summed over ranks before the (replicated) optimizer step, and only
  // rank 0 writes metrics, checkpoints and the export.
  dist::ProcessGroup* group = nullptr;
};

struct TrainSummary {
  int64_t first_step = 0, last_step = 0;  // steps run by this invocation (first_step > last_step: none)
  double last_loss = 0;
  bool collapsed = false;
  int64_t skipped_steps = 0;              // steps of this invocation skipped for a non-finite loss or gradient
  std::filesystem::path exported;         // OUT/model when the run reached its last step
  int interrupted_by = 0;                 // SIGINT/SIGTERM that stopped the run after last_step (0: none)
  int64_t last_checkpoint_step = -1;      // the step last_checkpoint holds (-1: none written by this run)
  std::filesystem::path last_checkpoint;  // the newest checkpoint this invocation wrote (empty: none)
  std::optional<double> last_val_loss;    // the last validation loss this invocation computed
};

TrainSummary run_training(Ops& ops, Qwen2Model& model, const TrainConfig& cfg, const TrainRun& run,
                          const Tokenizer* tokenizer);

// The merged model: config.json (the base config, plus "attention_backend": {"name", "options"}
// recording the backend it was trained with, which loading uses by default; an "l2a" section for L2A
// backends; for swa Hugging Face's use_sliding_window / sliding_window / layer_types with the window
// in every layer) and model.safetensors with every parameter in f32. Atomic per file.
// Trained parameters' fp32 masters by name; these are exported instead of the model's copies.
struct MasterWeights : std::map<std::string, TensorView> {
  const TensorView* find(const std::string& n) const {
    auto it = std::map<std::string, TensorView>::find(n);
    return it == end() ? nullptr : &it->second;
  }
};
void export_model(Ops& ops, Qwen2Model& model, const std::filesystem::path& dir, const std::string& attention,
                  const Options& attention_options, const std::filesystem::path& tokenizer_source,
                  const MasterWeights* masters = nullptr, const std::vector<std::string>& backend_sections = {});

}  // namespace rt
