// Checkpoints: round trip, file format, latest/scan logic after simulated crashes, keep_last,
// every validation error of load_checkpoint, and checksums (corruption, fallback on resume).
#include <zlib.h>

#include <algorithm>
#include <random>

#include <nlohmann/json.hpp>

#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"
#include "train/checkpoint.h"
#include "train/train_config.h"
#include "test_util.h"

namespace rt::test {
namespace {

std::vector<NamedHostTensor> random_state(uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<NamedHostTensor> ts = {
      {"model.layers.0.router.weight", {2, 3}, {}},
      {"adam.m.model.layers.0.router.weight", {2, 3}, {}},
      {"adam.v.model.layers.0.router.weight", {6}, {}},
      {"scalar", {}, {}},
      {"empty", {0, 4}, {}},
  };
  for (auto& t : ts) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    for (int64_t i = 0; i < numel; ++i) t.data.push_back(n(g));
  }
  return ts;
}

CheckpointMeta meta_at(int64_t step) {
  CheckpointMeta m;
  m.step = step;
  m.cursor = {2, 17};
  m.rng_state = "12345 67890";
  TrainConfig c;
  c.attention["window"] = "512";
  m.config_json = c.to_json();
  m.config_hash = c.config_hash();
  m.extra = {{"model", "qwen2.5-0.5b"}, {"attention", "l2a_dense"}};
  return m;
}

void expect_same(const std::vector<NamedHostTensor>& a, const std::vector<NamedHostTensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].shape, b[i].shape);
    EXPECT_EQ(a[i].data, b[i].data);  // bit-exact
  }
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Flips two bytes of a file in place, `from_end` bytes before its end (inside the tensor data, so
// the safetensors header still parses).
void flip_two_bytes(const fs::path& p, size_t from_end = 8) {
  std::string s = read_file(p);
  ASSERT_GE(s.size(), from_end);
  s[s.size() - from_end] ^= 0x01;
  s[s.size() - from_end + 1] ^= 0x40;
  write_file(p, s);
}

// The manifest of the previous version: no checksums.
void strip_checksums(const fs::path& dir) {
  auto m = nlohmann::ordered_json::parse(read_file(dir / "manifest.json"));
  m.erase("files");
  m.erase("manifest_crc32");
  write_file(dir / "manifest.json", m.dump(1) + "\n");
}

uint32_t crc_of(const std::string& s) {
  return static_cast<uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

TEST(Checkpoint, RoundTrip) {
  TempDir out;
  const auto state = random_state(1);
  const CheckpointMeta meta = meta_at(7);
  const fs::path dir = save_checkpoint(out.path(), meta, state);
  EXPECT_EQ(dir, out.path() / "checkpoints" / "step_00000007");
  EXPECT_EQ(read_file(out.path() / "checkpoints" / "latest"), "step_00000007\n");
  EXPECT_EQ(entries(out.path() / "checkpoints"), (std::vector<std::string>{"latest", "step_00000007"}));
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"manifest.json", "state.safetensors"}));

  const Checkpoint c = load_checkpoint(dir);
  EXPECT_EQ(c.dir, dir);
  EXPECT_EQ(c.meta.step, 7);
  EXPECT_EQ(c.meta.cursor, meta.cursor);
  EXPECT_EQ(c.meta.rng_state, meta.rng_state);
  EXPECT_EQ(c.meta.config_json, meta.config_json);  // byte-identical, so hashes can be recomputed
  EXPECT_EQ(c.meta.config_hash, meta.config_hash);
  EXPECT_EQ(c.meta.extra, meta.extra);
  expect_same(c.tensors, state);
  EXPECT_EQ(c.get("scalar").data, state[3].data);
  EXPECT_EQ(c.find("nope"), nullptr);
  EXPECT_HAS(error_of([&] { c.get("nope"); }), "state.safetensors", "no tensor \"nope\"");

  // The manifest is readable JSON with the documented fields.
  const auto m = nlohmann::json::parse(read_file(dir / "manifest.json"));
  EXPECT_EQ(m["format_version"], kCheckpointFormatVersion);
  EXPECT_EQ(m["config"]["attention"]["window"], "512");
  EXPECT_EQ(m["tensors"].size(), state.size());
  // With the size and crc32 of the state file and the manifest's own checksum.
  const std::string st = read_file(dir / "state.safetensors");
  EXPECT_EQ(m["files"]["state.safetensors"]["size"], st.size());
  EXPECT_EQ(m["files"]["state.safetensors"]["crc32"], crc_of(st));
  EXPECT_TRUE(m["manifest_crc32"].is_number_unsigned());
}

