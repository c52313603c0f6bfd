#include "dist/tcp_store_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dist/socket_io.h"
#include "dist/tcp_store.h"
#include "rt/sdk/error.h"

namespace rt::dist {

using namespace store_wire;

TcpStoreServer::TcpStoreServer(const std::string& host, int port, int rank)
    : what_("the TCP store server (rank " + std::to_string(rank) + ")") {
  listen_fd_ = listen_tcp(host, port, what_);
  if (::pipe2(wake_pipe_, O_CLOEXEC) != 0) {
    ::close(listen_fd_);
    fail(what_, ": pipe: ", std::strerror(errno));
  }
  acceptor_ = std::thread([this] { accept_loop(); });
}

TcpStoreServer::~TcpStoreServer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);  // wakes each client thread's read
  }
  changed_.notify_all();
  const char c = 0;
  (void)!::write(wake_pipe_[1], &c, 1);
  acceptor_.join();
  for (auto& t : threads_) t.join();
  ::close(listen_fd_);
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
}

void TcpStoreServer::accept_loop() {
  while (true) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents != 0) return;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ::close(fd);
      return;
    }
    client_fds_.push_back(fd);
    threads_.emplace_back([this, fd] { serve(fd); });
  }
}

void TcpStoreServer::serve(int fd) {
  const auto forever = Clock::time_point::max();
  int client_rank = -1;
  bool said_bye = false;
  try {
    while (true) {
      uint32_t len = 0;
      recv_all(fd, &len, sizeof(len), forever, what_);
      RT_CHECK(len <= (1u << 30), what_, ": oversized request");
      std::string req(len, '\0');
      recv_all(fd, req.data(), len, forever, what_);
      std::string reply = handle(req, client_rank, said_bye);
      std::string framed;
      put_u32(framed, static_cast<uint32_t>(reply.size()));
      framed += reply;
      send_all(fd, framed.data(), framed.size(), Clock::now() + std::chrono::seconds(30), what_);
      if (said_bye) break;
    }
  } catch (const std::exception&) {
    // The client went away (or spoke garbage): dropping it is all the server can do.
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (client_rank >= 0 && !said_bye && !stopping_) lost_.push_back(client_rank);
  client_fds_.erase(std::remove(client_fds_.begin(), client_fds_.end(), fd), client_fds_.end());
  ::close(fd);
}

std::string TcpStoreServer::handle(const std::string& request, int& client_rank, bool& said_bye) {
  Reader in{request};
  std::string out;
  const uint8_t op = in.u8();
  std::unique_lock<std::mutex> lock(mu_);
  auto deadline_from = [](int64_t ms) { return Clock::now() + std::chrono::milliseconds(ms); };
  auto missing_of = [this](const std::vector<std::string>& keys) {
    std::vector<std::string> m;
    for (const auto& k : keys)
      if (!data_.count(k)) m.push_back(k);
    return m;
  };
  auto read_keys = [&in] {
    std::vector<std::string> keys(in.u32());
    for (auto& k : keys) k = in.str();
    return keys;
  };
  auto put_keys = [&out](const std::vector<std::string>& keys) {
    put_u32(out, static_cast<uint32_t>(keys.size()));
    for (const auto& k : keys) put_str(out, k);
  };
  switch (op) {
    case kHello:
      client_rank = static_cast<int>(in.i64());
      out.push_back(kOk);
      break;
    case kSet: {
      std::string key = in.str();
      data_[key] = in.str();
      changed_.notify_all();
      out.push_back(kOk);
      break;
    }
    case kGet: {
      const std::string key = in.str();
      const auto deadline = deadline_from(in.i64());
      changed_.wait_until(lock, deadline, [&] { return stopping_ || data_.count(key) > 0; });
      RT_CHECK(!stopping_, what_, ": stopping");  // drop the client: "closed", not a false "timed out"
      if (data_.count(key)) {
        out.push_back(kOk);
        put_str(out, data_[key]);
      } else {
        out.push_back(kTimedOut);
      }
      break;
    }
    case kAdd: {
      const std::string key = in.str();
      const int64_t delta = in.i64();
      int64_t v = 0;
      if (auto it = data_.find(key); it != data_.end()) v = std::stoll(it->second);
      v += delta;
      data_[key] = std::to_string(v);
      changed_.notify_all();
      out.push_back(kOk);
      put_i64(out, v);
      break;
    }
    case kWait: {
      const auto keys = read_keys();
      const auto deadline = deadline_from(in.i64());
      changed_.wait_until(lock, deadline, [&] { return stopping_ || missing_of(keys).empty(); });
      RT_CHECK(!stopping_, what_, ": stopping");
      const auto m = missing_of(keys);
      out.push_back(m.empty() ? kOk : kTimedOut);
      put_keys(m);
      break;
    }
    case kCheck:
      out.push_back(kOk);
      put_keys(missing_of(read_keys()));
      break;
    case kLost:
      out.push_back(kOk);
      put_u32(out, static_cast<uint32_t>(lost_.size()));
      for (int r : lost_) put_i64(out, r);
      break;
    case kBye:
      said_bye = true;
      out.push_back(kOk);
      break;
    default:
      fail(what_, ": unknown request ", int(op));
  }
  return out;
}

}  // namespace rt::dist
