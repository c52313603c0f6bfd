#include "common/npy.h"

#include "common/durable_file.h"


#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "rt/sdk/error.h"

namespace rt {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

std::string errno_text() { return std::strerror(errno); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& where) {
  int64_t n = 1;
  for (int64_t d : shape) {
    RT_CHECK(d >= 0, where, ": negative dimension ", d, " in shape ", shape_text(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      fail(where, ": shape ", shape_text(shape), " has too many elements");
    n *= d;
  }
  return n;
}

// A tiny parser for the header: a Python dict literal such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (37, 257), }
class HeaderParser {
 public:
  HeaderParser(std::string text, std::string where) : s_(std::move(text)), where_(std::move(where)) {}

  void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') { ++i_; break; }
      std::string key = parse_string();
      expect(':');
      skip_ws();
      if (key == "descr") {
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        fortran = parse_bool();
        have_fortran = true;
      } else if (key == "shape") {
        shape = parse_tuple();
        have_shape = true;
      } else {
        bad("unknown key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') { ++i_; continue; }
      expect('}');
      break;
    }
    RT_CHECK(have_descr && have_fortran && have_shape, where_,
             ": header lacks one of 'descr', 'fortran_order', 'shape': ", s_);
  }

 private:
  [[noreturn]] void bad(const std::string& what) {
    fail(where_, ": malformed header (", what, " at offset ", i_, "): ", s_);
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) bad(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string parse_string() {
    skip_ws();
    char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string");
    size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) bad("unterminated string");
    std::string out = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return out;
  }
  bool parse_bool() {
    if (s_.compare(i_, 4, "True") == 0) { i_ += 4; return true; }
    if (s_.compare(i_, 5, "False") == 0) { i_ += 5; return false; }
    bad("expected True or False");
  }
  std::vector<int64_t> parse_tuple() {
    std::vector<int64_t> out;
    expect('(');
    while (true) {
      skip_ws();
      if (peek() == ')') { ++i_; break; }
      size_t start = i_;
      int64_t v = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
        int digit = s_[i_] - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) bad("dimension too large");
        v = v * 10 + digit;
        ++i_;
      }
      if (i_ == start) bad("expected a non-negative integer dimension");
      if (peek() == 'L') ++i_;  // Python 2 long suffix
      out.push_back(v);
      skip_ws();
      if (peek() == ',') { ++i_; continue; }
      expect(')');
      break;
    }
    return out;
  }

  std::string s_;
  std::string where_;
  size_t i_ = 0;
};

template <typename T>
T load_le(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void write_npy_f32(const std::filesystem::path& path, const float* data, std::vector<int64_t> shape) {
  namespace fs = std::filesystem;
  const std::string where = "npy " + path.string();
  const int64_t n = checked_numel(shape, where);
  RT_CHECK(n == 0 || data != nullptr, where, ": null data for ", n, " elements");
  RT_CHECK(static_cast<uint64_t>(n) <= std::numeric_limits<size_t>::max() / sizeof(float), where,
           ": array too large");

  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  // Pad with spaces so that the data starts on a 64-byte boundary; the header ends with '\n'.
  // Format 1.0 stores the header length in 2 bytes; longer headers (ndim in the thousands) need 2.0.
  int major = 1;
  size_t prefix = kMagicLen + 2 + 2;
  auto padded = [&](size_t pre) { return dict.size() + 1 + (64 - (pre + dict.size() + 1) % 64) % 64; };
  if (padded(prefix) > 65535) {
    major = 2;
    prefix = kMagicLen + 2 + 4;
  }
  dict.append(padded(prefix) - dict.size() - 1, ' ');
  dict.push_back('\n');
  std::string head(kMagic, kMagicLen);
  head.push_back(static_cast<char>(major));
  head.push_back(0);
  const uint32_t hlen = static_cast<uint32_t>(dict.size());
  head.push_back(static_cast<char>(hlen & 0xff));
  head.push_back(static_cast<char>((hlen >> 8) & 0xff));
  if (major == 2) {
    head.push_back(static_cast<char>((hlen >> 16) & 0xff));
    head.push_back(static_cast<char>((hlen >> 24) & 0xff));
  }
  head += dict;

  write_file_atomic(path, FilePieces{{head.data(), head.size()}, {data, static_cast<size_t>(n) * sizeof(float)}});
}

NpyArray read_npy(const std::filesystem::path& path) {
  const std::string where = "npy " + path.string();
  std::error_code ec;
  RT_CHECK(!std::filesystem::is_directory(path, ec), where, ": is a directory, not a .npy file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(where, ": cannot open: ", errno_text());
  const std::streamoff size = in.tellg();
  RT_CHECK(size >= 0, where, ": cannot determine the file size");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(bytes.data(), size)) fail(where, ": read error");

  RT_CHECK(bytes.size() >= kMagicLen + 2 && bytes.compare(0, kMagicLen, kMagic, kMagicLen) == 0, where,
           ": not a .npy file (bad magic; ", bytes.size(), " bytes)");
  const int major = static_cast<unsigned char>(bytes[kMagicLen]);
  const int minor = static_cast<unsigned char>(bytes[kMagicLen + 1]);
  RT_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, where, ": unsupported format version ",
           major, ".", minor, " (supported: 1.0, 2.0, 3.0)");
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix = kMagicLen + 2 + len_bytes;
  RT_CHECK(bytes.size() >= prefix, where, ": truncated header (file has ", bytes.size(), " bytes)");
  uint64_t hlen = 0;
  for (size_t i = 0; i < len_bytes; ++i)
    hlen |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[kMagicLen + 2 + i])) << (8 * i);
  RT_CHECK(hlen <= bytes.size() - prefix, where, ": header length ", hlen, " runs past the end of the file (",
           bytes.size(), " bytes)");

  NpyArray arr;
  bool fortran = false;
  HeaderParser(bytes.substr(prefix, hlen), where).parse(arr.descr, fortran, arr.shape);
  RT_CHECK(!fortran, where, ": Fortran-order arrays are not supported (save with C order)");

  std::string d = arr.descr;
  if (!d.empty() && d[0] == '=') d[0] = '<';
  size_t itemsize = 0;
  if (d == "<f4" || d == "<i4") itemsize = 4;
  else if (d == "<f8" || d == "<i8") itemsize = 8;
  else fail(where, ": unsupported dtype '", arr.descr, "' (supported: <f4, <f8, <i4, <i8)");

  const int64_t n = checked_numel(arr.shape, where);
  const uint64_t have = bytes.size() - prefix - hlen;
  RT_CHECK(static_cast<uint64_t>(n) <= std::numeric_limits<uint64_t>::max() / itemsize, where,
           ": shape ", shape_text(arr.shape), " too large");
  const uint64_t need = static_cast<uint64_t>(n) * itemsize;
  RT_CHECK(have >= need, where, ": truncated data: shape ", shape_text(arr.shape), " of ", arr.descr,
           " needs ", need, " bytes, file has ", have);
  RT_CHECK(have == need, where, ": ", have - need, " unexpected bytes after the data of shape ",
           shape_text(arr.shape));

  const char* p = bytes.data() + prefix + hlen;
  arr.data.resize(static_cast<size_t>(n));
  if (d == "<f4") {
    std::memcpy(arr.data.data(), p, need);
  } else if (d == "<f8") {
    for (int64_t i = 0; i < n; ++i) arr.data[i] = static_cast<float>(load_le<double>(p + 8 * i));
  } else {
    arr.ints.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      arr.ints[i] = d == "<i4" ? load_le<int32_t>(p + 4 * i) : load_le<int64_t>(p + 8 * i);
      arr.data[i] = static_cast<float>(arr.ints[i]);
    }
  }
  return arr;
}

}  // namespace rt
