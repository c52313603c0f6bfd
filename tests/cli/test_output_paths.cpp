// Output paths that are not plain files (issue 11, item 3): the crash-safe writer
// (write_file_atomic, used for .npy outputs and the CLI's --json/--csv) renames a temporary over a
// regular file only. A symlink is followed (the link stays a link), a FIFO or device is written in
// place, "-" is standard output, and a write error (ENOSPC on /dev/full) is a clean error.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "cli_test_util.h"
#include "common/durable_file.h"
#include "common/npy.h"
#include "rt/sdk/error.h"

namespace {

using rt::test::fixture_model;
using rt::test::read_text;
using rt::test::RunResult;
using rt::test::run_runtime;
using rt::test::runtime_available;
using rt::test::TempDir;
using rt::test::write_text;
namespace fs = std::filesystem;

std::vector<std::string> dir_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool is_char_device(const char* path) {
  struct stat st;
  return ::lstat(path, &st) == 0 && S_ISCHR(st.st_mode);
}

TEST(OutputPaths, RegularFileReplacedAtomically) {
  TempDir tmp("rt_out_paths");
  const fs::path f = tmp / "out.txt";
  write_text(f, "old contents that are longer than the new ones");
  struct stat before;
  ASSERT_EQ(::stat(f.c_str(), &before), 0);
  rt::write_file_atomic(f, std::string("new"));
  EXPECT_EQ(read_text(f), "new");
  struct stat after;
  ASSERT_EQ(::lstat(f.c_str(), &after), 0);
  EXPECT_TRUE(S_ISREG(after.st_mode));
  EXPECT_NE(before.st_ino, after.st_ino) << "replaced by a rename, not rewritten in place";
  EXPECT_EQ(dir_entries(tmp.path()), std::vector<std::string>{"out.txt"}) << "temporary left behind";
}

TEST(OutputPaths, SymlinkIsFollowedAndStaysALink) {
  TempDir tmp("rt_out_paths");
  fs::create_directories(tmp / "real");
  fs::create_directories(tmp / "links");
  write_text(tmp / "real" / "target.txt", "old");
  // Relative target, resolved against the link's directory.
  fs::create_symlink("../real/target.txt", tmp / "links" / "out.txt");
  // A chain: link2 -> out.txt -> ../real/target.txt.
  fs::create_symlink("out.txt", tmp / "links" / "link2");

  rt::write_file_atomic(tmp / "links" / "link2", std::string("through two links"));
  EXPECT_TRUE(fs::is_symlink(tmp / "links" / "link2"));
  EXPECT_TRUE(fs::is_symlink(tmp / "links" / "out.txt"));
  EXPECT_EQ(fs::read_symlink(tmp / "links" / "out.txt"), fs::path("../real/target.txt"));
  EXPECT_EQ(read_text(tmp / "real" / "target.txt"), "through two links");

  rt::write_file_atomic(tmp / "links" / "out.txt", std::string("direct"));
  EXPECT_TRUE(fs::is_symlink(tmp / "links" / "out.txt"));
  EXPECT_EQ(read_text(tmp / "real" / "target.txt"), "direct");
  EXPECT_EQ(dir_entries(tmp / "real"), std::vector<std::string>{"target.txt"}) << "temporary left behind";
  EXPECT_EQ(dir_entries(tmp / "links"), (std::vector<std::string>{"link2", "out.txt"}));

  // A dangling link: its target is created, the link is kept.
  fs::create_symlink("../real/new.txt", tmp / "links" / "dangling");
  rt::write_file_atomic(tmp / "links" / "dangling", std::string("created"));
  EXPECT_TRUE(fs::is_symlink(tmp / "links" / "dangling"));
  EXPECT_EQ(read_text(tmp / "real" / "new.txt"), "created");
}

TEST(OutputPaths, FifoReceivesTheBytesAndStaysAFifo) {
  TempDir tmp("rt_out_paths");
  const fs::path fifo = tmp / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  // Open the read end first (non-blocking open never waits), so that neither side can hang the
  // test whatever the writer does; then read from a thread while the writer writes.
  const int rfd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(rfd, 0) << std::strerror(errno);
  std::string payload(1 << 20, '\0');  // far more than the pipe buffer: the writer must stream
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 131 + 7);
  std::string got;
  std::thread reader([&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    char buf[65536];
    while (got.size() < payload.size() && std::chrono::steady_clock::now() < deadline) {
      pollfd p{rfd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const ssize_t n = ::read(rfd, buf, sizeof buf);
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // no writer yet / EAGAIN
      }
    }
  });
  std::string error;
  try {
    rt::write_file_atomic(fifo, payload);
  } catch (const std::exception& e) {
    error = e.what();
  }
  reader.join();
  ::close(rfd);
  EXPECT_EQ(error, "");
  struct stat st;
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << fifo << " is no longer a FIFO";
  EXPECT_EQ(got.size(), payload.size());
  EXPECT_TRUE(got == payload) << "the reader got different bytes";
  EXPECT_EQ(dir_entries(tmp.path()), std::vector<std::string>{"pipe"}) << "temporary left behind";
}

