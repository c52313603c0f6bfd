// The rendezvous store (torch's TCPStore, smaller): rank 0 serves a key-value map on
// MASTER_ADDR:MASTER_PORT from a thread; every rank, rank 0 included, is a client. Keys live on
// the server, so a key set by a rank that died since is still there; a wait for a key nobody sets
// ends at its timeout with the missing keys named. The server also remembers which ranks' clients
// disconnected without saying goodbye, so a collective that fails can name the rank that died.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace rt::dist {

class TcpStoreServer;

class TcpStore {
 public:
  // Rank 0 (serve = true) listens first; every rank then connects, retrying until `timeout`.
  // `timeout` is also the default for get() and wait().
  TcpStore(const std::string& host, int port, int rank, bool serve, std::chrono::milliseconds timeout);
  ~TcpStore();  // says goodbye (a clean leave), then rank 0 stops serving
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  void set(const std::string& key, const std::string& value);
  // Blocks until the key exists or the timeout passes (an rt::Error naming the key).
  std::string get(const std::string& key);
  std::string get(const std::string& key, std::chrono::milliseconds timeout);
  // Adds delta to the counter at key (absent: 0) and returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  // Blocks until every key exists; on timeout, an rt::Error listing the ones still missing.
  void wait(const std::vector<std::string>& keys);
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);
  // The keys of `keys` that do not exist now (never blocks).
  std::vector<std::string> missing(const std::vector<std::string>& keys);
  // Ranks whose client disconnected without a goodbye (died), in order of disconnection.
  std::vector<int> lost_ranks();

  int rank() const { return rank_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  std::string address() const { return host_ + ":" + std::to_string(port_); }  // "host:port"

 private:
  std::string request(const std::string& payload, std::chrono::milliseconds server_wait);
  std::string what() const;

  std::string host_;
  int port_;
  int rank_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<TcpStoreServer> server_;
  std::mutex mu_;  // one request at a time on the connection
  int fd_ = -1;
};

// Wire format shared by client and server (tcp_store_wire.h would be one more tiny file).
namespace store_wire {
enum Op : uint8_t { kHello = 1, kSet, kGet, kAdd, kWait, kCheck, kLost, kBye };
enum Status : uint8_t { kOk = 0, kTimedOut = 1 };
void put_u32(std::string& s, uint32_t v);
void put_i64(std::string& s, int64_t v);
void put_str(std::string& s, const std::string& v);
// Readers over a received buffer; throw rt::Error on a short buffer.
struct Reader {
  const std::string& buf;
  size_t pos = 0;
  uint8_t u8();
  uint32_t u32();
  int64_t i64();
  std::string str();
};
}  // namespace store_wire

}  // namespace rt::dist
