#include "dist/tcp_store.h"

#include <unistd.h>

#include <cstring>

#include "dist/socket_io.h"
#include "dist/tcp_store_server.h"
#include "rt/sdk/error.h"

namespace rt::dist {

namespace store_wire {
void put_u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
void put_i64(std::string& s, int64_t v) { s.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
void put_str(std::string& s, const std::string& v) {
  put_u32(s, static_cast<uint32_t>(v.size()));
  s += v;
}
uint8_t Reader::u8() {
  RT_CHECK(pos + 1 <= buf.size(), "TCP store: truncated message");
  return static_cast<uint8_t>(buf[pos++]);
}
uint32_t Reader::u32() {
  uint32_t v = 0;
  RT_CHECK(pos + sizeof(v) <= buf.size(), "TCP store: truncated message");
  std::memcpy(&v, buf.data() + pos, sizeof(v));
  pos += sizeof(v);
  return v;
}
int64_t Reader::i64() {
  int64_t v = 0;
  RT_CHECK(pos + sizeof(v) <= buf.size(), "TCP store: truncated message");
  std::memcpy(&v, buf.data() + pos, sizeof(v));
  pos += sizeof(v);
  return v;
}
std::string Reader::str() {
  const uint32_t n = u32();
  RT_CHECK(pos + n <= buf.size(), "TCP store: truncated message");
  std::string s = buf.substr(pos, n);
  pos += n;
  return s;
}
}  // namespace store_wire

using namespace store_wire;

namespace {
// Slack for the reply beyond the server-side wait: the server answers "timed out" itself, and
// only a dead or stuck server makes the client's own deadline fire.
constexpr auto kReplySlack = std::chrono::seconds(5);
}  // namespace

TcpStore::TcpStore(const std::string& host, int port, int rank, bool serve, std::chrono::milliseconds timeout)
    : host_(host), port_(port), rank_(rank), timeout_(timeout) {
  if (serve) server_ = std::make_unique<TcpStoreServer>(host, port, rank);
  fd_ = connect_tcp(host, port, Clock::now() + timeout, what());
  std::string hello(1, char(kHello));
  put_i64(hello, rank);
  request(hello, std::chrono::milliseconds(0));
}

TcpStore::~TcpStore() {
  try {
    request(std::string(1, char(kBye)), std::chrono::milliseconds(0));
  } catch (const std::exception&) {
    // The server is gone already: nothing to say goodbye to.
  }
  ::close(fd_);
  server_.reset();
}

std::string TcpStore::what() const {
  return "the TCP store at " + address() + " (rank " + std::to_string(rank_) + ")";
}

std::string TcpStore::request(const std::string& payload, std::chrono::milliseconds server_wait) {
  std::lock_guard<std::mutex> lock(mu_);
  RT_CHECK(fd_ >= 0, what(), ": not connected");
  std::string framed;
  put_u32(framed, static_cast<uint32_t>(payload.size()));
  framed += payload;
  const auto deadline = Clock::now() + server_wait + kReplySlack;
  try {
    send_all(fd_, framed.data(), framed.size(), deadline, what());
    uint32_t len = 0;
    recv_all(fd_, &len, sizeof(len), deadline, what());
    std::string reply(len, '\0');
    recv_all(fd_, reply.data(), len, deadline, what());
    return reply;
  } catch (const Error& e) {
    // The stream is out of step after a failed exchange; later requests fail rather than misread.
    ::close(fd_);
    fd_ = -1;
    fail(e.what(), rank_ == 0 ? "" : " (rank 0, which serves the store, may have exited)");
  }
}

void TcpStore::set(const std::string& key, const std::string& value) {
  std::string p(1, char(kSet));
  put_str(p, key);
  put_str(p, value);
  request(p, std::chrono::milliseconds(0));
}

std::string TcpStore::get(const std::string& key) { return get(key, timeout_); }

std::string TcpStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  std::string p(1, char(kGet));
  put_str(p, key);
  put_i64(p, timeout.count());
  const std::string reply = request(p, timeout);
  Reader r{reply};
  RT_CHECK(r.u8() == kOk, what(), ": key '", key, "' was not set within ", timeout.count() / 1000.0, " s");
  return r.str();
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  std::string p(1, char(kAdd));
  put_str(p, key);
  put_i64(p, delta);
  const std::string reply = request(p, std::chrono::milliseconds(0));
  Reader r{reply};
  r.u8();
  return r.i64();
}

namespace {
std::string put_key_list(uint8_t op, const std::vector<std::string>& keys) {
  std::string p(1, char(op));
  put_u32(p, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) put_str(p, k);
  return p;
}
std::vector<std::string> read_key_list(Reader& r) {
  std::vector<std::string> keys(r.u32());
  for (auto& k : keys) k = r.str();
  return keys;
}
}  // namespace

void TcpStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void TcpStore::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  std::string p = put_key_list(kWait, keys);
  put_i64(p, timeout.count());
  const std::string reply = request(p, timeout);
  Reader r{reply};
  const bool ok = r.u8() == kOk;
  const auto m = read_key_list(r);
  if (ok) return;
  std::string names;
  for (const auto& k : m) names += (names.empty() ? "'" : ", '") + k + "'";
  fail(what(), ": keys not set within ", timeout.count() / 1000.0, " s: ", names);
}

std::vector<std::string> TcpStore::missing(const std::vector<std::string>& keys) {
  const std::string reply = request(put_key_list(kCheck, keys), std::chrono::milliseconds(0));
  Reader r{reply};
  r.u8();
  return read_key_list(r);
}

std::vector<int> TcpStore::lost_ranks() {
  const std::string reply = request(std::string(1, char(kLost)), std::chrono::milliseconds(0));
  Reader r{reply};
  r.u8();
  std::vector<int> ranks(r.u32());
  for (int& x : ranks) x = static_cast<int>(r.i64());
  return ranks;
}

}  // namespace rt::dist
