// safetensors reader: a valid file round-trips; every malformed input gives an rt::Error naming
// the file and the problem.
#include <cmath>
#include <limits>

#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"
#include "loader_test_util.h"

namespace rt::test {
namespace {

const std::string kWhat = "bad.safetensors";

std::string parse_error(const std::string& header, size_t data_bytes,
                        std::optional<uint64_t> length = std::nullopt) {
  auto bytes = raw_safetensors(header, data_bytes, length);
  return error_of([&] { parse_safetensors_header(bytes.data(), bytes.size(), kWhat); });
}

StHeader parse_ok(const std::string& header, size_t data_bytes) {
  auto bytes = raw_safetensors(header, data_bytes);
  return parse_safetensors_header(bytes.data(), bytes.size(), kWhat);
}

// IEEE half / bfloat16 encoders and decoders, independent of the library (round to nearest even).
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float from_f16(uint16_t h) {
  const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
  float v = e == 0 ? std::ldexp(static_cast<float>(m), -24) : std::ldexp(static_cast<float>(m | 0x400), e - 25);
  return (h & 0x8000) ? -v : v;
}
uint16_t to_f16(float f) {  // normal range only, which is all the test uses
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000;
  int e = static_cast<int>((u >> 23) & 0xFF) - 127 + 15;
  uint32_t m = u & 0x7FFFFF;
  uint32_t r = (static_cast<uint32_t>(e) << 10) | (m >> 13);
  const uint32_t rest = m & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) ++r;
  return static_cast<uint16_t>(sign | r);
}

TEST(Safetensors, RoundTripF32F16BF16) {
  TempDir dir;
  const auto vals = random_floats(24, 1);
  std::vector<uint16_t> bf(vals.size()), hf(vals.size());
  for (size_t i = 0; i < vals.size(); ++i) {
    bf[i] = to_bf16(vals[i]);
    hf[i] = to_f16(vals[i]);
  }
  const fs::path p = dir / "w.safetensors";
  save_safetensors(p,
                   {{"f32", StDType::F32, {2, 3, 4}, vals.data(), vals.size() * 4},
                    {"bf16", StDType::BF16, {4, 6}, bf.data(), bf.size() * 2},
                    {"f16", StDType::F16, {24}, hf.data(), hf.size() * 2},
                    {"empty", StDType::F32, {0, 5}, nullptr, 0}},
                   {{"format", "pt"}});
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.header().header_size % 8, 0u);  // data section 8-byte aligned, like the reference

  const auto& t32 = f.get("f32");
  EXPECT_EQ(t32.dtype, StDType::F32);
  EXPECT_EQ(t32.shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t32.numel(), 24);
  std::vector<float> back(24);
  std::memcpy(back.data(), f.data(t32), 96);
  EXPECT_EQ(back, vals);

  const auto& tb = f.get("bf16");
  const auto& th = f.get("f16");
  for (size_t i = 0; i < vals.size(); ++i) {
    uint16_t b, h;
    std::memcpy(&b, f.data(tb) + 2 * i, 2);
    std::memcpy(&h, f.data(th) + 2 * i, 2);
    EXPECT_EQ(b, bf[i]);
    EXPECT_EQ(h, hf[i]);
    EXPECT_NEAR(from_bf16(b), vals[i], 1e-2 * std::abs(vals[i]) + 1e-6);
    EXPECT_NEAR(from_f16(h), vals[i], 1e-3 * std::abs(vals[i]) + 1e-6);
  }
  EXPECT_EQ(f.get("empty").nbytes(), 0u);
  EXPECT_EQ(f.find("nope"), nullptr);
  auto msg = error_of([&] { f.get("nope"); });
  EXPECT_HAS(msg, p.string());
  EXPECT_HAS(msg, "nope");
}

TEST(Safetensors, AllSpecDtypeNamesParse) {
  for (const char* n : {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
                        "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32",
                        "U32", "F32", "C64", "F64", "I64", "U64"}) {
    auto t = st_dtype_from_name(n);
    ASSERT_TRUE(t.has_value()) << n;
    EXPECT_STREQ(st_dtype_name(*t), n);
  }
  EXPECT_FALSE(st_dtype_from_name("f32").has_value());  // the spec's names are upper case
  EXPECT_FALSE(st_dtype_from_name("F128").has_value());
}

