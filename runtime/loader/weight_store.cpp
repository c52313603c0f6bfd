#include "loader/weight_store.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "loader/json_util.h"
#include "rt/sdk/error.h"

namespace rt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kInMemory = "<in-memory>";

std::string read_text(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) fail(p.string(), " is not a regular file (a directory, FIFO, socket or device)");
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot read ", p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Shard names come from a file we do not control: only plain file names inside the model
// directory are accepted, so an index cannot point the loader at arbitrary paths.
void check_shard_name(const std::string& shard, const std::string& tensor, const std::string& what) {
  if (shard.empty() || shard == "." || shard == ".." ||
      shard.find_first_of("/\\") != std::string::npos || shard.find('\0') != std::string::npos)
    fail(what, ": weight_map entry for tensor \"", tensor, "\" names shard \"", shard,
         "\", which is not a plain file name in the model directory");
}

// Index of the first element of `data` (n elements of unsigned type U, possibly misaligned) whose
// exponent bits (`mask`) are all set, i.e. a NaN or an infinity; n when there is none. Blocks are
// OR-reduced first (vectorizes), and only a block that has one is searched element by element.
template <typename U>
int64_t first_non_finite(const uint8_t* data, int64_t n, U mask) {
  constexpr int64_t kBlock = 4096;
  U buf[kBlock];
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t m = std::min(kBlock, n - b0);
    std::memcpy(buf, data + b0 * static_cast<int64_t>(sizeof(U)), static_cast<size_t>(m) * sizeof(U));
    bool bad = false;
    for (int64_t i = 0; i < m; ++i) bad |= (buf[i] & mask) == mask;
    if (!bad) continue;
    for (int64_t i = 0; i < m; ++i)
      if ((buf[i] & mask) == mask) return b0 + i;
  }
  return n;
}

}  // namespace

void check_finite(const WeightInfo& w) {
  const int64_t n = static_cast<int64_t>(w.nbytes / std::max<size_t>(1, st_dtype_bits(w.dtype) / 8));
  int64_t i = n;
  const char* kind = "";
  switch (w.dtype) {
    case StDType::F32: {
      i = first_non_finite<uint32_t>(w.data, n, 0x7f800000u);
      if (i < n) {
        uint32_t x;
        std::memcpy(&x, w.data + i * 4, 4);
        kind = (x & 0x007fffffu) ? "nan" : (x >> 31) ? "-inf" : "inf";
      }
      break;
    }
    case StDType::F16:
    case StDType::BF16: {
      const bool f16 = w.dtype == StDType::F16;
      const uint16_t exp = f16 ? 0x7c00 : 0x7f80, man = f16 ? 0x03ff : 0x007f;
      i = first_non_finite<uint16_t>(w.data, n, exp);
      if (i < n) {
        uint16_t x;
        std::memcpy(&x, w.data + i * 2, 2);
        kind = (x & man) ? "nan" : (x >> 15) ? "-inf" : "inf";
      }
      break;
    }
    default:
      return;
  }
  if (i < n) fail(w.file, ": tensor '", w.name, "' has a non-finite value (", kind, ") at element ", i);
}

int64_t WeightInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string WeightInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

WeightStore::WeightStore() = default;
WeightStore::~WeightStore() = default;
WeightStore::WeightStore(WeightStore&&) noexcept = default;
WeightStore& WeightStore::operator=(WeightStore&&) noexcept = default;

void WeightStore::add_file(std::unique_ptr<SafetensorsFile> f) {
  for (const StTensorInfo& t : f->tensors()) {
    WeightInfo w{t.name, t.dtype, t.shape, f->data(t), static_cast<size_t>(t.nbytes()), f->path()};
    auto [it, inserted] = tensors_.emplace(t.name, std::move(w));
    if (!inserted)
      fail("tensor \"", t.name, "\" is in two files: ", it->second.file, " and ", f->path());
  }
  file_paths_.push_back(f->path());
  files_.push_back(std::move(f));
}

WeightStore WeightStore::open_file(const fs::path& path) {
  WeightStore s;
  s.add_file(std::make_unique<SafetensorsFile>(SafetensorsFile::open(path)));
  return s;
}

