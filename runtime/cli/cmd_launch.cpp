// runtime launch: torchrun's standalone mode for one node. Starts N copies of a command with
// torchrun's variables, forwards Ctrl-C, and when one rank fails stops the rest (SIGTERM, then
// SIGKILL after a grace period), so a crashed rank never leaves the others waiting on it.
// Each rank runs in its own process group: a signal reaches a rank (and anything it started) once,
// from us, and PR_SET_PDEATHSIG takes the ranks down if the launcher itself is killed.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "cli/validators.h"
#include "dist/socket_io.h"
#include "rt/sdk/error.h"

extern char** environ;

namespace rt {
namespace {

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

struct Rank {
  pid_t pid = -1;
  bool done = false;
};

std::string signal_text(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return std::to_string(sig) + (abbrev ? std::string(" (SIG") + abbrev + ")" : "");
}

std::string status_text(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + signal_text(WTERMSIG(status));
  return "stopped";
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// Our environment without any launcher's rank variables (a launch under srun or mpirun must not
// leave the children two contradictory worlds), plus torchrun's for `rank`.
std::vector<std::string> child_env(int rank, int nproc, int port) {
  static const std::set<std::string> drop = {
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
      "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
      "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "MPI_LOCALNRANKS",
      "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"};
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    if (!drop.count(kv.substr(0, kv.find('=')))) env.push_back(kv);
  }
  env.push_back("RANK=" + std::to_string(rank));
  env.push_back("WORLD_SIZE=" + std::to_string(nproc));
  env.push_back("LOCAL_RANK=" + std::to_string(rank));
  env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(nproc));
  env.push_back("GROUP_RANK=0");
  env.push_back("MASTER_ADDR=127.0.0.1");
  env.push_back("MASTER_PORT=" + std::to_string(port));
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

pid_t spawn(std::vector<std::string> argv, std::vector<std::string> env, const sigset_t& old_mask) {
  auto cargv = c_strings(argv);
  auto cenv = c_strings(env);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  RT_CHECK(pid >= 0, "runtime launch: fork: ", std::strerror(errno));
  if (pid == 0) {  // only async-signal-safe calls until exec
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(128 + SIGKILL);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGHUP, SIG_DFL);
    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    ::execvpe(cargv[0], cargv.data(), cenv.data());
    const int err = errno;
    const char* msg = "error: runtime launch: cannot run ";
    (void)!::write(2, msg, std::strlen(msg));
    (void)!::write(2, cargv[0], std::strlen(cargv[0]));
    (void)!::write(2, ": ", 2);
    (void)!::write(2, std::strerror(err), std::strlen(std::strerror(err)));
    (void)!::write(2, "\n", 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here: a signal sent before the child ran setpgid must still reach it
  return pid;
}

int run_launch(int nproc, int port, double grace_s, std::vector<std::string> command) {
  RT_CHECK(!command.empty(), "runtime launch: no command given (put it after --)");
  if (command[0] == "runtime") command[0] = std::filesystem::read_symlink("/proc/self/exe").string();
  if (port == 0) port = dist::pick_free_port();

  struct sigaction sa {};
  sa.sa_handler = on_signal;  // no SA_RESTART: the wait loop should see the signal at once
  for (int s : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(s, &sa, nullptr);
  sigset_t old_mask;
  ::sigprocmask(SIG_SETMASK, nullptr, &old_mask);

  std::vector<Rank> ranks(nproc);
  for (int r = 0; r < nproc; ++r) ranks[r].pid = spawn(command, child_env(r, nproc, port), old_mask);

  using Clock = std::chrono::steady_clock;
  int alive = nproc, failed_rank = -1, failed_status = 0, forwarded = 0;
  std::optional<Clock::time_point> kill_at;
  bool killed = false;
  auto signal_alive = [&](int sig) {
    for (const Rank& r : ranks)
      if (!r.done) ::kill(-r.pid, sig);
  };
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int r = 0; r < nproc; ++r) {
        if (ranks[r].pid != pid) continue;
        ranks[r].done = true;
        --alive;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failed_rank < 0 && forwarded == 0) {
          failed_rank = r;
          failed_status = status;
          std::cerr << "error: rank " << r << " (pid " << pid << ") " << status_text(status)
                    << (alive > 0 ? "; stopping the other ranks" : "") << "\n";
          signal_alive(SIGTERM);
          kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s));
        }
      }
      continue;
    }
    if (g_signal != 0) {
      forwarded = g_signal;
      g_signal = 0;
      signal_alive(forwarded);
      if (!kill_at)
        kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s));
    }
    if (kill_at && !killed && Clock::now() >= *kill_at) {
      signal_alive(SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (failed_rank >= 0) return exit_code_of(failed_status);
  if (forwarded != 0) {
    std::cerr << "error: runtime launch: interrupted by signal " << signal_text(forwarded) << "; ranks stopped\n";
    return 128 + forwarded;
  }
  return 0;
}

}  // namespace

void register_launch(CLI::App& app) {
  struct Opts {
    int nproc = 1;
    int port = 0;
    double grace_s = 5;
    std::vector<std::string> command;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "launch", "Run N copies of a command as one data-parallel world on this machine (like torchrun)");
  cmd->footer(
      "\nEach copy gets torchrun's variables: RANK and LOCAL_RANK (0..N-1), WORLD_SIZE and LOCAL_WORLD_SIZE (N),\n"
      "MASTER_ADDR=127.0.0.1 and MASTER_PORT, where rank 0 serves the rendezvous store. `runtime` as the command\n"
      "means this executable. Output is not prefixed. When a rank fails, the others get SIGTERM, then SIGKILL after\n"
      "--grace seconds; launch prints which rank failed and exits with its code (128+signal if it was killed).\n"
      "Ctrl-C is forwarded to every rank. RT_DIST_TIMEOUT_S bounds how long a rank waits for a dead peer.\n"
      "\nExample (two CPU ranks, one process each):\n"
      "  runtime launch --nproc-per-node 2 -- runtime train --model qwen2.5-0.5b --init random ...\n"
      "Under Slurm or mpirun, run the command itself: their variables (SLURM_PROCID, OMPI_COMM_WORLD_RANK, ...)\n"
      "are read directly.");
  cmd->add_option("--nproc-per-node", o->nproc, "Number of ranks (processes) to start")
      ->required()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--master-port", o->port, "Rendezvous port on 127.0.0.1 (default: a free port)")
      ->check(CLI::Range(1, 65535));
  cmd->add_option("--grace", o->grace_s, "Seconds between SIGTERM and SIGKILL when stopping ranks")
      ->capture_default_str()
      ->check(finite_in(0.0, 3600.0));
  cmd->add_option("command", o->command, "The command each rank runs, after --")->required();
  cmd->callback([o] {
    const int code = run_launch(o->nproc, o->port, o->grace_s, o->command);
    std::cout.flush();
    std::cerr.flush();
    if (code != 0) std::exit(code);
  });
}

}  // namespace rt
