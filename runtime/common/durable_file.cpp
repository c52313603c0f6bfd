#include "common/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
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

namespace {

// Follows symbolic links from path (relative targets resolve against the link's directory) to the
// path that is not a link: the file to write. A dangling link yields the path it points to.
fs::path resolve_links(const fs::path& path) {
  fs::path p = path;
  for (int hops = 0;; ++hops) {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    if (hops >= 40) fail("cannot write ", path.string(), ": ", std::strerror(ELOOP));
    std::error_code ec;
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) fail("cannot read symbolic link ", p.string(), ": ", ec.message());
    p = target.is_absolute() ? target : (p.has_parent_path() ? p.parent_path() : fs::path(".")) / target;
  }
}

// Writes the pieces to an fd that is not a regular file we own (stdout, a device, a FIFO, a
// socket): no temporary, no rename, no fsync (those do not apply); every write error is reported.
void write_pieces(int fd, const FilePieces& pieces, const fs::path& path) {
  for (const auto& [data, n] : pieces) write_all(fd, data, n, path);
}

void write_existing_special(const fs::path& shown, const fs::path& target, const FilePieces& pieces) {
  Fd f;
  // No O_CREAT / O_TRUNC: the node exists and must stay what it is. A FIFO blocks here until a
  // reader opens it.
  do {
    f.fd = ::open(target.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY);
  } while (f.fd < 0 && errno == EINTR);
  if (f.fd < 0) fail("cannot open ", shown.string(), " for writing: ", std::strerror(errno));
  write_pieces(f.fd, pieces, shown);
  const int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0 && errno != EINTR)
    fail("cannot write ", shown.string(), ": ", std::strerror(errno));
}

}  // namespace

bool is_stdout_path(const fs::path& path) { return path.native() == "-"; }

void write_file_atomic(const fs::path& path, const FilePieces& pieces) {
  if (is_stdout_path(path)) {
    // Whatever the program already buffered for stdout goes first; fd 1 stays open.
    std::cout.flush();
    std::fflush(stdout);
    write_pieces(STDOUT_FILENO, pieces, fs::path("standard output"));
    return;
  }
  const fs::path target = resolve_links(path);
  struct stat st;
  if (::stat(target.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) fail("cannot write ", path.string(), ": ", std::strerror(EISDIR));
    if (!S_ISREG(st.st_mode)) {
      // A device, FIFO or socket: write into it; renaming over it would replace it with a file.
      write_existing_special(path, target, pieces);
      return;
    }
  }
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const fs::path tmp = dir / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()));
  try {
    write_file_durable(tmp, pieces);
    rename_or_fail(tmp, target);
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