TEST(Checkpoint, StateFileIsWhatTheSafetensorsWriterWrites) {
  TempDir out;
  const auto state = random_state(2);
  const fs::path dir = save_checkpoint(out.path(), meta_at(1), state);
  std::vector<StWriteTensor> w;
  for (const auto& t : state)
    w.push_back({t.name, StDType::F32, t.shape, t.data.data(), t.data.size() * sizeof(float)});
  const auto ref = serialize_safetensors(w, {{"format", "rt_train_checkpoint"}});
  const std::string got = read_file(dir / "state.safetensors");
  EXPECT_EQ(got, std::string(ref.begin(), ref.end()));
  // And the reader accepts it.
  EXPECT_EQ(SafetensorsFile::open(dir / "state.safetensors").tensors().size(), state.size());
}

TEST(Checkpoint, FindLatestAndKeepLast) {
  TempDir out;
  EXPECT_FALSE(find_latest_checkpoint(out.path()).has_value());
  const auto state = random_state(3);
  for (int64_t step : {10, 20, 30}) save_checkpoint(out.path(), meta_at(step), state, /*keep_last=*/2);
  const fs::path ck = out.path() / "checkpoints";
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000020", "step_00000030"}));
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000030");
  save_checkpoint(out.path(), meta_at(40), state, 1);
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000040"}));
  save_checkpoint(out.path(), meta_at(50), state, 3);
  save_checkpoint(out.path(), meta_at(60), state, 3);
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000040", "step_00000050", "step_00000060"}));
  EXPECT_HAS(error_of([&] { save_checkpoint(out.path(), meta_at(70), state, 0); }), "keep_last", ">= 1");
}

TEST(Checkpoint, CrashLeftoversAreIgnoredThenCleaned) {
  TempDir out;
  const auto state = random_state(4);
  save_checkpoint(out.path(), meta_at(100), state);
  save_checkpoint(out.path(), meta_at(200), state);
  const fs::path ck = out.path() / "checkpoints";

  // A crash in the middle of writing step 300: a half-written temporary directory, and a crash
  // in some other run left `latest` naming a directory that never made it into place.
  write_file(ck / "step_00000300.tmp-424242" / "state.safetensors", "partial");
  write_file(ck / "latest.tmp-424242", "step_00000300\n");
  write_file(ck / "latest", "step_00000300\n");
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000200");

  // An incomplete step directory (no manifest) is not a candidate either.
  write_file(ck / "step_00000250" / "state.safetensors", "partial");
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000200");
  fs::remove_all(ck / "step_00000250");

  // Garbage in `latest`.
  write_file(ck / "latest", "../../etc\n");
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000200");
  fs::remove(ck / "latest");
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000200");

  // Crash after the rename of step 200 but before `latest` was updated: latest is stale.
  write_file(ck / "latest", "step_00000100\n");
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000200");

  // The next write removes the leftovers.
  save_checkpoint(out.path(), meta_at(300), state);
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000200", "step_00000300"}));
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000300");
  expect_same(load_checkpoint(ck / "step_00000300").tensors, state);
}

