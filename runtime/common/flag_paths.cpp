#include "common/flag_paths.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace rt {

namespace fs = std::filesystem;

std::string flag_message(const std::string& flag, const std::string& path, const std::string& message) {
  std::string m = message;
  const std::string head = flag + " " + path + ":";
  if (m.rfind(head, 0) == 0) return m;  // already named
  if (!path.empty() && m.rfind(path + ":", 0) == 0) {
    m.erase(0, path.size() + 1);
    while (!m.empty() && m.front() == ' ') m.erase(m.begin());
  }
  return flag + " " + path + ": " + m;
}

void check_output_path(const std::string& flag, const std::string& path) {
  RT_CHECK(!path.empty(), flag, ": empty file name");
  if (path == "-") return;
  struct stat st {};
  fs::path dir;
  if (::stat(path.c_str(), &st) == 0) {  // follows symbolic links to what will be written
    RT_CHECK(!S_ISDIR(st.st_mode), flag, " ", path, ": is a directory (expected a file name)");
    if (!S_ISREG(st.st_mode)) {  // a device or FIFO is written in place
      RT_CHECK(::access(path.c_str(), W_OK) == 0, flag, " ", path, ": cannot write: ", std::strerror(errno));
      return;
    }
    std::error_code ec;
    const fs::path real = fs::canonical(path, ec);
    dir = ec ? fs::path(path).parent_path() : real.parent_path();
  } else {
    RT_CHECK(errno == ENOENT, flag, " ", path, ": cannot create file: ", std::strerror(errno));
    dir = fs::path(path).parent_path();
  }
  if (dir.empty()) dir = ".";
  // The file is written next to its final name and renamed over it: the directory must exist and
  // take new files.
  struct stat ds {};
  RT_CHECK(::stat(dir.c_str(), &ds) == 0, flag, " ", path, ": cannot create file: ", std::strerror(errno),
           " (directory ", dir.string(), ")");
  RT_CHECK(S_ISDIR(ds.st_mode), flag, " ", path, ": cannot create file: ", std::strerror(ENOTDIR), " (",
           dir.string(), ")");
  RT_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, flag, " ", path, ": cannot create file: ", std::strerror(errno),
           " (directory ", dir.string(), ")");
}

void check_input_path(const std::string& flag, const std::string& path, bool directory_ok) {
  RT_CHECK(!path.empty(), flag, ": empty file name");
  struct stat st {};
  RT_CHECK(::stat(path.c_str(), &st) == 0, flag, " ", path, ": cannot open: ", std::strerror(errno));
  RT_CHECK(directory_ok || !S_ISDIR(st.st_mode), flag, " ", path, ": is a directory (expected a file)");
  RT_CHECK(::access(path.c_str(), R_OK) == 0, flag, " ", path, ": cannot read: ", std::strerror(errno));
}

}  // namespace rt
