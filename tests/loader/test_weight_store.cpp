// WeightStore: single file, sharded index, in-memory tensors, and the bad cases of each.
#include "loader/weight_store.h"
#include "loader_test_util.h"

namespace rt::test {
namespace {

TensorSet three_tensors() {
  TensorSet s;
  s.add("a", {2, 3}, StDType::F32);
  s.add("b", {4}, StDType::BF16);
  s.add("c", {5}, StDType::F16);
  return s;
}

void write_index(const fs::path& dir, const std::string& weight_map) {
  write_file(dir / "model.safetensors.index.json",
             "{\"metadata\": {\"total_size\": 0}, \"weight_map\": " + weight_map + "}");
}

TEST(WeightStore, SingleFile) {
  TempDir dir;
  const TensorSet s = three_tensors();
  s.save(dir / "model.safetensors");
  auto ws = WeightStore::open(dir.path());
  EXPECT_EQ(ws.size(), 3u);
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"a", "b", "c"}));
  const WeightInfo& a = ws.get("a");
  EXPECT_EQ(a.dtype, StDType::F32);
  EXPECT_EQ(a.sdk_dtype(), DType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.nbytes, 24u);
  EXPECT_EQ(a.file, (dir / "model.safetensors").string());
  EXPECT_EQ(std::memcmp(a.data, s.data[0].data(), 24), 0);
  // Pointers survive moving the store.
  const uint8_t* p = a.data;
  WeightStore moved = std::move(ws);
  EXPECT_EQ(moved.get("a").data, p);
}

TEST(WeightStore, Sharded) {
  TempDir dir;
  const TensorSet s = three_tensors();
  s.save(dir / "model-00001-of-00002.safetensors", [](const std::string& n) { return n != "c"; });
  s.save(dir / "model-00002-of-00002.safetensors", [](const std::string& n) { return n == "c"; });
  write_index(dir.path(), R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                              "c": "model-00002-of-00002.safetensors"})");
  auto ws = WeightStore::open(dir.path());
  EXPECT_EQ(ws.size(), 3u);
  EXPECT_EQ(ws.files().size(), 2u);
  EXPECT_EQ(ws.get("c").file, (dir / "model-00002-of-00002.safetensors").string());
  EXPECT_EQ(std::memcmp(ws.get("c").data, s.data[2].data(), 10), 0);
}

TEST(WeightStore, ShardedIndexPointsToMissingShard) {
  TempDir dir;
  three_tensors().save(dir / "s1.safetensors");
  write_index(dir.path(), R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})");
  auto msg = error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_HAS(msg, (dir / "model.safetensors.index.json").string());
  EXPECT_HAS(msg, (dir / "s2.safetensors").string());
  EXPECT_HAS(msg, "does not exist");
  EXPECT_HAS(msg, "\"c\"");
}

TEST(WeightStore, ShardedTensorInWrongShard) {
  TempDir dir;
  const TensorSet s = three_tensors();
  s.save(dir / "s1.safetensors", [](const std::string& n) { return n != "c"; });
  s.save(dir / "s2.safetensors", [](const std::string& n) { return n == "c"; });
  write_index(dir.path(), R"({"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"})");
  auto msg = error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_HAS(msg, "maps tensor \"b\"");
  EXPECT_HAS(msg, "s2.safetensors");
  EXPECT_HAS(msg, "but it is in");
}

TEST(WeightStore, ShardedMappedTensorAbsent) {
  TempDir dir;
  three_tensors().save(dir / "s1.safetensors");
  write_index(dir.path(), R"({"a": "s1.safetensors", "zzz": "s1.safetensors"})");
  auto msg = error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_HAS(msg, "maps tensor \"zzz\"");
  EXPECT_HAS(msg, "has no such tensor");
}

