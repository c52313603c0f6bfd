// libFuzzer target for the safetensors header parser: arbitrary bytes are parsed as a whole
// safetensors file image, and again with a correct length prefix put in front. The parser must either return a header whose tensors provably tile
// the data section inside the buffer, or throw rt::Error. A crash, a sanitizer report, any other
// exception, or a returned header that breaks those invariants is a bug.
//
// Build (clang only):
//   cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DRT_BUILD_FUZZERS=ON -DRT_ENABLE_CUDA=OFF -DRT_BUILD_TESTS=OFF
//   cmake --build build-fuzz --target fuzz_safetensors
// Run (~3 minutes; the corpus dir keeps interesting inputs between runs):
//   mkdir -p build-fuzz/corpus/safetensors
//   build-fuzz/bin/fuzz_safetensors build-fuzz/corpus/safetensors -max_total_time=180 \
//     -max_len=4096
// Seeds help: any small real .safetensors file copied into the corpus dir.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "loader/safetensors.h"
#include "rt/sdk/error.h"

namespace {

[[noreturn]] void bug(const char* what) {
  std::fprintf(stderr, "fuzz_safetensors: invariant broken: %s\n", what);
  std::abort();
}

// What a successful parse promises to every consumer of the data pointers.
void check_invariants(const rt::StHeader& h, size_t size) {
  if (h.header_size > size - 8 || h.data_start() + h.data_size != size) bug("sizes");
  uint64_t covered = 0;
  for (const rt::StTensorInfo& t : h.tensors) {
    if (t.begin != covered || t.end < t.begin || t.end > h.data_size) bug("tiling");
    covered = t.end;
    const uint64_t bits = static_cast<uint64_t>(t.numel()) * rt::st_dtype_bits(t.dtype);
    if (t.numel() < 0 || bits / 8 != t.nbytes()) bug("byte size");
  }
  if (covered != h.data_size) bug("coverage");
}

void parse(const uint8_t* data, size_t size) {
  try {
    const rt::StHeader h = rt::parse_safetensors_header(data, size, "fuzz.safetensors");
    check_invariants(h, size);
  } catch (const rt::Error&) {
    // Rejected with a message: the expected outcome for almost every input.
  }
  // Anything else (std::bad_alloc, nlohmann exceptions, ...) escapes and libFuzzer reports it.
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The input as a raw file image: exercises the length prefix checks.
  parse(data, size);
  // Also as "[data size byte][header JSON][data]" with a correct length prefix built here, so
  // mutations of the JSON are not all rejected by a stale prefix.
  if (size >= 1) {
    const size_t data_size = std::min<size_t>(data[0], size - 1);
    const size_t header = size - 1 - data_size;
    std::vector<uint8_t> image(8 + size - 1);
    for (int i = 0; i < 8; ++i) image[i] = static_cast<uint8_t>(static_cast<uint64_t>(header) >> (8 * i));
    std::memcpy(image.data() + 8, data + 1, size - 1);
    parse(image.data(), image.size());
  }
  return 0;
}
