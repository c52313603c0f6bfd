#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "common/durable_file.h"
#include "loader/json_util.h"
#include "loader/safetensors.h"
#include "rt/sdk/error.h"

namespace rt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kState = "state.safetensors";
constexpr const char* kManifest = "manifest.json";
constexpr const char* kLatest = "latest";
constexpr const char* kFiles = "files";                   // {file: {"size": N, "crc32": C}}
constexpr const char* kManifestCrc = "manifest_crc32";    // crc32 of the manifest without this field

// ---- checksums ----

uint32_t crc_update(uint32_t crc, const void* data, size_t n) {
  if (n == 0) return crc;  // zlib answers a null buffer (an empty vector's data()) with 0
  return static_cast<uint32_t>(::crc32_z(crc, static_cast<const Bytef*>(data), n));
}

// The text whose crc32 is the manifest's own checksum: the manifest as written, minus that field.
std::string manifest_checked_text(nlohmann::ordered_json m) {
  m.erase(kManifestCrc);
  return m.dump(1) + "\n";
}

struct FileSum {
  uint64_t size = 0;
  uint32_t crc = 0;
};

// ---- directory names ----

// step number of "step_00000042"; nullopt for anything else (temporary leftovers included).
std::optional<int64_t> parse_step_name(const std::string& name) {
  if (name.size() < 13 || name.size() > 23 || name.rfind("step_", 0) != 0) return std::nullopt;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

bool is_complete(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kManifest, ec) && fs::is_regular_file(dir / kState, ec);
}

// Complete step directories, oldest first.
std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& ckdir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ckdir, ec)) {
    const auto step = parse_step_name(e.path().filename().string());
    if (step && e.is_directory() && is_complete(e.path())) out.emplace_back(*step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool is_leftover(const std::string& name) {
  return name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos;
}

// Renames first so that a crash halfway through a delete never leaves a step_* directory that
// looks complete but is not.
void remove_checkpoint_dir(const fs::path& dir, const std::string& pid) {
  const fs::path doomed = dir.string() + ".old-" + pid;
  rename_or_fail(dir, doomed);
  std::error_code ec;
  fs::remove_all(doomed, ec);
}

// ---- state.safetensors, streamed from the caller's vectors ----

// The header serialize_safetensors would write (same key order, same space padding), built
// without copying the data: a 3B model's master weights and moments are tens of GB.
std::string safetensors_header(const std::vector<NamedHostTensor>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "rt_train_checkpoint"}};
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const NamedHostTensor& t : tensors) {
    RT_CHECK(!t.name.empty() && t.name != "__metadata__", "save_checkpoint: invalid tensor name \"", t.name, "\"");
    RT_CHECK(names.insert(t.name).second, "save_checkpoint: duplicate tensor \"", t.name, "\"");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      RT_CHECK(d >= 0, "save_checkpoint: tensor \"", t.name, "\" has negative dim ", d);
      RT_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel),
               "save_checkpoint: tensor \"", t.name, "\" is too large");
    }
    RT_CHECK(numel == t.data.size(), "save_checkpoint: tensor \"", t.name, "\" has ", t.data.size(),
             " values but its shape needs ", numel);
    const uint64_t nbytes = numel * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

FileSum write_state(const fs::path& path, const std::vector<NamedHostTensor>& tensors) {
  static_assert(sizeof(float) == 4);
  const std::string header = safetensors_header(tensors);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  std::vector<std::pair<const void*, size_t>> pieces = {{len, 8}, {header.data(), header.size()}};
  for (const NamedHostTensor& t : tensors) pieces.emplace_back(t.data.data(), t.data.size() * sizeof(float));
  FileSum sum;
  for (const auto& [p, n] : pieces) {
    sum.size += n;
    sum.crc = crc_update(sum.crc, p, n);
  }
  write_file_durable(path, pieces);
  return sum;
}