TEST(WeightStore, ShardedTensorInTwoShards) {
  TempDir dir;
  const TensorSet s = three_tensors();
  s.save(dir / "s1.safetensors");
  s.save(dir / "s2.safetensors", [](const std::string& n) { return n == "a"; });
  write_index(dir.path(), R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})");
  auto msg = error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_HAS(msg, "tensor \"a\" is in two files");
}

TEST(WeightStore, ShardedBadIndex) {
  TempDir dir;
  write_file(dir / "model.safetensors.index.json", std::string("{\"weight_map\": {"));
  auto msg = error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_HAS(msg, (dir / "model.safetensors.index.json").string());
  EXPECT_HAS(msg, "invalid JSON");
  write_file(dir / "model.safetensors.index.json", std::string("{\"metadata\": {}}"));
  EXPECT_HAS(error_of([&] { WeightStore::open(dir.path()); }), "missing \"weight_map\"");
  write_index(dir.path(), R"({"a": 3})");
  EXPECT_HAS(error_of([&] { WeightStore::open(dir.path()); }), "must be a file name, found integer");
  write_index(dir.path(), R"({"a": "../../etc/passwd"})");
  EXPECT_HAS(error_of([&] { WeightStore::open(dir.path()); }), "not a plain file name");
  write_index(dir.path(), R"({"a": "s.safetensors", "a": "t.safetensors"})");
  EXPECT_HAS(error_of([&] { WeightStore::open(dir.path()); }), "duplicate key \"a\"");
}

TEST(WeightStore, NoWeights) {
  TempDir dir;
  auto msg = error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_HAS(msg, dir.path().string());
  EXPECT_HAS(msg, "model.safetensors");
  EXPECT_HAS(msg, "model.safetensors.index.json");
  write_file(dir / "pytorch_model.bin", std::string("x"));
  EXPECT_HAS(error_of([&] { WeightStore::open(dir.path()); }), "convert them to safetensors");
  EXPECT_HAS(error_of([&] { WeightStore::open(dir / "nope"); }), "does not exist");
}

TEST(WeightStore, MissingTensorNamesFiles) {
  TempDir dir;
  three_tensors().save(dir / "model.safetensors");
  auto ws = WeightStore::open(dir.path());
  EXPECT_EQ(ws.find("zzz"), nullptr);
  auto msg = error_of([&] { ws.get("zzz"); });
  EXPECT_HAS(msg, "tensor \"zzz\" not found");
  EXPECT_HAS(msg, (dir / "model.safetensors").string());
}

TEST(WeightStore, AddOwned) {
  WeightStore ws;
  const auto vals = random_floats(6, 3);
  std::vector<uint8_t> bytes(24);
  std::memcpy(bytes.data(), vals.data(), 24);
  const WeightInfo& w = ws.add_owned("router.weight", DType::F32, {2, 3}, bytes);
  EXPECT_EQ(w.file, "<in-memory>");
  EXPECT_EQ(std::memcmp(ws.get("router.weight").data, vals.data(), 24), 0);
  EXPECT_HAS(error_of([&] { ws.add_owned("router.weight", DType::F32, {2, 3}, bytes); }), "already exists");
  EXPECT_HAS(error_of([&] { ws.add_owned("x", DType::F32, {7}, bytes); }), "needs 28");
  EXPECT_HAS(error_of([&] { ws.get("y"); }), "1 in-memory tensors");
}

// check_finite: one pass over each float tensor; the first NaN / inf is named with its element.
// A tensor of n elements of 2- or 4-byte width, all finite (1.0), except element `at` = `bits`.
TensorSet one_bad(StDType dt, int64_t n, int64_t at, uint32_t bits) {
  TensorSet s;
  s.add("model.norm.weight", {n}, dt);
  std::vector<uint8_t>& d = s.data[0];
  const size_t w = st_dtype_bits(dt) / 8;
  const uint32_t one = dt == StDType::F32 ? 0x3f800000u : dt == StDType::BF16 ? 0x3f80u : 0x3c00u;
  for (int64_t i = 0; i < n; ++i) std::memcpy(d.data() + i * w, i == at ? &bits : &one, w);  // little-endian
  return s;
}

