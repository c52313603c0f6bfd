#include "train/data_fingerprint.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <zlib.h>

#include "rt/sdk/error.h"

namespace rt {

namespace {

uint32_t crc_of(const std::vector<char>& b) {
  if (b.empty()) return 0;
  return static_cast<uint32_t>(::crc32_z(0, reinterpret_cast<const Bytef*>(b.data()), b.size()));
}

std::string hex8(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

std::string window_name(uint64_t window) {
  if (window % kDataFingerprintWindow == 0) return std::to_string(window / kDataFingerprintWindow) + " MiB";
  return std::to_string(window) + " bytes";
}

}  // namespace

DataFingerprint fingerprint_data_file(const std::filesystem::path& file, uint64_t window) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(file, ec);
  RT_CHECK(!ec, file.string(), ": cannot read the data file (", ec.message(), ")");
  std::ifstream in(file, std::ios::binary);
  RT_CHECK(in.good(), file.string(), ": cannot open the data file (", std::strerror(errno), ")");
  auto read_at = [&](uint64_t offset, uint64_t n) {
    std::vector<char> b(static_cast<size_t>(n));
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(b.data(), static_cast<std::streamsize>(n));
    RT_CHECK(in.gcount() == static_cast<std::streamsize>(n), file.string(), ": error reading ", n,
             " bytes at offset ", offset, " of the data file");
    return b;
  };
  DataFingerprint f;
  f.size = size;
  const uint64_t n = std::min(size, window);
  f.head_crc32 = crc_of(read_at(0, n));
  f.tail_crc32 = crc_of(read_at(size - n, n));
  return f;
}

void DataFingerprint::to_fields(std::map<std::string, std::string>& fields) const {
  fields["data_size"] = std::to_string(size);
  fields["data_head_crc32"] = std::to_string(head_crc32);
  fields["data_tail_crc32"] = std::to_string(tail_crc32);
}

std::optional<DataFingerprint> DataFingerprint::from_fields(const std::map<std::string, std::string>& fields,
                                                            const std::string& what) {
  const char* keys[] = {"data_size", "data_head_crc32", "data_tail_crc32"};
  if (std::none_of(std::begin(keys), std::end(keys), [&](const char* k) { return fields.count(k) > 0; }))
    return std::nullopt;
  uint64_t v[3] = {};
  for (int i = 0; i < 3; ++i) {
    auto it = fields.find(keys[i]);
    RT_CHECK(it != fields.end(), what, ": manifest field ", keys[i], " is missing");
    const std::string& s = it->second;
    size_t used = 0;
    bool ok = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
    if (ok) {
      try {
        v[i] = std::stoull(s, &used);
      } catch (const std::exception&) {
        ok = false;
      }
    }
    ok = ok && used == s.size() && (i == 0 || v[i] <= 0xffffffffull);
    RT_CHECK(ok, what, ": manifest field ", keys[i], " is '", s, "', expected a non-negative integer");
  }
  DataFingerprint f;
  f.size = v[0];
  f.head_crc32 = static_cast<uint32_t>(v[1]);
  f.tail_crc32 = static_cast<uint32_t>(v[2]);
  return f;
}

std::string describe_fingerprint_difference(const DataFingerprint& now, const DataFingerprint& recorded) {
  std::ostringstream o;
  auto sep = [&] {
    if (o.tellp() > 0) o << "; ";
  };
  if (now.size != recorded.size) {
    sep();
    o << "size " << now.size << " bytes, the checkpoint's data had " << recorded.size;
  }
  const std::string w = window_name(kDataFingerprintWindow);
  if (now.head_crc32 != recorded.head_crc32) {
    sep();
    o << "crc32 of the first " << w << " " << hex8(now.head_crc32) << ", the checkpoint's data had "
      << hex8(recorded.head_crc32);
  }
  if (now.tail_crc32 != recorded.tail_crc32) {
    sep();
    o << "crc32 of the last " << w << " " << hex8(now.tail_crc32) << ", the checkpoint's data had "
      << hex8(recorded.tail_crc32);
  }
  return o.str();
}

}  // namespace rt