// Without the "files" and checksum fields, which add_checksums fills in once the state is written.
nlohmann::ordered_json manifest_json(const CheckpointMeta& meta, const std::vector<NamedHostTensor>& tensors) {
  nlohmann::ordered_json m;
  m["format_version"] = kCheckpointFormatVersion;
  m["step"] = meta.step;
  m["data_cursor"] = {{"epoch", meta.cursor.epoch}, {"index", meta.cursor.index}};
  m["rng_state"] = meta.rng_state;
  m["config_hash"] = meta.config_hash;
  if (meta.config_json.empty()) {
    m["config"] = nullptr;
  } else {
    try {
      m["config"] = nlohmann::ordered_json::parse(meta.config_json);
    } catch (const json::exception& e) {
      fail("save_checkpoint: config_json is not valid JSON: ", e.what());
    }
  }
  m["extra"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : meta.extra) m["extra"][k] = v;
  m["tensors"] = nlohmann::ordered_json::array();
  for (const NamedHostTensor& t : tensors) m["tensors"].push_back({{"name", t.name}, {"shape", t.shape}});
  return m;
}

std::string manifest_text(nlohmann::ordered_json m, const FileSum& state) {
  m[kFiles] = {{kState, {{"size", state.size}, {"crc32", state.crc}}}};
  const std::string checked = manifest_checked_text(m);
  m[kManifestCrc] = crc_update(0, checked.data(), checked.size());
  return m.dump(1) + "\n";
}

// ---- manifest validation ----

const json& field(const json& m, const char* key, const std::string& what) {
  auto it = m.find(key);
  if (it == m.end()) fail(what, ": missing required field \"", key, "\"");
  return *it;
}

int64_t int_field(const json& m, const char* key, const std::string& what) {
  const json& v = field(m, key, what);
  if (!json_is_integer(v) || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX))
    fail(what, ": field \"", key, "\" must be an integer, found ", json_type_name(v), " ", json_brief(v));
  const int64_t x = v.get<int64_t>();
  if (x < 0) fail(what, ": field \"", key, "\" must be >= 0, found ", x);
  return x;
}

std::string string_field(const json& m, const char* key, const std::string& what) {
  const json& v = field(m, key, what);
  if (!v.is_string()) fail(what, ": field \"", key, "\" must be a string, found ", json_type_name(v));
  return v.get<std::string>();
}

uint32_t crc32_field(const json& m, const char* key, const std::string& what) {
  const int64_t x = int_field(m, key, what);
  if (x > 0xffffffffll) fail(what, ": field \"", key, "\" must be a 32-bit checksum, found ", x);
  return static_cast<uint32_t>(x);
}

// crc32 of a whole file, streamed (a 3B model's state is tens of GB).
uint32_t file_crc32(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open: ", std::strerror(errno));
  std::vector<char> buf(size_t{4} << 20);
  uint32_t crc = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    crc = crc_update(crc, buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) fail(path.string(), ": read error");
  return crc;
}

