// The training data's identity for --resume (issue 11, item 6): size plus crc32 of the first and
// last MiB, independent of the path; its manifest fields and the message naming what differs.
#include <zlib.h>

#include "train/data_fingerprint.h"
#include "test_util.h"

namespace rt::test {
namespace {

std::string pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

uint32_t crc(const std::string& s) {
  return static_cast<uint32_t>(::crc32_z(0, reinterpret_cast<const Bytef*>(s.data()), s.size()));
}

TEST(DataFingerprint, SmallFileIsSizeAndCrcOfItAll) {
  TempDir tmp;
  const std::string text = pattern(1000, 1);
  write_file(tmp / "a.bin", text);
  const DataFingerprint f = fingerprint_data_file(tmp / "a.bin");
  EXPECT_EQ(f.size, 1000u);
  EXPECT_EQ(f.head_crc32, crc(text));
  EXPECT_EQ(f.tail_crc32, crc(text));
  // An empty file has a fingerprint too (the data loader refuses it, not this).
  write_file(tmp / "empty.bin", "");
  EXPECT_EQ(fingerprint_data_file(tmp / "empty.bin"), (DataFingerprint{0, 0, 0}));
}

TEST(DataFingerprint, ContentNotPath) {
  TempDir tmp;
  const std::string big = pattern(3 * 1024 * 1024 + 123, 2);  // head and tail windows do not overlap
  write_file(tmp / "a.bin", big);
  const DataFingerprint a = fingerprint_data_file(tmp / "a.bin");
  EXPECT_EQ(a.size, big.size());
  EXPECT_EQ(a.head_crc32, crc(big.substr(0, 1 << 20)));
  EXPECT_EQ(a.tail_crc32, crc(big.substr(big.size() - (1 << 20))));
  // Moved or renamed: the same identity.
  fs::create_directories(tmp / "moved");
  fs::rename(tmp / "a.bin", tmp / "moved" / "b.bin");
  EXPECT_EQ(fingerprint_data_file(tmp / "moved" / "b.bin"), a);

  // One byte changed in the head, in the tail, or the size: different, and the message says how.
  std::string head = big;
  head[10] ^= 1;
  write_file(tmp / "head.bin", head);
  const DataFingerprint h = fingerprint_data_file(tmp / "head.bin");
  EXPECT_NE(h, a);
  EXPECT_EQ(describe_fingerprint_difference(h, a).find("size"), std::string::npos);
  EXPECT_HAS(describe_fingerprint_difference(h, a), "crc32 of the first 1 MiB", "the checkpoint's data had");
  std::string tail = big;
  tail[big.size() - 5] ^= 1;
  write_file(tmp / "tail.bin", tail);
  EXPECT_HAS(describe_fingerprint_difference(fingerprint_data_file(tmp / "tail.bin"), a), "crc32 of the last 1 MiB");
  write_file(tmp / "short.bin", big.substr(0, big.size() - 4));
  EXPECT_HAS(describe_fingerprint_difference(fingerprint_data_file(tmp / "short.bin"), a),
             "size 3145847 bytes, the checkpoint's data had 3145851", "crc32 of the last 1 MiB");
  EXPECT_EQ(describe_fingerprint_difference(a, a), "");

  EXPECT_HAS(error_of([&] { fingerprint_data_file(tmp / "missing.bin"); }), "missing.bin", "cannot read");
}

TEST(DataFingerprint, ManifestFields) {
  const DataFingerprint f{123456789012ull, 0xdeadbeefu, 7u};
  std::map<std::string, std::string> m{{"data", "/x/y.bin"}};
  f.to_fields(m);
  EXPECT_EQ(m["data_size"], "123456789012");
  EXPECT_EQ(m["data_head_crc32"], std::to_string(0xdeadbeefu));
  EXPECT_EQ(m["data_tail_crc32"], "7");
  EXPECT_EQ(DataFingerprint::from_fields(m, "ck/manifest.json"), f);
  // A checkpoint written before fingerprints existed has none of the fields.
  EXPECT_FALSE(DataFingerprint::from_fields({{"data", "/x/y.bin"}}, "ck").has_value());
  auto bad = m;
  bad["data_head_crc32"] = "-1";
  EXPECT_HAS(error_of([&] { DataFingerprint::from_fields(bad, "ck/manifest.json"); }), "ck/manifest.json",
             "data_head_crc32", "'-1'");
  bad = m;
  bad["data_tail_crc32"] = "4294967296";  // 2^32: not a crc32
  EXPECT_HAS(error_of([&] { DataFingerprint::from_fields(bad, "ck"); }), "data_tail_crc32");
  bad = m;
  bad.erase("data_size");
  EXPECT_HAS(error_of([&] { DataFingerprint::from_fields(bad, "ck"); }), "data_size", "missing");
}

}  // namespace
}  // namespace rt::test
