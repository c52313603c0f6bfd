// Process groups across real processes, and `runtime launch`: allreduce/broadcast under launch with
// 2 and 3 ranks (Gloo), a dead or missing rank turning into a clear error within the timeout, and
// launch's exit codes, failure reports, grace period, variables and signal forwarding.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "dist/socket_io.h"

namespace {

using rt::test::run_process;
using rt::test::run_runtime;
using rt::test::RunResult;

// The checksum dist_allreduce_probe prints for a world of n.
std::string expected_checksum(int n) {
  double c = 0;
  const double ranks_sum = n * (n + 1) / 2.0;
  for (int i = 0; i < 1000; ++i) c += static_cast<float>(ranks_sum * (i % 17) + 0.5 * n);
  for (int i = 0; i < 3001; ++i) c += (1000.0 * (n * (n - 1) / 2.0) + n * static_cast<double>(i)) * 0.25;
  for (int i = 0; i < 777; ++i) c += static_cast<uint8_t>(i * 7 + 3);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f", c);
  return buf;
}

// Sets environment variables for the processes a test starts, and removes them afterwards.
struct ScopedEnv {
  std::vector<std::string> names;
  ScopedEnv(std::initializer_list<std::pair<const char*, std::string>> vars) {
    for (const auto& [k, v] : vars) {
      setenv(k, v.c_str(), 1);
      names.push_back(k);
    }
  }
  ~ScopedEnv() {
    for (const auto& n : names) unsetenv(n.c_str());
  }
};

// One rank of a hand-made world (no launcher), run with extra variables through env(1).
RunResult run_rank(int rank, int n, int port, std::vector<std::string> extra, double timeout_s = 20) {
  std::vector<std::string> argv = {"/usr/bin/env", "RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(n),
                                   "LOCAL_RANK=" + std::to_string(rank), "MASTER_ADDR=127.0.0.1",
                                   "MASTER_PORT=" + std::to_string(port)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(RT_DIST_PROBE);
  return run_process(argv, timeout_s);
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

class DistLaunch : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rt::test::runtime_available());
#if !RT_HAVE_GLOO
    GTEST_SKIP() << "built without Gloo (libgloo-dev): multi-process CPU worlds are disabled";
#endif
  }
};

void expect_world_ok(int n) {
  ScopedEnv env{{"RT_DIST_TIMEOUT_S", "15"}};
  const RunResult r = run_runtime({"launch", "--nproc-per-node", std::to_string(n), "--", RT_DIST_PROBE}, 30);
  ASSERT_TRUE(r.ok()) << r.describe();
  for (int rank = 0; rank < n; ++rank)
    EXPECT_TRUE(has(r.out, "rank " + std::to_string(rank) + " checksum " + expected_checksum(n))) << r.describe();
}

TEST_F(DistLaunch, AllreduceAndBroadcastTwoRanks) { expect_world_ok(2); }
TEST_F(DistLaunch, AllreduceAndBroadcastThreeRanks) { expect_world_ok(3); }

TEST_F(DistLaunch, RankLostAfterJoinFailsTheOthersQuickly) {
  const int port = rt::dist::pick_free_port();
  const std::vector<std::string> env = {"RT_DIST_TIMEOUT_S=4", "RT_PROBE_EXIT_AFTER_JOIN=1"};
  auto rank1 = std::async(std::launch::async, [&] { return run_rank(1, 2, port, env); });
  const RunResult r0 = run_rank(0, 2, port, env);
  const RunResult r1 = rank1.get();
  EXPECT_TRUE(r1.exited && r1.exit_code == 3) << r1.describe();
  EXPECT_TRUE(r0.exited && r0.exit_code == 1) << r0.describe();
  EXPECT_TRUE(has(r0.err, "error: rank 0: allreduce_sum failed: rank 1 lost")) << r0.describe();
  EXPECT_LT(r0.seconds, 10) << r0.describe();
}

TEST_F(DistLaunch, RankThatNeverArrivesIsNamed) {
  const int port = rt::dist::pick_free_port();
  const RunResult r0 = run_rank(0, 3, port, {"RT_DIST_TIMEOUT_S=1.5"});
  EXPECT_TRUE(r0.exited && r0.exit_code == 1) << r0.describe();
  EXPECT_TRUE(has(r0.err, "ranks 1, 2 did not arrive within 1.5 s")) << r0.describe();
  EXPECT_LT(r0.seconds, 8) << r0.describe();
}

