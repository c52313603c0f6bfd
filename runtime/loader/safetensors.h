// safetensors reader (https://github.com/huggingface/safetensors, format spec in its README):
//   [8 bytes: header length N, little-endian u64][N bytes: JSON header][data section]
// The header maps tensor names to {dtype, shape, data_offsets:[begin,end]} (offsets relative to
// the data section) plus an optional "__metadata__" string->string map. Everything here is
// validated before any pointer into the data is handed out, so a hostile or truncated file gives
// an rt::Error naming the file, never an out-of-bounds read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "loader/mapped_file.h"
#include "rt/sdk/tensor.h"

namespace rt {

// Every dtype of the safetensors spec (the reference implementation's Dtype enum, v0.8).
enum class StDType {
  BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
  I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};

// Parses a spec name ("BF16"); nullopt for names the spec does not define. Case-sensitive, as
// the spec is.
std::optional<StDType> st_dtype_from_name(std::string_view name);
const char* st_dtype_name(StDType t);
// Bits per element: 4 for F4, 6 for F6_*, 8*bytes otherwise (sub-byte types pack tightly).
unsigned st_dtype_bits(StDType t);
// The SDK dtype with the same storage, if any (F32, BF16, F16, I32, U8).
std::optional<DType> st_to_dtype(StDType t);
StDType st_from_dtype(DType t);

struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section, end exclusive

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct StHeader {
  std::vector<StTensorInfo> tensors;  // in file order (sorted by begin offset)
  std::map<std::string, std::string> metadata;
  uint64_t header_size = 0;  // N: JSON bytes after the 8-byte length prefix
  uint64_t data_size = 0;    // bytes of the data section = file size - 8 - N

  uint64_t data_start() const { return 8 + header_size; }
};

// Hard cap on N, as in the reference implementation: a header is metadata, never weights.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// Parses and validates the header of a complete safetensors image `bytes[0, size)`:
//  - size >= 8; N <= size - 8 and N <= 100 MB;
//  - the header is UTF-8 JSON, starts with '{', may be padded with trailing spaces, has no
//    duplicate keys and is an object;
//  - every entry has dtype (a spec name), shape (array of non-negative integers) and
//    data_offsets [begin, end] with begin <= end and end - begin == numel * itemsize
//    (overflow-checked; sub-byte dtypes must fill whole bytes);
//  - the tensors tile the data section exactly: sorted by offset they start at 0, leave no gap,
//    do not overlap, and the last ends at size - 8 - N (no trailing bytes);
//  - "__metadata__", if present, maps strings to strings.
// `what` (normally the file path) starts every error message. Never reads outside `bytes`.
StHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& what);

// A memory-mapped, validated safetensors file. Movable; pointers stay valid until destruction.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::string& path() const { return file_.path(); }
  const StHeader& header() const { return header_; }
  const std::vector<StTensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  // nullptr when the file has no tensor of that name.
  const StTensorInfo* find(const std::string& name) const;
  // Throws naming the file and the tensor when absent.
  const StTensorInfo& get(const std::string& name) const;
  // Start of the tensor's bytes inside the mapping (read-only). The spec does not require
  // alignment, so the pointer may be misaligned for the element type: read it with memcpy.
  const uint8_t* data(const StTensorInfo& t) const;

 private:
  MappedFile file_;
  StHeader header_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace rt
