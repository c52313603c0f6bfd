#include "loader/safetensors.h"

#include <algorithm>
#include <iterator>
#include <limits>

#include "loader/json_util.h"
#include "rt/sdk/error.h"

namespace rt {

using nlohmann::json;

namespace {

struct DTypeEntry {
  StDType type;
  const char* name;
  unsigned bits;
};

// Order matches the enum so st_dtype_name/bits can index directly.
constexpr DTypeEntry kDTypes[] = {
    {StDType::BOOL, "BOOL", 8},          {StDType::F4, "F4", 4},
    {StDType::F6_E2M3, "F6_E2M3", 6},    {StDType::F6_E3M2, "F6_E3M2", 6},
    {StDType::U8, "U8", 8},              {StDType::I8, "I8", 8},
    {StDType::F8_E5M2, "F8_E5M2", 8},    {StDType::F8_E4M3, "F8_E4M3", 8},
    {StDType::F8_E8M0, "F8_E8M0", 8},    {StDType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {StDType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {StDType::I16, "I16", 16},
    {StDType::U16, "U16", 16},           {StDType::F16, "F16", 16},
    {StDType::BF16, "BF16", 16},         {StDType::I32, "I32", 32},
    {StDType::U32, "U32", 32},           {StDType::F32, "F32", 32},
    {StDType::C64, "C64", 64},           {StDType::F64, "F64", 64},
    {StDType::I64, "I64", 64},           {StDType::U64, "U64", 64},
};

constexpr bool table_matches_enum() {
  for (size_t i = 0; i < std::size(kDTypes); ++i)
    if (static_cast<size_t>(kDTypes[i].type) != i) return false;
  return std::size(kDTypes) == static_cast<size_t>(StDType::U64) + 1;
}
static_assert(table_matches_enum(), "kDTypes must list StDType in enum order");

const DTypeEntry& entry(StDType t) { return kDTypes[static_cast<size_t>(t)]; }

std::string known_dtype_names() {
  std::string s;
  for (const auto& e : kDTypes) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s;
}

// A tensor name as it appears in JSON (quoted, control bytes escaped) for error messages.
std::string quoted(const std::string& s) { return json_brief(json(s), 120); }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A non-negative JSON integer that fits int64 (shape dims, offsets), or an error naming `field`.
uint64_t non_negative_int(const json& v, const std::string& where, const char* field) {
  // nlohmann stores non-negative literals as unsigned and negative ones as signed; note that
  // is_number_integer() is true for both, so test unsigned first.
  if (!json_is_integer(v))
    fail(where, ": ", field, " must hold non-negative integers, found ", json_type_name(v), " ",
         json_brief(v));
  if (!v.is_number_unsigned())
    fail(where, ": ", field, " must hold non-negative integers, found ", v.get<int64_t>());
  const uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    fail(where, ": ", field, " value ", u, " is too large");
  return u;
}

const json& required(const json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) fail(where, ": missing \"", key, "\"");
  return *it;
}

StTensorInfo parse_entry(const std::string& name, const json& v, const std::string& what,
                         uint64_t data_size) {
  const std::string where = what + ": tensor " + quoted(name);
  if (!v.is_object())
    fail(where, ": entry must be an object with dtype, shape and data_offsets, found ",
         json_type_name(v));
  // Other keys are ignored, as the reference implementation does.
  StTensorInfo t;
  t.name = name;

  const json& jd = required(v, "dtype", where);
  if (!jd.is_string()) fail(where, ": \"dtype\" must be a string, found ", json_type_name(jd));
  const std::string& dname = jd.get_ref<const std::string&>();
  auto dt = st_dtype_from_name(dname);
  if (!dt) fail(where, ": unknown dtype ", quoted(dname), " (the spec defines ", known_dtype_names(), ")");
  t.dtype = *dt;

  const json& js = required(v, "shape", where);
  if (!js.is_array()) fail(where, ": \"shape\" must be an array, found ", json_type_name(js));
  t.shape.reserve(js.size());
  bool has_zero = false;
  for (const json& d : js) {
    t.shape.push_back(static_cast<int64_t>(non_negative_int(d, where, "\"shape\"")));
    has_zero |= t.shape.back() == 0;
  }
  // Byte size = numel * bits / 8, overflow-checked. A zero dimension makes the tensor empty
  // whatever the others are (and must not trip the overflow check).
  uint64_t bits = 0;
  if (!has_zero) {
    bits = st_dtype_bits(t.dtype);
    for (int64_t d : t.shape)
      if (__builtin_mul_overflow(bits, static_cast<uint64_t>(d), &bits))
        fail(where, ": shape ", shape_str(t.shape), " of ", dname, " overflows 64-bit byte size");
  }
  if (bits % 8 != 0)
    fail(where, ": shape ", shape_str(t.shape), " of sub-byte dtype ", dname,
         " does not fill a whole number of bytes");
  const uint64_t expected_bytes = bits / 8;

  const json& jo = required(v, "data_offsets", where);
  if (!jo.is_array() || jo.size() != 2)
    fail(where, ": \"data_offsets\" must be [begin, end], found ", json_brief(jo));
  t.begin = non_negative_int(jo[0], where, "\"data_offsets\"");
  t.end = non_negative_int(jo[1], where, "\"data_offsets\"");
  if (t.end < t.begin) fail(where, ": data_offsets [", t.begin, ", ", t.end, "] end before begin");
  if (t.end > data_size)
    fail(where, ": data_offsets [", t.begin, ", ", t.end, "] run past the end of the data section (",
         data_size, " bytes); the file is truncated or the offsets are wrong");
  if (t.end - t.begin != expected_bytes)
    fail(where, ": data_offsets [", t.begin, ", ", t.end, "] span ", t.end - t.begin,
         " bytes but dtype ", dname, " with shape ", shape_str(t.shape), " needs ", expected_bytes);
  return t;
}

}  // namespace

std::optional<StDType> st_dtype_from_name(std::string_view name) {
  for (const auto& e : kDTypes)
    if (name == e.name) return e.type;
  return std::nullopt;
}
const char* st_dtype_name(StDType t) { return entry(t).name; }
unsigned st_dtype_bits(StDType t) { return entry(t).bits; }

std::optional<DType> st_to_dtype(StDType t) {
  switch (t) {
    case StDType::F32: return DType::F32;
    case StDType::BF16: return DType::BF16;
    case StDType::F16: return DType::F16;
    case StDType::I32: return DType::I32;
    case StDType::U8: return DType::U8;
    default: return std::nullopt;
  }
}

StDType st_from_dtype(DType t) {
  switch (t) {
    case DType::F32: return StDType::F32;
    case DType::BF16: return StDType::BF16;
    case DType::F16: return StDType::F16;
    case DType::I32: return StDType::I32;
    case DType::U8: return StDType::U8;
  }
  fail("st_from_dtype: unknown DType ", static_cast<int>(t));
}

int64_t StTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d == 0) return 0;
  for (int64_t d : shape) n *= d;  // cannot overflow: validated against the byte size
  return n;
}

StHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& what) {
  if (size < 8)
    fail(what, ": file is ", size,
         " bytes, too short for a safetensors file (it starts with an 8-byte header length)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (n > kMaxSafetensorsHeader)
    fail(what, ": header length ", n, " bytes exceeds the ", kMaxSafetensorsHeader,
         "-byte limit (corrupt or not a safetensors file)");
  if (n > size - 8)
    fail(what, ": header length ", n, " bytes runs past the end of the file (", size - 8,
         " bytes follow the length prefix); the file is truncated or not safetensors");
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (n == 0 || text[0] != '{')
    fail(what, ": header is not a JSON object: it must start with '{'",
         n == 0 ? std::string(" but is empty") : " but starts with byte " + std::to_string(bytes[8]));
  // nlohmann treats NUL as end of input, which would silently accept garbage after it. NUL is
  // never valid in JSON text, so reject it up front.
  const std::string_view header(text, n);
  if (auto p = header.find('\0'); p != std::string_view::npos)
    fail(what, ": header contains a NUL byte at header offset ", p);

  StHeader out;
  out.header_size = n;
  out.data_size = size - 8 - n;
  // Depth: root object > entry object > shape array; anything deeper is invalid anyway.
  const json h = parse_json_strict(header, what + ": header", 8);
  if (!h.is_object()) fail(what, ": header is not a JSON object, found ", json_type_name(h));

  out.tensors.reserve(h.size());
  for (const auto& [key, value] : h.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;  // the reference implementation accepts null here
      if (!value.is_object())
        fail(what, ": \"__metadata__\" must be an object of strings, found ", json_type_name(value));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail(what, ": \"__metadata__\" value for ", quoted(mk), " must be a string, found ",
               json_type_name(mv));
        out.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    out.tensors.push_back(parse_entry(key, value, what, out.data_size));
  }

  // The tensors must tile [0, data_size) exactly: no gaps (unaccounted bytes), no overlaps
  // (two tensors aliasing the same bytes), nothing trailing.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const StTensorInfo* prev = nullptr;
  for (const StTensorInfo& t : out.tensors) {
    if (t.begin > covered)
      fail(what, ": gap in the data section: bytes [", covered, ", ", t.begin,
           ") belong to no tensor (before tensor ", quoted(t.name), ")");
    if (t.begin < covered)
      fail(what, ": tensor ", quoted(t.name), " data_offsets [", t.begin, ", ", t.end,
           "] overlap tensor ", quoted(prev->name), " [", prev->begin, ", ", prev->end, "]");
    covered = t.end;
    prev = &t;
  }
  if (covered != out.data_size)
    fail(what, ": data section has ", out.data_size, " bytes but the tensors cover only ", covered,
         " (trailing bytes: corrupt file or wrong offsets)");
  return out;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  if (!std::filesystem::exists(path)) fail("safetensors file ", path.string(), " does not exist");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))  // a FIFO would block the open for ever
    fail("safetensors file ", path.string(), " is not a regular file (a directory, FIFO, socket or device)");
  f.file_ = MappedFile(path);
  f.header_ = parse_safetensors_header(f.file_.data(), f.file_.size(), path.string());
  f.index_.reserve(f.header_.tensors.size());
  for (size_t i = 0; i < f.header_.tensors.size(); ++i) f.index_.emplace(f.header_.tensors[i].name, i);
  return f;
}

const StTensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const StTensorInfo& SafetensorsFile::get(const std::string& name) const {
  const StTensorInfo* t = find(name);
  if (!t) fail(path(), ": no tensor named ", quoted(name));
  return *t;
}

const uint8_t* SafetensorsFile::data(const StTensorInfo& t) const {
  return file_.data() + header_.data_start() + t.begin;
}

}  // namespace rt