TEST(Checkpoint, ResaveSameStepAndRefuseGoingBack) {
  TempDir out;
  save_checkpoint(out.path(), meta_at(5), random_state(5));
  const auto newer = random_state(6);
  save_checkpoint(out.path(), meta_at(5), newer);
  const fs::path ck = out.path() / "checkpoints";
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000005"}));
  expect_same(load_checkpoint(ck / "step_00000005").tensors, newer);
  EXPECT_HAS(error_of([&] { save_checkpoint(out.path(), meta_at(4), newer); }), "step_00000005",
             "newer than step 4", "fresh output directory");
}

TEST(Checkpoint, SaveRejectsBadTensors) {
  TempDir out;
  std::vector<NamedHostTensor> dup = {{"a", {1}, {1.f}}, {"a", {1}, {2.f}}};
  EXPECT_HAS(error_of([&] { save_checkpoint(out.path(), meta_at(1), dup); }), "duplicate tensor \"a\"");
  std::vector<NamedHostTensor> bad = {{"w", {2, 2}, {1.f, 2.f, 3.f}}};
  EXPECT_HAS(error_of([&] { save_checkpoint(out.path(), meta_at(1), bad); }), "tensor \"w\"", "3 values",
             "needs 4");
  CheckpointMeta m = meta_at(1);
  m.config_json = "{not json";
  EXPECT_HAS(error_of([&] { save_checkpoint(out.path(), m, random_state(1)); }), "config_json");
  // Nothing was left behind by the failed saves.
  EXPECT_FALSE(find_latest_checkpoint(out.path()).has_value());
}

class CheckpointLoadErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = save_checkpoint(out_.path(), meta_at(3), random_state(7));
    original_ = read_file(dir_ / "manifest.json");
  }
  // The manifest as saved (each test edits a fresh copy).
  nlohmann::ordered_json manifest() const { return nlohmann::ordered_json::parse(original_); }
  // Written with valid checksums (of the state file as it is now), so that the validation after
  // the checksum check is what the test sees.
  void set_manifest(nlohmann::ordered_json m) const {
    const std::string st = read_file(dir_ / "state.safetensors");
    m["files"]["state.safetensors"] = {{"size", st.size()}, {"crc32", crc_of(st)}};
    m.erase("manifest_crc32");
    m["manifest_crc32"] = crc_of(m.dump(1) + "\n");
    write_file(dir_ / "manifest.json", m.dump(1));
  }
  std::string load_error() const {
    return error_of([&] { load_checkpoint(dir_); });
  }
  TempDir out_;
  fs::path dir_;
  std::string original_;
};

TEST_F(CheckpointLoadErrors, MissingManifest) {
  fs::remove(dir_ / "manifest.json");
  EXPECT_HAS(load_error(), dir_.string(), "no manifest.json");
}

TEST_F(CheckpointLoadErrors, MissingState) {
  fs::remove(dir_ / "state.safetensors");
  EXPECT_HAS(load_error(), "no state.safetensors");
}

TEST_F(CheckpointLoadErrors, BadJson) {
  write_file(dir_ / "manifest.json", "{\"step\": 3,");
  EXPECT_HAS(load_error(), "manifest.json", "invalid JSON");
}

TEST_F(CheckpointLoadErrors, FormatVersion) {
  auto m = manifest();
  m["format_version"] = 2;
  set_manifest(m);
  EXPECT_HAS(load_error(), "manifest.json", "format_version", "expected 1, found 2");
  m.erase("format_version");
  set_manifest(m);
  EXPECT_HAS(load_error(), "missing required field \"format_version\"");
}

TEST_F(CheckpointLoadErrors, FieldTypes) {
  auto m = manifest();
  m["step"] = "3";
  set_manifest(m);
  EXPECT_HAS(load_error(), "manifest.json", "field \"step\" must be an integer, found string");
  m = manifest();
  m["data_cursor"].erase("index");
  set_manifest(m);
  EXPECT_HAS(load_error(), "data_cursor", "missing required field \"index\"");
  m = manifest();
  m["rng_state"] = 5;
  set_manifest(m);
  EXPECT_HAS(load_error(), "field \"rng_state\" must be a string");
  m = manifest();
  m["tensors"][0]["shape"] = {2, -3};
  set_manifest(m);
  EXPECT_HAS(load_error(), "tensors[0]", "non-negative integers");
}

