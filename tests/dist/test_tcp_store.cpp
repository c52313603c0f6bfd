// The rendezvous store: set/get/add/wait across threads and processes, and its errors (timeouts,
// port in use, nobody listening, server gone), each naming host:port and the rank.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "dist/socket_io.h"
#include "dist/tcp_store.h"
#include "rt/sdk/error.h"

namespace {

using rt::dist::TcpStore;
using namespace std::chrono_literals;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const rt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_HAS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(TcpStore, SetGetAddWaitAcrossThreads) {
  const int port = rt::dist::pick_free_port();
  TcpStore server("127.0.0.1", port, 0, true, 10s);
  TcpStore client("127.0.0.1", port, 1, false, 10s);
  server.set("a", std::string("x\0y", 3));
  EXPECT_EQ(client.get("a"), std::string("x\0y", 3));

  // get() blocks until another thread sets the key.
  std::thread setter([&] {
    std::this_thread::sleep_for(200ms);
    server.set("late", "v");
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(client.get("late"), "v");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 150ms);
  setter.join();

  // add() is atomic across clients.
  std::vector<std::thread> adders;
  std::vector<std::unique_ptr<TcpStore>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(std::make_unique<TcpStore>("127.0.0.1", port, 2 + i, false, 10s));
  for (int i = 0; i < 4; ++i)
    adders.emplace_back([&, i] {
      for (int k = 0; k < 50; ++k) clients[i]->add("counter", 1);
    });
  for (auto& t : adders) t.join();
  EXPECT_EQ(server.add("counter", 0), 200);
  EXPECT_EQ(client.add("counter", -10), 190);

  std::thread waiter_setter([&] {
    std::this_thread::sleep_for(100ms);
    clients[0]->set("k1", "");
    clients[1]->set("k2", "");
  });
  EXPECT_NO_THROW(client.wait({"k1", "k2"}));
  waiter_setter.join();
  EXPECT_TRUE(client.missing({"k1", "k2"}).empty());
  EXPECT_EQ(client.missing({"k1", "nope"}), std::vector<std::string>{"nope"});
  EXPECT_TRUE(server.lost_ranks().empty());  // every client so far is alive or left cleanly
}

TEST(TcpStore, TimeoutsNameTheKeys) {
  const int port = rt::dist::pick_free_port();
  TcpStore server("127.0.0.1", port, 0, true, 10s);
  TcpStore client("127.0.0.1", port, 1, false, 10s);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string get_err = error_of([&] { client.get("missing", 300ms); });
  EXPECT_HAS(get_err, "'missing'");
  EXPECT_HAS(get_err, "127.0.0.1:" + std::to_string(port));
  EXPECT_HAS(get_err, "rank 1");
  client.set("here", "1");
  const std::string wait_err = error_of([&] { client.wait({"here", "gone1", "gone2"}, 300ms); });
  EXPECT_HAS(wait_err, "'gone1', 'gone2'");
  EXPECT_EQ(wait_err.find("'here'"), std::string::npos) << wait_err;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_EQ(client.get("here"), "1");  // the connection is still usable after a timeout
}

TEST(TcpStore, PortInUse) {
  const int port = rt::dist::pick_free_port();
  TcpStore first("127.0.0.1", port, 0, true, 5s);
  const std::string err = error_of([&] { TcpStore second("127.0.0.1", port, 0, true, 5s); });
  EXPECT_HAS(err, "127.0.0.1:" + std::to_string(port));
  EXPECT_HAS(err, "Address already in use");
  EXPECT_HAS(err, "rank 0");
}

TEST(TcpStore, NobodyListening) {
  const int port = rt::dist::pick_free_port();
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = error_of([&] { TcpStore c("127.0.0.1", port, 3, false, 1s); });
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_HAS(err, "127.0.0.1:" + std::to_string(port));
  EXPECT_HAS(err, "rank 3");
  EXPECT_HAS(err, "Connection refused");
  EXPECT_GE(took, 900ms);  // it retried until the timeout, as rank 0 may start late
  EXPECT_LT(took, 4s);
}

TEST(TcpStore, ServerGone) {
  const int port = rt::dist::pick_free_port();
  auto server = std::make_unique<TcpStore>("127.0.0.1", port, 0, true, 5s);
  TcpStore client("127.0.0.1", port, 1, false, 5s);
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    server.reset();
  });
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = error_of([&] { client.get("never"); });
  stopper.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);  // not the 5 s timeout: the close is seen at once
  EXPECT_HAS(err, "127.0.0.1:" + std::to_string(port));
  EXPECT_HAS(err, "rank 1");
  EXPECT_HAS(err, "rank 0");
}

// A second process sets a key and dies without leaving: the key stays readable, the store names
// the rank as lost, and nobody waits past the timeout for keys it never set.
TEST(TcpStore, RankThatDiesAcrossProcesses) {
  const int port = rt::dist::pick_free_port();
  TcpStore server("127.0.0.1", port, 0, true, 5s);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string p = std::to_string(port);
    execl(RT_DIST_PROBE, RT_DIST_PROBE, "store-set", "127.0.0.1", p.c_str(), "1", "from_rank1", "hello",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(server.get("from_rank1", 2s), "hello");
  std::vector<int> lost;
  for (int i = 0; i < 50 && lost.empty(); ++i) {
    lost = server.lost_ranks();
    if (lost.empty()) std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(lost, std::vector<int>{1});
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_HAS(error_of([&] { server.wait({"from_rank1", "never_from_rank1"}, 500ms); }), "never_from_rank1");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
}

}  // namespace