TEST(Safetensors, EmptyHeaderAndPaddingAccepted) {
  auto h = parse_ok("{}      ", 0);
  EXPECT_TRUE(h.tensors.empty());
  h = parse_ok(R"({"__metadata__":{"a":"b"},"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}  )", 1);
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].numel(), 1);  // scalar
  EXPECT_EQ(h.metadata.at("a"), "b");
}

TEST(Safetensors, SubByteDtypes) {
  auto h = parse_ok(R"({"x":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", 3);
  EXPECT_EQ(h.tensors[0].nbytes(), 3u);
  auto msg = parse_error(R"({"x":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "whole number of bytes");
}

TEST(Safetensors, FileShorterThan8Bytes) {
  TempDir dir;
  write_file(dir / "short.safetensors", std::string("\x05\0\0", 3));
  auto msg = error_of([&] { SafetensorsFile::open(dir / "short.safetensors"); });
  EXPECT_HAS(msg, (dir / "short.safetensors").string());
  EXPECT_HAS(msg, "too short");
  write_file(dir / "empty.safetensors", std::string());
  msg = error_of([&] { SafetensorsFile::open(dir / "empty.safetensors"); });
  EXPECT_HAS(msg, "empty.safetensors");
  EXPECT_HAS(msg, "too short");
}

TEST(Safetensors, DataShorterThanOffsets) {
  TempDir dir;
  const auto vals = random_floats(16, 2);
  const fs::path p = dir / "trunc.safetensors";
  auto bytes = serialize_safetensors({{"w", StDType::F32, {16}, vals.data(), 64}});
  bytes.resize(bytes.size() - 10);  // lose the tail of the data
  write_file(p, bytes);
  auto msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_HAS(msg, p.string());
  EXPECT_HAS(msg, "\"w\"");
  EXPECT_HAS(msg, "past the end of the data section");
  EXPECT_HAS(msg, "truncated");
}

TEST(Safetensors, MissingFile) {
  TempDir dir;
  auto msg = error_of([&] { SafetensorsFile::open(dir / "nope.safetensors"); });
  EXPECT_HAS(msg, (dir / "nope.safetensors").string());
  EXPECT_HAS(msg, "does not exist");
}

TEST(Safetensors, HeaderLengthPastEndOfFile) {
  auto msg = parse_error("{}", 0, 1000);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "header length 1000");
  EXPECT_HAS(msg, "past the end of the file");
}

TEST(Safetensors, HeaderLengthAbsurd) {
  auto msg = parse_error("{}", 0, uint64_t{1} << 60);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "exceeds");
  msg = parse_error("{}", 0, std::numeric_limits<uint64_t>::max());
  EXPECT_HAS(msg, "exceeds");
}

TEST(Safetensors, InvalidJson) {
  auto msg = parse_error(R"({"a": {"dtype": "F32", )", 0);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "invalid JSON");
  EXPECT_HAS(msg, "byte");
  msg = parse_error("{} trailing", 0);
  EXPECT_HAS(msg, "invalid JSON");
  msg = parse_error("{}\t\n\x01", 0);
  EXPECT_HAS(msg, "invalid JSON");
  msg = parse_error("{\"\xff\xfe\": 1}", 0);  // not UTF-8
  EXPECT_HAS(msg, "invalid JSON");
  msg = parse_error(std::string("{}\0garbage", 10), 0);  // NUL would end nlohmann's input early
  EXPECT_HAS(msg, "NUL");
}

TEST(Safetensors, HeaderNotAnObject) {
  auto msg = parse_error("[1, 2]", 0);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "not a JSON object");
  msg = parse_error("  {}", 0);  // the spec requires '{' first
  EXPECT_HAS(msg, "not a JSON object");
  msg = parse_error("", 0);
  EXPECT_HAS(msg, "empty");
  msg = parse_error(R"({"a": 5})", 0);
  EXPECT_HAS(msg, "tensor \"a\"");
  EXPECT_HAS(msg, "must be an object");
}

