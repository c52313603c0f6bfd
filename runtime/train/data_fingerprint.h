// The training data's identity for --resume: its size and the crc32 of its first and last MiB,
// not its path, so a data file that was moved or renamed still resumes and a different file at the
// same path is refused. Reading two MiB costs nothing next to tokenizing the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace rt {

inline constexpr uint64_t kDataFingerprintWindow = uint64_t{1} << 20;  // 1 MiB

struct DataFingerprint {
  uint64_t size = 0;        // bytes
  uint32_t head_crc32 = 0;  // zlib crc32 of the first min(size, 1 MiB) bytes
  uint32_t tail_crc32 = 0;  // ... and of the last min(size, 1 MiB) bytes
  bool operator==(const DataFingerprint&) const = default;

  // As checkpoint manifest fields: data_size, data_head_crc32, data_tail_crc32 (decimal strings).
  void to_fields(std::map<std::string, std::string>& fields) const;
  // Back from those fields; nullopt when they are absent (a checkpoint written before data
  // fingerprints existed). A present but malformed field is an rt::Error naming `what` and it.
  static std::optional<DataFingerprint> from_fields(const std::map<std::string, std::string>& fields,
                                                    const std::string& what);
};

// Reads the head and tail of `file` (an rt::Error naming it when it cannot be read).
DataFingerprint fingerprint_data_file(const std::filesystem::path& file, uint64_t window = kDataFingerprintWindow);

// Empty when equal; else what differs, e.g. "size 16384 bytes, the checkpoint's data had 8192" or
// "crc32 of the first 1 MiB 1a2b3c4d, the checkpoint's data had 5e6f7a8b".
std::string describe_fingerprint_difference(const DataFingerprint& now, const DataFingerprint& recorded);

}  // namespace rt