TEST(OutputPaths, DevFullIsACleanErrorAndStaysADevice) {
  if (!is_char_device("/dev/full")) GTEST_SKIP() << "/dev/full is not a character device here";
  std::string error;
  try {
    rt::write_file_atomic("/dev/full", std::string("no room"));
  } catch (const rt::Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("/dev/full"), std::string::npos) << error;
  EXPECT_NE(error.find(std::strerror(ENOSPC)), std::string::npos) << error;
  EXPECT_TRUE(is_char_device("/dev/full")) << "/dev/full was replaced";
}

TEST(OutputPaths, DashIsStandardOutput) {
  TempDir tmp("rt_out_paths");
  // Point fd 1 at a file and run from an empty directory: nothing named "-" may appear.
  const fs::path captured = tmp / "stdout.bin";
  fs::create_directories(tmp / "cwd");
  std::fflush(stdout);
  const int saved = ::dup(STDOUT_FILENO);
  ASSERT_GE(saved, 0);
  const int cfd = ::open(captured.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(cfd, 0);
  ::dup2(cfd, STDOUT_FILENO);
  ::close(cfd);
  const fs::path old_cwd = fs::current_path();
  fs::current_path(tmp / "cwd");
  std::string error;
  try {
    rt::write_file_atomic("-", std::string("to stdout\n"));
  } catch (const std::exception& e) {
    error = e.what();
  }
  const bool fd1_open = ::fcntl(STDOUT_FILENO, F_GETFD) != -1;
  fs::current_path(old_cwd);
  std::fflush(stdout);
  ::dup2(saved, STDOUT_FILENO);
  ::close(saved);
  EXPECT_EQ(error, "");
  EXPECT_TRUE(fd1_open) << "fd 1 was closed";
  EXPECT_EQ(read_text(captured), "to stdout\n");
  EXPECT_TRUE(dir_entries(tmp / "cwd").empty()) << "a file named '-' was created";
}

// --- through the runtime binary ---

std::vector<std::string> logits_args(const std::string& out) {
  return {"logits", "--model", fixture_model("gqa_untied_f32").string(), "--ids", "1,2,3", "--out", out};
}

TEST(OutputPathsCli, LogitsToDevFullFailsCleanly) {
  ASSERT_TRUE(runtime_available());
  if (!is_char_device("/dev/full")) GTEST_SKIP() << "/dev/full is not a character device here";
  const RunResult r = run_runtime(logits_args("/dev/full"));
  EXPECT_TRUE(rt::test::is_clean_error(r, {"/dev/full"}, {{"no space", "disk full"}})) << r.describe();
  EXPECT_EQ(r.err.find("wrote"), std::string::npos) << r.describe();
  EXPECT_EQ(r.out.find("wrote"), std::string::npos) << r.describe();
  EXPECT_TRUE(is_char_device("/dev/full")) << "/dev/full was replaced by the runtime";
}

TEST(OutputPathsCli, LogitsOutDashWritesNpyToStdout) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp("rt_out_paths");
  const RunResult file = run_runtime(logits_args((tmp / "ref.npy").string()));
  ASSERT_TRUE(file.ok()) << file.describe();
  const RunResult r = run_runtime(logits_args("-"));
  ASSERT_TRUE(r.ok()) << r.describe();
  ASSERT_GE(r.out.size(), 6u) << r.describe();
  EXPECT_EQ(r.out.substr(0, 6), std::string("\x93NUMPY")) << r.describe();
  EXPECT_TRUE(r.out == read_text(tmp / "ref.npy")) << "stdout differs from the same logits written to a file";
  // And it parses as the [3, vocab] array.
  write_text(tmp / "from_stdout.npy", r.out);
  const rt::NpyArray a = rt::read_npy(tmp / "from_stdout.npy");
  ASSERT_EQ(a.shape.size(), 2u);
  EXPECT_EQ(a.shape[0], 3);
}

}  // namespace