TEST_F(CheckpointLoadErrors, TensorMissingOrWrongShape) {
  auto m = manifest();
  nlohmann::ordered_json ghost;
  ghost["name"] = "ghost";
  ghost["shape"] = nlohmann::ordered_json::array({1});
  m["tensors"].push_back(ghost);
  set_manifest(m);
  EXPECT_HAS(load_error(), "state.safetensors", "tensor \"ghost\" listed in manifest.json is missing");
  m = manifest();
  m["tensors"][0]["shape"] = {3, 2};
  set_manifest(m);
  EXPECT_HAS(load_error(), "state.safetensors", "model.layers.0.router.weight", "expected shape [3, 2]",
             "found [2, 3]");
  m = manifest();
  m["tensors"].erase(1);
  set_manifest(m);
  EXPECT_HAS(load_error(), "tensor \"adam.m.model.layers.0.router.weight\" is not listed in manifest.json");
}

TEST_F(CheckpointLoadErrors, WrongDtypeOrCorruptState) {
  const std::vector<uint16_t> half(6);
  save_safetensors(dir_ / "state.safetensors",
                   {{"model.layers.0.router.weight", StDType::BF16, {2, 3}, half.data(), 12}});
  auto m = manifest();
  m["tensors"] = nlohmann::ordered_json::array({{{"name", "model.layers.0.router.weight"}, {"shape", {2, 3}}}});
  set_manifest(m);
  EXPECT_HAS(load_error(), "expected dtype F32, found BF16");
  write_file(dir_ / "state.safetensors", "garbage");
  EXPECT_HAS(load_error(), "state.safetensors");
}

// ---- checksums: corruption is detected before any byte is used; resume falls back ----

TEST(CheckpointChecksums, FlippedBytesInStateFallBackToOlderCheckpoint) {
  TempDir out;
  const auto older = random_state(20), newer = random_state(21);
  save_checkpoint(out.path(), meta_at(10), older);
  save_checkpoint(out.path(), meta_at(20), newer);
  const fs::path ck = out.path() / "checkpoints", bad = ck / "step_00000020", good = ck / "step_00000010";
  flip_two_bytes(bad / "state.safetensors");

  EXPECT_HAS(error_of([&] { load_checkpoint(bad); }), (bad / "state.safetensors").string(), "checksum mismatch",
             "corrupt");
  std::ostringstream warn;
  const auto c = load_latest_checkpoint(out.path(), warn);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->dir, good);
  EXPECT_EQ(c->meta.step, 10);
  expect_same(c->tensors, older);
  EXPECT_HAS(warn.str(), "warning", bad.string(), "state.safetensors", "checksum mismatch", good.string());
  // The corrupt directory is kept aside, so the resumed run can save the steps after 10.
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000010", "step_00000020.corrupt"}));
  save_checkpoint(out.path(), meta_at(15), older);
  EXPECT_EQ(find_latest_checkpoint(out.path()), ck / "step_00000015");

  // A corrupt manifest (a changed data cursor still parses as valid JSON) is detected too.
  std::string text = read_file(ck / "step_00000015" / "manifest.json");
  const size_t at = text.find("\"index\": 17");
  ASSERT_NE(at, std::string::npos);
  text[at + 10] = '9';
  write_file(ck / "step_00000015" / "manifest.json", text);
  EXPECT_HAS(error_of([&] { load_checkpoint(ck / "step_00000015"); }), "manifest.json", "checksum mismatch");
  std::ostringstream warn2;
  EXPECT_EQ(load_latest_checkpoint(out.path(), warn2)->dir, good);
  EXPECT_HAS(warn2.str(), "step_00000015", "manifest.json", "checksum mismatch", good.string());
}