std::string check_error(const TensorSet& s) {
  TempDir dir;
  s.save(dir / "model.safetensors");
  const WeightStore ws = WeightStore::open(dir.path());
  const std::string msg = error_of([&] { check_finite(ws.get("model.norm.weight")); });
  EXPECT_HAS(msg, (dir / "model.safetensors").string() + ": tensor 'model.norm.weight' has a non-finite value");
  return msg;
}

TEST(WeightStore, CheckFiniteNamesFirstNonFinite) {
  struct Case {
    StDType dt;
    uint32_t bits;
    const char* kind;
  };
  const Case cases[] = {
      {StDType::F32, 0x7fc00000u, "(nan)"}, {StDType::F32, 0xffc00001u, "(nan)"},
      {StDType::F32, 0x7f800000u, "(inf)"}, {StDType::F32, 0xff800000u, "(-inf)"},
      {StDType::BF16, 0x7fc0u, "(nan)"},    {StDType::BF16, 0x7f80u, "(inf)"},
      {StDType::BF16, 0xff80u, "(-inf)"},   {StDType::F16, 0x7e00u, "(nan)"},
      {StDType::F16, 0x7c00u, "(inf)"},     {StDType::F16, 0xfc00u, "(-inf)"},
  };
  for (const Case& c : cases)
    for (int64_t at : {int64_t{0}, int64_t{5}, int64_t{4095}, int64_t{4096}, int64_t{9999}}) {
      SCOPED_TRACE(std::string(st_dtype_name(c.dt)) + " " + c.kind + " at " + std::to_string(at));
      const std::string msg = check_error(one_bad(c.dt, 10000, at, c.bits));
      EXPECT_HAS(msg, std::string(c.kind) + " at element " + std::to_string(at));
    }
}

TEST(WeightStore, CheckFiniteReportsTheFirst) {
  TensorSet s = one_bad(StDType::F32, 100, 70, 0x7f800000u);
  const uint32_t nan_bits = 0x7fc00000u;
  std::memcpy(s.data[0].data() + 90 * 4, &nan_bits, 4);
  EXPECT_HAS(check_error(s), "(inf) at element 70");
}

TEST(WeightStore, CheckFiniteAcceptsFiniteAndOtherDtypes) {
  TempDir dir;
  TensorSet s;
  s.add("i", {64}, StDType::I32);  // counting bytes: bit patterns that would be NaN as f32
  s.add("u", {64}, StDType::U8);
  s.add("e", {0}, StDType::F32);
  const TensorSet f32 = one_bad(StDType::F32, 5000, -1, 0), bf = one_bad(StDType::BF16, 5000, -1, 0);
  s.names.push_back("f"), s.shapes.push_back({5000}), s.data.push_back(f32.data[0]), s.dtypes.push_back(StDType::F32);
  s.names.push_back("g"), s.shapes.push_back({5000}), s.data.push_back(bf.data[0]), s.dtypes.push_back(StDType::BF16);
  const uint32_t max_f32 = 0x7f7fffffu, sub = 0x00000001u;  // largest finite, smallest subnormal
  const uint16_t max_bf16 = 0x7f7f;
  std::memcpy(s.data.back().data() + 3 * 2, &max_bf16, 2);
  std::memcpy(s.data[s.data.size() - 2].data() + 7 * 4, &max_f32, 4);
  std::memcpy(s.data[s.data.size() - 2].data() + 8 * 4, &sub, 4);
  s.save(dir / "model.safetensors");
  const WeightStore ws = WeightStore::open(dir.path());
  for (const auto& [name, w] : ws.all()) EXPECT_NO_THROW(check_finite(w)) << name;
}

}  // namespace
}  // namespace rt::test