// Checks the manifest's own checksum, then the size and crc32 of every file it lists (which must
// include state.safetensors); errors name the file and what differs. Returns false, checking
// nothing, for a manifest of the previous version, which has no checksums at all.
bool verify_checksums(const fs::path& dir, const std::string& text, const json& m, const std::string& what) {
  const bool has_files = m.contains(kFiles), has_self = m.contains(kManifestCrc);
  if (!has_files && !has_self) return false;
  const uint32_t want_self = crc32_field(m, kManifestCrc, what);
  const std::string checked = manifest_checked_text(nlohmann::ordered_json::parse(text));
  const uint32_t got_self = crc_update(0, checked.data(), checked.size());
  if (got_self != want_self)
    fail(what, ": checksum mismatch (crc32 ", got_self, ", manifest says ", want_self, "): the manifest is corrupt");
  const json& files = field(m, kFiles, what);
  if (!files.is_object()) fail(what, ": field \"files\" must be an object, found ", json_type_name(files));
  if (!files.contains(kState)) fail(what, ": field \"files\" does not list ", kState);
  for (const auto& [name, e] : files.items()) {
    const std::string ewhat = what + ": files[\"" + name + "\"]";
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos || name == kManifest)
      fail(ewhat, ": not a file name of this checkpoint");
    if (!e.is_object()) fail(ewhat, " must be an object, found ", json_type_name(e));
    const int64_t want_size = int_field(e, "size", ewhat);
    const uint32_t want_crc = crc32_field(e, "crc32", ewhat);
    const fs::path p = dir / name;
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) fail(dir.string(), ": no ", name, " (incomplete checkpoint)");
    const uintmax_t size = fs::file_size(p, ec);
    if (ec) fail(p.string(), ": cannot stat: ", ec.message());
    if (size != static_cast<uintmax_t>(want_size))
      fail(p.string(), ": size mismatch: ", size, " bytes, manifest says ", want_size,
           size < static_cast<uintmax_t>(want_size) ? " (truncated)" : "");
    const uint32_t crc = file_crc32(p);
    if (crc != want_crc) fail(p.string(), ": checksum mismatch (crc32 ", crc, ", manifest says ", want_crc, "): corrupt");
  }
  return true;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  RT_CHECK(step >= 0, "checkpoint step must be >= 0, found ", step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

const NamedHostTensor* Checkpoint::find(const std::string& name) const {
  for (const NamedHostTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const NamedHostTensor& Checkpoint::get(const std::string& name) const {
  const NamedHostTensor* t = find(name);
  if (!t) fail((dir / kState).string(), ": no tensor \"", name, "\" in this checkpoint");
  return *t;
}

fs::path save_checkpoint(const fs::path& out_dir, const CheckpointMeta& meta,
                         const std::vector<NamedHostTensor>& tensors, int keep_last) {
  RT_CHECK(keep_last >= 1, "save_checkpoint: keep_last must be >= 1, found ", keep_last);
  const fs::path ckdir = out_dir / "checkpoints";
  const std::string name = checkpoint_dir_name(meta.step);
  const std::string pid = std::to_string(::getpid());
  std::error_code ec;
  fs::create_directories(ckdir, ec);
  if (ec) fail("cannot create ", ckdir.string(), ": ", ec.message());

  // Leftovers of a crashed write (ours or an earlier process's) are garbage by construction.
  std::vector<fs::path> leftovers;
  for (const auto& e : fs::directory_iterator(ckdir))
    if (is_leftover(e.path().filename().string())) leftovers.push_back(e.path());
  for (const fs::path& p : leftovers) fs::remove_all(p, ec);
  for (const auto& [step, dir] : complete_checkpoints(ckdir))
    if (step > meta.step)
      fail(ckdir.string(), " holds ", dir.filename().string(), ", newer than step ", meta.step,
           " being saved: resume from it, or write to a fresh output directory");

  const nlohmann::ordered_json mjson = manifest_json(meta, tensors);  // validates before touching disk
  const fs::path tmp = ckdir / (name + ".tmp-" + pid);
  if (!fs::create_directory(tmp, ec) || ec) fail("cannot create ", tmp.string(), ": ", ec.message());
  const std::string manifest = manifest_text(mjson, write_state(tmp / kState, tensors));
  write_file_durable(tmp / kManifest, {{manifest.data(), manifest.size()}});
  fsync_dir(tmp);

  // A directory for the same step (a re-save) is moved aside, not deleted, until the new one is
  // in place; the scan ignores *.old-* names.
  const fs::path final_dir = ckdir / name, aside = final_dir.string() + ".old-" + pid;
  const bool replacing = fs::exists(final_dir);
  if (replacing) rename_or_fail(final_dir, aside);
  rename_or_fail(tmp, final_dir);
  fsync_dir(ckdir);
  if (replacing) fs::remove_all(aside, ec);

  const std::string latest = name + "\n";
  const fs::path latest_tmp = ckdir / (std::string(kLatest) + ".tmp-" + pid);
  write_file_durable(latest_tmp, {{latest.data(), latest.size()}});
  rename_or_fail(latest_tmp, ckdir / kLatest);
  fsync_dir(ckdir);

  auto all = complete_checkpoints(ckdir);
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i)
    remove_checkpoint_dir(all[i].second, pid);
  fsync_dir(ckdir);
  return final_dir;
}

std::optional<fs::path> find_latest_checkpoint(const fs::path& out_dir) {
  const fs::path ckdir = out_dir / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(ckdir, ec)) return std::nullopt;
  const auto all = complete_checkpoints(ckdir);
  std::optional<fs::path> from_latest;
  std::ifstream in(ckdir / kLatest);
  std::string line;
  if (in && std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto step = parse_step_name(line);
    if (step && is_complete(ckdir / line) && (all.empty() || *step >= all.back().first))
      from_latest = ckdir / line;
  }
  if (from_latest) return from_latest;
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

Checkpoint load_checkpoint(const fs::path& dir, std::ostream& warn) {
  const fs::path mpath = dir / kManifest, spath = dir / kState;
  const std::string what = mpath.string();
  std::error_code ec;
  if (!fs::is_regular_file(mpath, ec))
    fail(dir.string(), ": no ", kManifest, " (not a checkpoint directory, or an incomplete one)");
  std::ifstream in(mpath, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in) fail(what, ": cannot read");
  const std::string text = ss.str();
  const json m = parse_json_strict(text, what);
  if (!m.is_object()) fail(what, ": expected a JSON object, found ", json_type_name(m));
  if (!verify_checksums(dir, text, m, what))
    warn << "warning: " << dir.string() << ": " << kManifest
         << " has no checksums (written by an older version); its files cannot be verified\n";

  const json& version = field(m, "format_version", what);
  if (!json_is_integer(version) || version.get<int64_t>() != kCheckpointFormatVersion)
    fail(what, ": field \"format_version\": expected ", kCheckpointFormatVersion, ", found ", json_brief(version),
         " (written by a different version of the runtime)");

  Checkpoint c;
  c.dir = dir;
  c.meta.step = int_field(m, "step", what);
  const json& cur = field(m, "data_cursor", what);
  if (!cur.is_object()) fail(what, ": field \"data_cursor\" must be an object, found ", json_type_name(cur));
  c.meta.cursor.epoch = int_field(cur, "epoch", what + ": data_cursor");
  c.meta.cursor.index = int_field(cur, "index", what + ": data_cursor");
  c.meta.rng_state = string_field(m, "rng_state", what);
  c.meta.config_hash = string_field(m, "config_hash", what);
  const json& cfg = field(m, "config", what);
  if (!cfg.is_null() && !cfg.is_object())
    fail(what, ": field \"config\" must be an object or null, found ", json_type_name(cfg));
  if (cfg.is_object())  // key order as written, so the text equals the config_json that was saved
    c.meta.config_json = nlohmann::ordered_json::parse(text)["config"].dump();
  if (auto it = m.find("extra"); it != m.end()) {
    if (!it->is_object()) fail(what, ": field \"extra\" must be an object, found ", json_type_name(*it));
    for (const auto& [k, v] : it->items()) {
      if (!v.is_string()) fail(what, ": field \"extra.", k, "\" must be a string, found ", json_type_name(v));
      c.meta.extra[k] = v.get<std::string>();
    }
  }

  const json& list = field(m, "tensors", what);
  if (!list.is_array()) fail(what, ": field \"tensors\" must be an array, found ", json_type_name(list));
  if (!fs::is_regular_file(spath, ec)) fail(dir.string(), ": no ", kState, " (incomplete checkpoint)");
  const SafetensorsFile st = SafetensorsFile::open(spath);
  std::set<std::string> listed;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& e = list[i];
    const std::string ewhat = what + ": tensors[" + std::to_string(i) + "]";
    if (!e.is_object()) fail(ewhat, " must be an object, found ", json_type_name(e));
    NamedHostTensor t;
    t.name = string_field(e, "name", ewhat);
    if (!listed.insert(t.name).second) fail(ewhat, ": tensor \"", t.name, "\" is listed twice");
    const json& shape = field(e, "shape", ewhat);
    if (!shape.is_array()) fail(ewhat, ": field \"shape\" must be an array, found ", json_type_name(shape));
    for (const json& d : shape) {
      if (!json_is_integer(d) || d.get<int64_t>() < 0)
        fail(ewhat, ": field \"shape\" must hold non-negative integers, found ", json_brief(shape));
      t.shape.push_back(d.get<int64_t>());
    }
    const StTensorInfo* info = st.find(t.name);
    if (!info) fail(spath.string(), ": tensor \"", t.name, "\" listed in ", kManifest, " is missing");
    if (info->dtype != StDType::F32)
      fail(spath.string(), ": tensor \"", t.name, "\": expected dtype F32, found ", st_dtype_name(info->dtype));
    if (info->shape != t.shape)
      fail(spath.string(), ": tensor \"", t.name, "\": expected shape ", shape_str(t.shape), " (", kManifest,
           "), found ", shape_str(info->shape));
    t.data.resize(static_cast<size_t>(info->numel()));
    if (!t.data.empty()) std::memcpy(t.data.data(), st.data(*info), info->nbytes());
    c.tensors.push_back(std::move(t));
  }
  for (const StTensorInfo& info : st.tensors())
    if (!listed.count(info.name))
      fail(spath.string(), ": tensor \"", info.name, "\" is not listed in ", kManifest);
  return c;
}

std::optional<Checkpoint> load_latest_checkpoint(const fs::path& out_dir, std::ostream& warn) {
  const fs::path ckdir = out_dir / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(ckdir, ec)) return std::nullopt;
  // Every step directory, complete or not, newest first: `latest` can only name one of them, and
  // one newer than it is a crash between the rename and the update of `latest`.
  std::vector<std::pair<int64_t, fs::path>> dirs;
  for (const auto& e : fs::directory_iterator(ckdir, ec)) {
    const auto step = parse_step_name(e.path().filename().string());
    if (step && e.is_directory()) dirs.emplace_back(*step, e.path());
  }
  if (ec) fail("cannot list ", ckdir.string(), ": ", ec.message());
  if (dirs.empty()) return std::nullopt;
  std::sort(dirs.rbegin(), dirs.rend());

  std::vector<std::pair<fs::path, std::string>> bad;  // skipped directories and why
  for (const auto& [step, dir] : dirs) {
    std::ostringstream notes;  // the unverified warning, only for the checkpoint used
    std::optional<Checkpoint> c;
    try {
      c = load_checkpoint(dir, notes);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      bad.emplace_back(dir, e.what());
      continue;
    }
    // The skipped newer directories are moved aside (kept for inspection): saving a step older
    // than a step_* directory is refused, and keep_last must not count them.
    const std::string pid = std::to_string(::getpid());
    for (const auto& [bdir, why] : bad) {
      fs::path aside = bdir.string() + ".corrupt";
      for (int i = 1; fs::exists(aside, ec); ++i) aside = bdir.string() + ".corrupt-" + pid + "-" + std::to_string(i);
      rename_or_fail(bdir, aside);
      warn << "warning: checkpoint " << bdir.string() << " is corrupt or incomplete (" << why
           << "); moved it to " << aside.filename().string() << " and resuming from the older checkpoint "
           << dir.string() << "\n";
    }
    if (!bad.empty()) fsync_dir(ckdir);
    warn << notes.str();
    return c;
  }
  std::ostringstream why;
  for (const auto& [bdir, w] : bad) why << "\n  " << bdir.filename().string() << ": " << w;
  fail(ckdir.string(), ": no intact checkpoint to resume from (", bad.size(),
       bad.size() == 1 ? " checkpoint, corrupt or incomplete):" : " checkpoints, all corrupt or incomplete):", why.str());
}

}  // namespace rt