TEST(Safetensors, MissingFields) {
  auto msg = parse_error(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "tensor \"w\"");
  EXPECT_HAS(msg, "missing \"dtype\"");
  msg = parse_error(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8);
  EXPECT_HAS(msg, "missing \"shape\"");
  msg = parse_error(R"({"w":{"dtype":"F32","shape":[2]}})", 8);
  EXPECT_HAS(msg, "missing \"data_offsets\"");
}

TEST(Safetensors, WrongFieldTypes) {
  EXPECT_HAS(parse_error(R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", 8),
             "\"dtype\" must be a string");
  EXPECT_HAS(parse_error(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8),
             "\"shape\" must be an array");
  EXPECT_HAS(parse_error(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
             "non-negative");
  EXPECT_HAS(parse_error(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
             "non-negative integers, found number");
  EXPECT_HAS(parse_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8),
             "[begin, end]");
  EXPECT_HAS(parse_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", 8),
             "\"data_offsets\" must hold non-negative integers");
  EXPECT_HAS(parse_error(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8),
             "too large");
}

TEST(Safetensors, OffsetsOverlap) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                             "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "overlap");
  EXPECT_HAS(msg, "\"a\"");
  EXPECT_HAS(msg, "\"b\"");
  // Same range twice: two tensors aliasing one buffer.
  msg = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                        "b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_HAS(msg, "overlap");
}

TEST(Safetensors, OffsetsGap) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                             "b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "gap");
  EXPECT_HAS(msg, "[8, 12)");
  msg = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  EXPECT_HAS(msg, "gap");  // must start at 0
}

TEST(Safetensors, TrailingBytes) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "cover only 8");
}

TEST(Safetensors, OffsetsOutOfBounds) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "past the end of the data section (8 bytes)");
  msg = parse_error(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})", 0);
  EXPECT_HAS(msg, "too large");
}

TEST(Safetensors, EndBeforeBegin) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "end before begin");
}

TEST(Safetensors, SizeNotMatchingShape) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "span 8 bytes");
  EXPECT_HAS(msg, "needs 12");
  msg = parse_error(R"({"a":{"dtype":"F32","shape":[4611686018427387904, 4611686018427387904],"data_offsets":[0,8]}})", 8);
  EXPECT_HAS(msg, "overflow");
  // A zero dimension empties the tensor whatever the other dimensions are.
  auto h = parse_ok(R"({"a":{"dtype":"F32","shape":[0, 9223372036854775807],"data_offsets":[0,0]}})", 0);
  EXPECT_EQ(h.tensors[0].numel(), 0);
}

TEST(Safetensors, UnknownDtype) {
  auto msg = parse_error(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "unknown dtype \"F128\"");
  EXPECT_HAS(msg, "BF16");  // lists what the spec defines
}

TEST(Safetensors, DuplicateTensorNames) {
  auto msg = parse_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                             "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "duplicate key \"a\"");
}

TEST(Safetensors, BadMetadata) {
  auto msg = parse_error(R"({"__metadata__":{"format":1}})", 0);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "__metadata__");
  EXPECT_HAS(msg, "must be a string");
  msg = parse_error(R"({"__metadata__":[1]})", 0);
  EXPECT_HAS(msg, "must be an object");
}

TEST(Safetensors, DeepNestingIsAnErrorNotACrash) {
  std::string h = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  auto msg = parse_error(h, 0);
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "nested deeper");
}

TEST(SafetensorsWriter, RejectsInconsistentTensors) {
  float x[2] = {1, 2};
  EXPECT_HAS(error_of([&] { serialize_safetensors({{"a", StDType::F32, {3}, x, 8}}); }), "need 12");
  EXPECT_HAS(error_of([&] {
               serialize_safetensors({{"a", StDType::F32, {1}, x, 4}, {"a", StDType::F32, {1}, x, 4}});
             }),
             "duplicate");
}

}  // namespace
}  // namespace rt::test
