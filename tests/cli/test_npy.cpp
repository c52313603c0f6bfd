// Unit tests of runtime/common/npy: round trips, the dtypes and header versions NumPy writes, and
// clear errors (naming the file) for every malformed input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "cli_test_util.h"
#include "common/npy.h"
#include "rt/sdk/error.h"

namespace {

using rt::test::TempDir;
namespace fs = std::filesystem;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// A .npy file as NumPy writes it, built by hand.
std::string npy_bytes(int major, const std::string& dict, const std::string& payload, bool pad = true) {
  std::string h = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  if (pad) h.append((64 - (prefix + h.size() + 1) % 64) % 64, ' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const uint32_t n = static_cast<uint32_t>(h.size());
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + h + payload;
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// read_npy fails with rt::Error whose message names the file and contains `what`.
void expect_read_error(const fs::path& p, const std::string& what) {
  try {
    rt::read_npy(p);
    ADD_FAILURE() << "read_npy(" << p << ") accepted a bad file; expected an error about '" << what << "'";
  } catch (const rt::Error& e) {
    const std::string msg = rt::test::lower(e.what());
    EXPECT_NE(msg.find(rt::test::lower(p.filename().string())), std::string::npos) << e.what();
    EXPECT_NE(msg.find(rt::test::lower(what)), std::string::npos) << e.what();
  }
}

TEST(Npy, RoundTripShapes) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> shapes = {{37, 257}, {5}, {2, 3, 4}, {}, {0, 7}, {1, 1}};
  uint32_t seed = 1;
  for (const auto& shape : shapes) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    const auto v = random_floats(static_cast<size_t>(n), seed++);
    const fs::path p = dir / "a.npy";
    rt::write_npy_f32(p, v.data(), shape);
    const rt::NpyArray a = rt::read_npy(p);
    EXPECT_EQ(a.shape, shape);
    EXPECT_EQ(a.descr, "<f4");
    EXPECT_EQ(a.numel(), n);
    ASSERT_EQ(a.data.size(), v.size());
    EXPECT_EQ(0, std::memcmp(a.data.data(), v.data(), v.size() * sizeof(float)));  // bit exact
    EXPECT_TRUE(a.ints.empty());
    // Data starts on a 64-byte boundary and the header ends with '\n', as NumPy requires.
    const std::string bytes = rt::test::read_text(p);
    EXPECT_EQ((bytes.size() - v.size() * sizeof(float)) % 64, 0u);
    EXPECT_EQ(bytes[bytes.size() - v.size() * sizeof(float) - 1], '\n');
  }
}

TEST(Npy, HeaderTextIsWhatNumpyWrites) {
  TempDir dir;
  const auto v = random_floats(6, 7);
  rt::write_npy_f32(dir / "x.npy", v.data(), {6});
  const std::string bytes = rt::test::read_text(dir / "x.npy");
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_NE(bytes.find("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }"), std::string::npos);
}

TEST(Npy, AtomicWriteLeavesNoTempFilesAndReplaces) {
  TempDir dir;
  const auto a = random_floats(10, 3), b = random_floats(4, 4);
  rt::write_npy_f32(dir / "out.npy", a.data(), {10});
  rt::write_npy_f32(dir / "out.npy", b.data(), {2, 2});
  const auto r = rt::read_npy(dir / "out.npy");
  EXPECT_EQ(r.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(r.data, b);
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1) << "temporary files left behind";
}

TEST(Npy, WriteIntoMissingDirectoryFailsCleanly) {
  TempDir dir;
  const auto v = random_floats(3, 5);
  const fs::path p = dir / "no_such_dir" / "out.npy";
  try {
    rt::write_npy_f32(p, v.data(), {3});
    ADD_FAILURE() << "write into a missing directory succeeded";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out.npy"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(p));
}

TEST(Npy, ReadsF8I4I8AndVersion2And3) {
  TempDir dir;
  const std::vector<double> d = {1.5, -2.25, 1e-3, 3.0e5, -7.0, 0.125};
  rt::test::write_text(dir / "f8.npy",
                       npy_bytes(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", raw(d)));
  auto a = rt::read_npy(dir / "f8.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(a.data[i], static_cast<float>(d[i]));

  const std::vector<int32_t> i4 = {7, -3, 151935, 0};
  rt::test::write_text(dir / "i4.npy",
                       npy_bytes(2, "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", raw(i4)));
  a = rt::read_npy(dir / "i4.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(a.ints, (std::vector<int64_t>{7, -3, 151935, 0}));
  EXPECT_EQ(a.data[2], 151935.0f);

  const std::vector<int64_t> i8 = {1LL << 40, -5, 42};
  rt::test::write_text(dir / "i8.npy",
                       npy_bytes(3, "{\"descr\": \"<i8\", \"fortran_order\": False, \"shape\": (3,)}", raw(i8)));
  a = rt::read_npy(dir / "i8.npy");
  EXPECT_EQ(a.ints, i8);

  // Keys in another order, no padding, no trailing comma.
  const auto f = random_floats(4, 9);
  rt::test::write_text(dir / "ord.npy", npy_bytes(1, "{'shape':(2,2),'fortran_order':False,'descr':'<f4'}",
                                                  raw(f), /*pad=*/false));
  a = rt::read_npy(dir / "ord.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a.data, f);
}

TEST(Npy, MalformedFilesFailWithClearErrors) {
  TempDir dir;
  const auto f = random_floats(6, 11);
  const std::string good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  auto put = [&](const std::string& name, const std::string& bytes) {
    rt::test::write_text(dir / name, bytes);
    return dir / name;
  };
  expect_read_error(dir / "missing.npy", "cannot open");
  expect_read_error(put("empty.npy", ""), "magic");
  expect_read_error(put("magic.npy", "PK\x03\x04 not an npy file at all"), "magic");
  expect_read_error(put("version.npy", [&] {
                      auto b = npy_bytes(1, good_dict, raw(f));
                      b[6] = 9;
                      return b;
                    }()),
                    "version");
  expect_read_error(put("hlen.npy", npy_bytes(1, good_dict, raw(f)).substr(0, 40)), "header length");
  expect_read_error(put("trunc.npy", [&] {
                      const auto b = npy_bytes(1, good_dict, raw(f));
                      return b.substr(0, b.size() - raw(f).size() + 10);
                    }()), "truncated");
  expect_read_error(put("extra.npy", npy_bytes(1, good_dict, raw(f) + "xx")), "unexpected bytes");
  expect_read_error(put("fortran.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                                                 raw(f))),
                    "fortran");
  expect_read_error(put("bigendian.npy", npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
                                                   raw(f))),
                    ">f4");
  expect_read_error(put("f2.npy", npy_bytes(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }",
                                            raw(f).substr(0, 12))),
                    "unsupported dtype");
  expect_read_error(put("garbage.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,)}",
                                                 raw(f))),
                    "malformed header");
  expect_read_error(put("noshape.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False}", raw(f))),
                    "shape");
  expect_read_error(put("negdim.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3)}",
                                                raw(f))),
                    "malformed header");
  expect_read_error(put("huge.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, "
                                                 "'shape': (4611686018427387904, 4)}",
                                              raw(f))),
                    "too");
}

}  // namespace
