#include "loader/safetensors_writer.h"

#include "common/durable_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "rt/sdk/error.h"

namespace rt {

std::vector<uint8_t> serialize_safetensors(const std::vector<StWriteTensor>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const StWriteTensor& t : tensors) {
    RT_CHECK(t.name != "__metadata__", "serialize_safetensors: \"__metadata__\" is reserved");
    RT_CHECK(names.insert(t.name).second, "serialize_safetensors: duplicate tensor \"", t.name, "\"");
    uint64_t bits = st_dtype_bits(t.dtype);
    for (int64_t d : t.shape) {
      RT_CHECK(d >= 0, "serialize_safetensors: tensor \"", t.name, "\" has negative dim ", d);
      RT_CHECK(!__builtin_mul_overflow(bits, static_cast<uint64_t>(d), &bits),
               "serialize_safetensors: tensor \"", t.name, "\" is too large");
    }
    RT_CHECK(bits % 8 == 0 && bits / 8 == t.nbytes, "serialize_safetensors: tensor \"", t.name,
             "\" has ", t.nbytes, " bytes but its dtype ", st_dtype_name(t.dtype), " and shape need ",
             bits / 8, bits % 8 ? " and a fraction" : "");
    RT_CHECK(t.data != nullptr || t.nbytes == 0, "serialize_safetensors: tensor \"", t.name,
             "\" has no data");
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  std::vector<uint8_t> out(8 + text.size() + offset);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* p = out.data() + 8 + text.size();
  for (const StWriteTensor& t : tensors) {
    if (t.nbytes) std::memcpy(p, t.data, t.nbytes);
    p += t.nbytes;
  }
  return out;
}

void save_safetensors(const std::filesystem::path& path, const std::vector<StWriteTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::vector<uint8_t> bytes = serialize_safetensors(tensors, metadata);
  write_file_atomic(path, FilePieces{{bytes.data(), bytes.size()}});
}

}  // namespace rt
