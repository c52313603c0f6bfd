#include "common/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "rt/sdk/error.h"

namespace rt {

namespace fs = std::filesystem;

namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const void* data, size_t n, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("cannot write ", path.string(), ": ", std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void write_file_durable(const fs::path& path, const FilePieces& pieces) {
  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f.fd < 0) fail("cannot create ", path.string(), ": ", std::strerror(errno));
  for (const auto& [data, n] : pieces) write_all(f.fd, data, n, path);
  if (::fsync(f.fd) != 0) fail("cannot fsync ", path.string(), ": ", std::strerror(errno));
  const int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) fail("cannot close ", path.string(), " (disk full?): ", std::strerror(errno));
}

void fsync_dir(const fs::path& dir) {
  Fd f;
  f.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (f.fd < 0) fail("cannot open directory ", dir.string(), ": ", std::strerror(errno));
  // Some file systems cannot fsync a directory (EINVAL); there the rename is as durable as it gets.
  if (::fsync(f.fd) != 0 && errno != EINVAL)
    fail("cannot fsync directory ", dir.string(), ": ", std::strerror(errno));
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) fail("cannot rename ", from.string(), " to ", to.string(), ": ", ec.message());
}

void write_file_atomic(const fs::path& path, const FilePieces& pieces) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const fs::path tmp = dir / ("." + path.filename().string() + ".tmp-" + std::to_string(::getpid()));
  try {
    write_file_durable(tmp, pieces);
    rename_or_fail(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  fsync_dir(dir);
}

void write_file_atomic(const fs::path& path, std::string_view text) {
  write_file_atomic(path, FilePieces{{text.data(), text.size()}});
}

}  // namespace rt
