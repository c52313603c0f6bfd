// safetensors writer: checkpoints written by the trainer, and test files. The output is what the
// reference implementation writes: header padded with spaces to a multiple of 8 bytes, so every
// tensor's data starts 8-byte aligned when tensors are given largest-alignment first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "loader/safetensors.h"

namespace rt {

struct StWriteTensor {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // nbytes() bytes, copied as is (little-endian storage)
  size_t nbytes = 0;
};

// The whole file image. Checks that names are unique and not "__metadata__", dims non-negative
// and nbytes == numel * itemsize for every tensor. Tensors are stored in the given order.
std::vector<uint8_t> serialize_safetensors(const std::vector<StWriteTensor>& tensors,
                                           const std::map<std::string, std::string>& metadata = {});

// Writes serialize_safetensors(...) to `path` atomically (temporary file + rename), so a crash
// never leaves a half-written checkpoint under the final name.
void save_safetensors(const std::filesystem::path& path, const std::vector<StWriteTensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace rt
