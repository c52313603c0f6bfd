// Training checkpoints: OUT/checkpoints/step_<8 digits>/{state.safetensors, manifest.json} plus
// OUT/checkpoints/latest naming the newest one. A checkpoint is written into a temporary
// directory, every file and the directory are fsync'ed, and only then is it renamed into place
// and `latest` replaced (itself by temp file + fsync + rename): a crash at any moment leaves the
// previous checkpoint complete and findable. One writer per OUT directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "train/token_data.h"

namespace rt {

// One fp32 host tensor of the training state (master weight, Adam m or v, ...).
struct NamedHostTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // numel(shape) values, row-major
};

inline constexpr int kCheckpointFormatVersion = 1;

// Everything in manifest.json besides the tensor list.
struct CheckpointMeta {
  int64_t step = 0;                  // optimizer steps completed
  SequenceSampler::Cursor cursor;    // data position to continue from
  std::string rng_state;             // the trainer's RNG state, opaque here
  std::string config_json;           // TrainConfig::to_json()
  std::string config_hash;           // TrainConfig::config_hash()
  std::map<std::string, std::string> extra;  // anything else the caller wants back (model id, ...)
};

struct Checkpoint {
  std::filesystem::path dir;
  CheckpointMeta meta;
  std::vector<NamedHostTensor> tensors;  // in manifest order

  const NamedHostTensor* find(const std::string& name) const;
  const NamedHostTensor& get(const std::string& name) const;  // throws naming the checkpoint
};

// "step_00000042".
std::string checkpoint_dir_name(int64_t step);

// Writes OUT/checkpoints/step_<meta.step>/ as described above and returns its path. Leftover
// temporary directories of earlier crashed writes are removed first. An existing directory for
// the same step is replaced; one for a later step is an error (steps must not go backwards:
// resume, or use a fresh OUT). Afterwards only the newest `keep_last` (>= 1) step directories
// are kept. Tensor names must be unique and shapes must match the data sizes.
std::filesystem::path save_checkpoint(const std::filesystem::path& out_dir, const CheckpointMeta& meta,
                                      const std::vector<NamedHostTensor>& tensors, int keep_last = 2);

// The checkpoint to resume from, or nullopt when there is none: the newest complete
// step_XXXXXXXX directory. OUT/checkpoints/latest is read first; if it is missing, unreadable,
// names a directory that is gone or incomplete, or is older than a complete directory (a crash
// between the directory rename and its update), the directory scan decides. Temporary leftovers
// (*.tmp-*, *.old-*) are never candidates.
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& out_dir);

// Reads and validates a checkpoint directory. First, before any other field or byte is used, the
// checksums: manifest.json carries "files": {name: {"size", "crc32"}} for every other file of the
// checkpoint (state.safetensors) and "manifest_crc32" for its own canonical JSON without that
// field; a missing or truncated file, or a size or crc32 mismatch, is an error. A manifest of the
// previous version (no checksums) still loads, with a one-line warning on `warn`. Then: manifest
// fields and types, format version, every listed tensor present in state.safetensors as F32 with
// the declared shape, and no tensor in the file that the manifest does not list. Errors name the
// file and the field or tensor.
Checkpoint load_checkpoint(const std::filesystem::path& dir, std::ostream& warn = std::cerr);

// What --resume uses: the newest step_XXXXXXXX directory that loads (load_checkpoint, checksums
// included), or nullopt when OUT/checkpoints holds no step directory at all. Newer directories
// that are corrupt or incomplete are skipped with a warning on `warn` naming each, why, and the
// checkpoint used; they are renamed to step_XXXXXXXX.corrupt (kept for inspection, never a
// candidate) so that the resumed run can save its next steps. When no directory is intact, the
// error names OUT/checkpoints and what is wrong with each (and nothing is renamed).
std::optional<Checkpoint> load_latest_checkpoint(const std::filesystem::path& out_dir,
                                                 std::ostream& warn = std::cerr);

}  // namespace rt
