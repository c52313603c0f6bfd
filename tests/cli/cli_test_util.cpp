#include "cli_test_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace rt::test {

namespace {

std::string tail(const std::string& s, size_t n = 4000) {
  return s.size() <= n ? s : "[...]" + s.substr(s.size() - n);
}

std::string quote_arg(const std::string& a) {
  if (!a.empty() && a.find_first_of(" \t\n'\"\\$`") == std::string::npos) return a;
  std::string q = "'";
  for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

std::string RunResult::status() const {
  std::ostringstream os;
  if (timed_out) os << "timed out (killed after " << seconds << " s)";
  else if (exited) os << "exited with code " << exit_code;
  else if (signal) os << "killed by signal " << signal << " (" << ::strsignal(signal) << ")";
  else os << "did not run";
  return os.str();
}

std::string RunResult::describe() const {
  std::ostringstream os;
  os << "command:";
  for (const auto& a : argv) os << " " << quote_arg(a);
  os << "\nstatus: " << status() << " after " << seconds << " s\n--- stdout ---\n" << tail(out)
     << "\n--- stderr ---\n" << tail(err) << "\n";
  return os.str();
}

RunResult run_process(const std::vector<std::string>& argv, double timeout_s) {
  RunResult r;
  r.argv = argv;
  if (argv.empty()) throw std::invalid_argument("run_process: empty argv");

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);

  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  const auto t0 = std::chrono::steady_clock::now();
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    r.err = std::string("posix_spawn ") + argv[0] + ": " + std::strerror(rc);
    return r;
  }

  const auto deadline = t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                 std::chrono::duration<double>(timeout_s));
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      ::kill(pid, SIGKILL);
      r.timed_out = true;
      break;
    }
    const int wait_ms = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1);
    int n = ::poll(fds, 2, std::min(wait_ms, 1000));
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);

  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (WIFEXITED(status)) {
    r.exited = !r.timed_out;
    r.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.signal = r.timed_out ? 0 : WTERMSIG(status);
  }
  return r;
}

fs::path runtime_bin() {
  if (const char* env = std::getenv("RT_RUNTIME_BIN"); env && *env) return fs::path(env);
  return fs::path(RT_BIN_DIR) / "runtime";
}

RunResult run_runtime(const std::vector<std::string>& args, double timeout_s) {
  std::vector<std::string> argv{runtime_bin().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, timeout_s);
}

::testing::AssertionResult runtime_available() {
  const fs::path bin = runtime_bin();
  if (!fs::exists(bin))
    return ::testing::AssertionFailure() << "runtime binary not found: " << bin
                                         << " (build the `runtime` target, or set RT_RUNTIME_BIN)";
  if (::access(bin.c_str(), X_OK) != 0)
    return ::testing::AssertionFailure() << "runtime binary is not executable: " << bin;
  return ::testing::AssertionSuccess();
}

fs::path fixtures_dir() { return fs::path(RT_FIXTURES_DIR) / "models"; }
fs::path l2a_dir() { return fixtures_dir().parent_path() / "l2a"; }

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

fs::path fixture_model(const std::string& name) { return fixtures_dir() / name; }

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(read_text(path)); }

fs::path copy_fixture(const std::string& name, const TempDir& dir) {
  const fs::path src = fixture_model(name);
  if (!fs::is_directory(src)) throw std::runtime_error("fixture model missing: " + src.string());
  const fs::path dst = dir.path() / name;
  fs::copy(src, dst, fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(dst))
    fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
  return dst;
}

Safetensors Safetensors::load(const fs::path& path) {
  const std::string bytes = read_text(path);
  if (bytes.size() < 8) throw std::runtime_error("safetensors too short: " + path.string());
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  if (n > bytes.size() - 8) throw std::runtime_error("safetensors header too long: " + path.string());
  Safetensors st;
  st.header = nlohmann::json::parse(bytes.substr(8, n));
  st.data = bytes.substr(8 + n);
  return st;
}

void write_safetensors_raw(const fs::path& path, uint64_t header_len, const std::string& header_bytes,
                           const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header_len >> (8 * i)) & 0xff);
  out += header_bytes;
  out += data;
  write_text(path, out);
}

void Safetensors::save(const fs::path& path) const {
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  write_safetensors_raw(path, h.size(), h, data);
}

std::vector<std::string> Safetensors::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [k, v] : header.items())
    if (k != "__metadata__") names.push_back(k);
  return names;
}

bool Safetensors::remove_tensor(const std::string& name) {
  if (!header.contains(name)) return false;
  const uint64_t b = header[name]["data_offsets"][0].get<uint64_t>();
  const uint64_t e = header[name]["data_offsets"][1].get<uint64_t>();
  header.erase(name);
  data.erase(b, e - b);
  for (auto& [k, v] : header.items()) {
    if (k == "__metadata__") continue;
    auto& off = v["data_offsets"];
    for (int i = 0; i < 2; ++i)
      if (off[i].get<uint64_t>() >= e) off[i] = off[i].get<uint64_t>() - (e - b);
  }
  return true;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

double rel_error(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return std::nan("");
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i]) || !std::isfinite(ref[i])) return std::nan("");
    const double d = static_cast<double>(out[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num) / std::sqrt(den);
}

::testing::AssertionResult is_clean_error(const RunResult& r, const std::vector<std::string>& all_of,
                                          const std::vector<std::vector<std::string>>& any_of) {
  auto fail = [&](const std::string& why) { return ::testing::AssertionFailure() << why << "\n" << r.describe(); };
  if (r.timed_out) return fail("the runtime hung");
  if (r.signal) return fail("the runtime crashed (a signal is never an acceptable way to fail)");
  if (!r.exited) return fail("the runtime did not run");
  if (r.exit_code == 0) return fail("expected a non-zero exit code for bad input");
  if (r.err.rfind("error: ", 0) != 0) return fail("stderr must start with \"error: \"");
  const std::string err = lower(r.err);
  for (const auto& s : all_of)
    if (err.find(lower(s)) == std::string::npos) return fail("stderr does not mention \"" + s + "\"");
  for (const auto& group : any_of) {
    bool found = false;
    for (const auto& s : group) found = found || err.find(lower(s)) != std::string::npos;
    if (!found) {
      std::string opts;
      for (const auto& s : group) opts += (opts.empty() ? "\"" : ", \"") + s + "\"";
      return fail("stderr mentions none of " + opts);
    }
  }
  // Show the message (first line) so that a reader of the test log sees what users would see.
  std::cout << "[stderr] " << r.err.substr(0, r.err.find('\n')) << "\n";
  return ::testing::AssertionSuccess();
}

}  // namespace rt::test