TEST_F(DistLaunch, LaunchNamesTheFailedRankAndStopsTheOthers) {
  // Rank 0 sleeps instead of failing in its collective: which of two ranks that fail within a
  // millisecond the launcher reaps first is not defined, and this test is about rank 0 being stopped.
  ScopedEnv env{{"RT_DIST_TIMEOUT_S", "30"}, {"RT_PROBE_EXIT_AFTER_JOIN", "1"}, {"RT_PROBE_OTHERS_SLEEP", "30"}};
  const RunResult r = run_runtime({"launch", "--nproc-per-node", "2", "--", RT_DIST_PROBE}, 30);
  EXPECT_TRUE(r.exited && r.exit_code == 3) << r.describe();
  EXPECT_TRUE(has(r.err, "error: rank 1 (pid ")) << r.describe();
  EXPECT_TRUE(has(r.err, "exited with code 3; stopping the other ranks")) << r.describe();
  EXPECT_LT(r.seconds, 15) << r.describe();  // rank 0 was stopped, not left to its 30 s timeout
}

TEST_F(DistLaunch, ForwardsExitCode) {
  const RunResult r = run_runtime(
      {"launch", "--nproc-per-node", "2", "--", "/bin/sh", "-c", "if [ $RANK = 1 ]; then exit 7; fi; sleep 30"}, 20);
  EXPECT_TRUE(r.exited && r.exit_code == 7) << r.describe();
  EXPECT_TRUE(has(r.err, "rank 1 (pid ") && has(r.err, "exited with code 7")) << r.describe();
  EXPECT_LT(r.seconds, 10) << r.describe();
  const RunResult ok = run_runtime({"launch", "--nproc-per-node", "3", "--", "/bin/true"}, 20);
  EXPECT_TRUE(ok.ok()) << ok.describe();
  EXPECT_EQ(ok.err, "");
}

TEST_F(DistLaunch, ReportsARankKilledBySignal) {
  const RunResult r = run_runtime(
      {"launch", "--nproc-per-node", "2", "--", "/bin/sh", "-c", "if [ $RANK = 0 ]; then kill -9 $$; fi; sleep 30"}, 20);
  EXPECT_TRUE(r.exited && r.exit_code == 128 + 9) << r.describe();
  EXPECT_TRUE(has(r.err, "rank 0 (pid ") && has(r.err, "was killed by signal 9 (SIGKILL)")) << r.describe();
}

TEST_F(DistLaunch, KillsRanksThatIgnoreSigtermAfterTheGrace) {
  const RunResult r = run_runtime({"launch", "--nproc-per-node", "2", "--grace", "1", "--", "/bin/sh", "-c",
                                   "trap '' TERM; if [ $RANK = 1 ]; then exit 2; fi; sleep 30"},
                                  20);
  EXPECT_TRUE(r.exited && r.exit_code == 2) << r.describe();
  EXPECT_LT(r.seconds, 8) << r.describe();
}

TEST_F(DistLaunch, SetsTorchrunVariables) {
  ScopedEnv env{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}};  // an outer launcher's rank must not leak in
  const RunResult r = run_runtime({"launch", "--nproc-per-node", "2", "--master-port", "29517", "--", "/bin/sh", "-c",
                                   "echo \"v $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT "
                                   "${SLURM_PROCID:-none}\""},
                                  20);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(has(r.out, "v 0 2 0 2 127.0.0.1 29517 none")) << r.describe();
  EXPECT_TRUE(has(r.out, "v 1 2 1 2 127.0.0.1 29517 none")) << r.describe();
}

TEST_F(DistLaunch, ForwardsCtrlC) {
  const std::string script = "'" + rt::test::runtime_bin().string() +
                             "' launch --nproc-per-node 2 -- /bin/sh -c 'sleep 30' & pid=$!; sleep 1; kill -INT $pid; "
                             "wait $pid; echo rc=$?";
  const RunResult r = run_process({"/bin/sh", "-c", script}, 20);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(has(r.out, "rc=130")) << r.describe();
  EXPECT_TRUE(has(r.err, "interrupted by signal 2 (SIGINT)")) << r.describe();
  EXPECT_LT(r.seconds, 10) << r.describe();
}

TEST_F(DistLaunch, HelpTeaches) {
  const RunResult r = run_runtime({"launch", "--help"}, 20);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(has(r.out, "runtime launch --nproc-per-node 2 -- runtime train")) << r.describe();
  EXPECT_TRUE(has(r.out, "MASTER_PORT")) << r.describe();
  const RunResult missing = run_runtime({"launch", "--nproc-per-node", "2"}, 20);
  EXPECT_TRUE(rt::test::is_clean_error(missing, {"command"}));
}

}  // namespace