TEST(CheckpointChecksums, NoIntactCheckpointIsAClearError) {
  TempDir out;
  save_checkpoint(out.path(), meta_at(10), random_state(22));
  const fs::path ck = out.path() / "checkpoints";
  flip_two_bytes(ck / "step_00000010" / "state.safetensors");
  std::ostringstream warn;
  EXPECT_HAS(error_of([&] { load_latest_checkpoint(out.path(), warn); }), ck.string(), "no intact checkpoint",
             "step_00000010", "state.safetensors", "checksum mismatch");
  // Two, both bad: both are named; nothing is moved.
  save_checkpoint(out.path(), meta_at(20), random_state(23));
  fs::remove(ck / "step_00000020" / "manifest.json");
  EXPECT_HAS(error_of([&] { load_latest_checkpoint(out.path(), warn); }), ck.string(), "no intact checkpoint",
             "step_00000010", "checksum mismatch", "step_00000020", "no manifest.json");
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"latest", "step_00000010", "step_00000020"}));
  // No checkpoint at all is not an error here (the caller decides).
  TempDir empty;
  EXPECT_FALSE(load_latest_checkpoint(empty.path(), warn).has_value());
}

TEST(CheckpointChecksums, TruncatedOrMissingFileIsDetected) {
  TempDir out;
  const auto older = random_state(24);
  save_checkpoint(out.path(), meta_at(10), older);
  save_checkpoint(out.path(), meta_at(20), random_state(25));
  const fs::path ck = out.path() / "checkpoints", dir = ck / "step_00000020";
  const fs::path st = dir / "state.safetensors";
  const std::string full = read_file(st);
  write_file(st, full.substr(0, full.size() - 4));
  EXPECT_HAS(error_of([&] { load_checkpoint(dir); }), st.string(), "size mismatch",
             std::to_string(full.size() - 4) + " bytes", "manifest says " + std::to_string(full.size()), "truncated");
  fs::remove(st);
  EXPECT_HAS(error_of([&] { load_checkpoint(dir); }), dir.string(), "no state.safetensors", "incomplete");
  // On resume, the incomplete newest directory is skipped with a warning naming both.
  std::ostringstream warn;
  const auto c = load_latest_checkpoint(out.path(), warn);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->dir, ck / "step_00000010");
  expect_same(c->tensors, older);
  EXPECT_HAS(warn.str(), dir.string(), "no state.safetensors", (ck / "step_00000010").string());
}

TEST(CheckpointChecksums, ManifestWithoutChecksumsLoadsWithAWarning) {
  TempDir out;
  const auto state = random_state(26);
  const fs::path dir = save_checkpoint(out.path(), meta_at(10), state);
  strip_checksums(dir);
  std::ostringstream warn;
  const Checkpoint c = load_checkpoint(dir, warn);
  expect_same(c.tensors, state);
  EXPECT_HAS(warn.str(), "warning", dir.string(), "no checksums", "cannot be verified");
  const std::string w = warn.str();
  EXPECT_EQ(std::count(w.begin(), w.end(), '\n'), 1);  // one line
  std::ostringstream warn2;
  const auto latest = load_latest_checkpoint(out.path(), warn2);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->dir, dir);
  EXPECT_HAS(warn2.str(), "cannot be verified");
  // Half a checksum set is not the old format: it is a damaged manifest.
  auto m = nlohmann::ordered_json::parse(read_file(dir / "manifest.json"));
  m["manifest_crc32"] = 1;
  write_file(dir / "manifest.json", m.dump(1) + "\n");
  EXPECT_HAS(error_of([&] { load_checkpoint(dir, warn); }), "manifest.json", "checksum mismatch");
}

}  // namespace
}  // namespace rt::test