WeightStore WeightStore::open(const fs::path& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec))
    fail("model directory ", model_dir.string(), " does not exist or is not a directory");
  const fs::path single = model_dir / kSingleFile;
  const fs::path index = model_dir / kIndexFile;
  // transformers prefers the single file when both exist; so do we.
  if (fs::exists(single, ec)) return open_file(single);
  if (!fs::exists(index, ec)) {
    std::string hint;
    if (fs::exists(model_dir / "pytorch_model.bin", ec) ||
        fs::exists(model_dir / "pytorch_model.bin.index.json", ec))
      hint = " (only PyTorch .bin weights found; convert them to safetensors, e.g. with "
             "transformers' save_pretrained(safe_serialization=True))";
    fail("no weights in ", model_dir.string(), ": neither ", single.string(), " nor ",
         index.string(), " exists", hint);
  }

  const std::string what = index.string();
  const json j = parse_json_strict(read_text(index), what);
  if (!j.is_object()) fail(what, ": index must be a JSON object, found ", json_type_name(j));
  auto wm = j.find("weight_map");
  if (wm == j.end()) fail(what, ": missing \"weight_map\"");
  if (!wm->is_object()) fail(what, ": \"weight_map\" must be an object, found ", json_type_name(*wm));
  if (wm->empty()) fail(what, ": \"weight_map\" is empty");

  std::map<std::string, std::string> shard_of;  // tensor -> shard
  std::map<std::string, std::string> first_user;  // shard -> a tensor mapped to it (for errors)
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string())
      fail(what, ": weight_map entry for tensor \"", tensor, "\" must be a file name, found ",
           json_type_name(shard));
    const std::string& name = shard.get_ref<const std::string&>();
    check_shard_name(name, tensor, what);
    shard_of.emplace(tensor, name);
    first_user.emplace(name, tensor);
  }

  WeightStore s;
  for (const auto& [shard, tensor] : first_user) {
    const fs::path p = model_dir / shard;
    if (!fs::exists(p, ec))
      fail(what, ": shard ", p.string(), " (holding e.g. tensor \"", tensor, "\") does not exist");
    s.add_file(std::make_unique<SafetensorsFile>(SafetensorsFile::open(p)));
  }
  for (const auto& [tensor, shard] : shard_of) {
    const WeightInfo* w = s.find(tensor);
    const std::string expected = (model_dir / shard).string();
    if (!w) fail(what, ": maps tensor \"", tensor, "\" to ", expected, ", which has no such tensor");
    if (w->file != expected)
      fail(what, ": maps tensor \"", tensor, "\" to ", expected, " but it is in ", w->file);
  }
  return s;
}

const WeightInfo* WeightStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const WeightInfo& WeightStore::get(const std::string& name) const {
  const WeightInfo* w = find(name);
  if (!w) fail("tensor \"", name, "\" not found (searched: ", files_searched(), ")");
  return *w;
}

const WeightInfo& WeightStore::add_owned(const std::string& name, StDType dtype,
                                         std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
  if (const WeightInfo* old = find(name))
    fail("add_owned: tensor \"", name, "\" already exists (from ", old->file, ")");
  uint64_t bits = st_dtype_bits(dtype);
  for (int64_t d : shape) {
    RT_CHECK(d >= 0, "add_owned: tensor \"", name, "\" has negative dimension ", d);
    RT_CHECK(!__builtin_mul_overflow(bits, static_cast<uint64_t>(d), &bits), "add_owned: tensor \"",
             name, "\" is too large");
  }
  RT_CHECK(bits % 8 == 0 && bits / 8 == bytes.size(), "add_owned: tensor \"", name, "\" has ",
           bytes.size(), " bytes but dtype ", st_dtype_name(dtype), " with its shape needs ", bits / 8);
  owned_.push_back(std::make_unique<std::vector<uint8_t>>(std::move(bytes)));
  const std::vector<uint8_t>& buf = *owned_.back();
  WeightInfo w{name, dtype, std::move(shape), buf.data(), buf.size(), kInMemory};
  return tensors_.emplace(name, std::move(w)).first->second;
}

void WeightStore::rename(const std::string& from, const std::string& to) {
  if (from == to) return;
  auto node = tensors_.extract(from);
  if (node.empty()) fail("rename: tensor \"", from, "\" not found (searched: ", files_searched(), ")");
  if (const WeightInfo* taken = find(to)) {
    const std::string file = node.mapped().file;
    tensors_.insert(std::move(node));
    fail(file, ": tensor \"", from, "\" would be renamed to \"", to, "\", which ", taken->file,
         " already holds; a checkpoint must name each tensor once");
  }
  // The map node keeps its address, so WeightInfo pointers handed out before stay valid.
  node.key() = to;
  node.mapped().name = to;
  tensors_.insert(std::move(node));
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, w] : tensors_) out.push_back(name);
  return out;
}

std::string WeightStore::files_searched() const {
  std::string s;
  for (const std::string& f : file_paths_) s += (s.empty() ? "" : ", ") + f;
  if (!owned_.empty()) s += (s.empty() ? "" : ", ") + std::to_string(owned_.size()) + " in-memory tensors";
  return s.empty() ? "no files" : s;
}

}  // namespace rt
