// libFuzzer target for the tokenizer: arbitrary bytes go through encode() and
// decode(encode()) of the Qwen2.5 tokenizer (loaded once). Any crash, sanitizer report, or an
// exception escaping encode/decode is a bug: encode must accept every byte string.
//
// Build (clang only):
//   cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang
//         -DRT_BUILD_FUZZERS=ON -DRT_ENABLE_CUDA=OFF -DRT_BUILD_TESTS=OFF
//   cmake --build build-fuzz --target fuzz_tokenizer
// Run (~3 minutes; the corpus dir keeps interesting inputs between runs):
//   mkdir -p build-fuzz/corpus/tokenizer
//   RT_TOKENIZER_PATH=/work/shared/data/qwen2.5-tokenizer build-fuzz/bin/fuzz_tokenizer
//     build-fuzz/corpus/tokenizer -max_total_time=180 -rss_limit_mb=4096 -max_len=4096
// RT_TOKENIZER_PATH may name any tokenizer.json / tokenizer.model / directory; it defaults to
// the shared Qwen2.5 tokenizer.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "rt/sdk/error.h"
#include "tokenizer/tokenizer.h"

#ifndef RT_FUZZ_DEFAULT_TOKENIZER
#define RT_FUZZ_DEFAULT_TOKENIZER "/work/shared/data/qwen2.5-tokenizer"
#endif

namespace {

const rt::Tokenizer& tokenizer() {
  static const auto tok = [] {
    const char* env = std::getenv("RT_TOKENIZER_PATH");
    const char* path = env && *env ? env : RT_FUZZ_DEFAULT_TOKENIZER;
    try {
      return rt::load_tokenizer(path);
    } catch (const rt::Error& e) {
      std::fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, e.what());
      std::abort();
    }
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer();  // load before the first input so that load time is not charged to it
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto& tok = tokenizer();
  const auto ids = tok.encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) std::abort();  // encode produced an impossible id
  }
  (void)tok.decode(ids);
  return 0;
}
