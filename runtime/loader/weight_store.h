// All tensors of a model, by name: mmap'ed from model.safetensors or from the shards listed in
// model.safetensors.index.json, plus tensors added in memory (random init, plugin parameters).
// The store owns the mappings; WeightInfo pointers stay valid for its lifetime (also across moves).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loader/safetensors.h"

namespace rt {

struct WeightInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // read-only; may be misaligned (copy with memcpy)
  size_t nbytes = 0;
  std::string file;  // the file it came from, or "<in-memory>"

  int64_t numel() const;
  std::optional<DType> sdk_dtype() const { return st_to_dtype(dtype); }
  std::string shape_str() const;
};

// Throws rt::Error "<file>: tensor '<name>' has a non-finite value (nan|inf|-inf) at element <i>"
// for the first NaN or infinity of a F32, F16 or BF16 tensor (other dtypes are not checked). One
// pass over the bytes, like the safetensors validation.
void check_finite(const WeightInfo& w);

class WeightStore {
 public:
  WeightStore();
  ~WeightStore();
  WeightStore(WeightStore&&) noexcept;
  WeightStore& operator=(WeightStore&&) noexcept;
  WeightStore(const WeightStore&) = delete;
  WeightStore& operator=(const WeightStore&) = delete;

  // Loads `model_dir`/model.safetensors, or else the shards of model.safetensors.index.json.
  // Sharded checks: the index is valid JSON with a "weight_map" of tensor -> shard file name
  // (plain names inside model_dir); every shard exists and is a valid safetensors file; every
  // mapped tensor is in the shard the map names; no tensor is in two shards.
  static WeightStore open(const std::filesystem::path& model_dir);
  // One safetensors file anywhere (e.g. a checkpoint written by the trainer).
  static WeightStore open_file(const std::filesystem::path& safetensors_path);

  const WeightInfo* find(const std::string& name) const;  // nullptr when absent
  // Throws naming the tensor and the files searched.
  const WeightInfo& get(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }

  // Adds a tensor held in memory. bytes.size() must equal numel * itemsize; the name must be new.
  const WeightInfo& add_owned(const std::string& name, StDType dtype, std::vector<int64_t> shape,
                              std::vector<uint8_t> bytes);
  const WeightInfo& add_owned(const std::string& name, DType dtype, std::vector<int64_t> shape,
                              std::vector<uint8_t> bytes) {
    return add_owned(name, st_from_dtype(dtype), std::move(shape), std::move(bytes));
  }

  // Gives tensor `from` the name `to` (its data, dtype and shape unchanged): how a checkpoint that
  // names its tensors differently (the official L2A release) is read under this runtime's names.
  // Throws when `from` is absent or `to` is taken.
  void rename(const std::string& from, const std::string& to);

  size_t size() const { return tensors_.size(); }
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, WeightInfo>& all() const { return tensors_; }
  const std::vector<std::string>& files() const { return file_paths_; }
  // "a, b" (or "no files") for error messages.
  std::string files_searched() const;

 private:
  void add_file(std::unique_ptr<SafetensorsFile> f);

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> file_paths_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>> owned_;
  std::map<std::string, WeightInfo> tensors_;
};

}  // namespace rt
