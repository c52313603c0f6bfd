// RT_CUDA_MEMORY_LIMIT's sizes (backends/cuda/memory_limit.h): the units, and a clear error for
// anything else. Pure parsing: runs without a GPU.
#include <gtest/gtest.h>

#include <string>

#include "cuda/memory_limit.h"
#include "rt/sdk/error.h"

namespace {

using rt::cuda::memory_budget;
using rt::cuda::parse_memory_size;

TEST(MemoryLimit, ParsesBinaryAndDecimalUnits) {
  const char* v = "RT_CUDA_MEMORY_LIMIT";
  EXPECT_EQ(parse_memory_size("24GiB", v), size_t{24} << 30);
  EXPECT_EQ(parse_memory_size("24 gib", v), size_t{24} << 30);
  EXPECT_EQ(parse_memory_size("1536MiB", v), size_t{1536} << 20);
  EXPECT_EQ(parse_memory_size("0.5GiB", v), size_t{1} << 29);
  EXPECT_EQ(parse_memory_size("2KiB", v), size_t{2048});
  EXPECT_EQ(parse_memory_size("1TiB", v), size_t{1} << 40);
  EXPECT_EQ(parse_memory_size("24GB", v), size_t{24000000000});
  EXPECT_EQ(parse_memory_size("3MB", v), size_t{3000000});
  EXPECT_EQ(parse_memory_size("25769803776", v), size_t{25769803776});
  EXPECT_EQ(parse_memory_size("512B", v), size_t{512});
}

TEST(MemoryLimit, RejectsWhatIsNotASize) {
  for (const char* bad : {"", "GiB", "24XB", "-1GiB", "0", "0GiB", "1.5", "1..5GiB", "24 GiB extra", "1e3",
                          "99999999999999999999999TiB"}) {
    try {
      (void)parse_memory_size(bad, "RT_CUDA_MEMORY_LIMIT");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const rt::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("RT_CUDA_MEMORY_LIMIT='" + std::string(bad) + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("24GiB"), std::string::npos) << msg;
    }
  }
}

// Unset in the test environment: the budget is the device's own memory.
TEST(MemoryLimit, BudgetIsTheDevicesMemoryWithoutALimit) {
  ASSERT_EQ(rt::cuda::memory_limit_bytes(), 0u) << "run the tests without RT_CUDA_MEMORY_LIMIT";
  EXPECT_EQ(memory_budget(size_t{80} << 30), size_t{80} << 30);
  EXPECT_EQ(memory_budget(0), 0u);
}

}  // namespace
