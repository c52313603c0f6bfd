#include "dist/socket_io.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "rt/sdk/error.h"

namespace rt::dist {
namespace {

struct AddrList {
  addrinfo* head = nullptr;
  ~AddrList() {
    if (head) freeaddrinfo(head);
  }
};

void resolve(const std::string& host, int port, int flags, AddrList& out, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_INET;  // the launchers hand out IPv4 addresses and hostnames
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &out.head);
  RT_CHECK(rc == 0 && out.head != nullptr, what, ": cannot resolve host '", host, "': ", gai_strerror(rc));
}

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

void wait_ready(int fd, short events, Clock::time_point deadline, const std::string& what, const char* doing) {
  while (true) {
    pollfd p{fd, events, 0};
    const int left = ms_left(deadline);
    const int rc = ::poll(&p, 1, left);
    if (rc > 0) return;
    if (rc < 0 && errno == EINTR) continue;
    RT_CHECK(rc != 0, what, ": timed out ", doing);
    fail(what, ": poll failed ", doing, ": ", std::strerror(errno));
  }
}

}  // namespace

int listen_tcp(const std::string& host, int port, const std::string& what) {
  AddrList addrs;
  resolve(host, port, 0, addrs, what);
  const auto* in = reinterpret_cast<const sockaddr_in*>(addrs.head->ai_addr);
  sockaddr_in bind_addr = *in;
  if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) bind_addr.sin_addr.s_addr = htonl(INADDR_ANY);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  RT_CHECK(fd >= 0, what, ": socket: ", std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // a previous job's TIME_WAIT is no conflict
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&bind_addr), sizeof(bind_addr)) != 0) {
    const int err = errno;
    ::close(fd);
    fail(what, ": cannot listen on ", host, ":", port, ": ", std::strerror(err),
         err == EADDRINUSE ? " (another job or store uses MASTER_PORT; pick another port, e.g. runtime launch "
                             "--master-port)"
                           : "");
  }
  if (::listen(fd, 128) != 0) {
    const int err = errno;
    ::close(fd);
    fail(what, ": cannot listen on ", host, ":", port, ": ", std::strerror(err));
  }
  return fd;
}

int connect_tcp(const std::string& host, int port, Clock::time_point deadline, const std::string& what) {
  auto backoff = std::chrono::milliseconds(10);
  std::string last = "no attempt";
  while (true) {
    AddrList addrs;
    resolve(host, port, 0, addrs, what);
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    RT_CHECK(fd >= 0, what, ": socket: ", std::strerror(errno));
    int rc = ::connect(fd, addrs.head->ai_addr, addrs.head->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, std::min(ms_left(deadline), 1000));
      socklen_t len = sizeof(err);
      if (rc > 0) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      else err = ETIMEDOUT;
    }
    if (err == 0) {
      const int flags = 0;  // back to blocking; every wait goes through poll with a deadline
      ::fcntl(fd, F_SETFL, flags);
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    ::close(fd);
    last = std::strerror(err);
    const auto now = Clock::now();
    if (now >= deadline)
      fail(what, ": cannot connect to ", host, ":", port, " within the timeout: ", last,
           " (is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on every rank?)");
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

void send_all(int fd, const void* data, size_t n, Clock::time_point deadline, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    wait_ready(fd, POLLOUT, deadline, what, "sending");
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    RT_CHECK(k > 0, what, ": connection lost while sending: ", std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void recv_all(int fd, void* data, size_t n, Clock::time_point deadline, const std::string& what) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    wait_ready(fd, POLLIN, deadline, what, "waiting for a reply");
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    RT_CHECK(k != 0, what, ": the peer closed the connection");
    RT_CHECK(k > 0, what, ": connection lost: ", std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

std::string local_address_towards(const std::string& host) {
  AddrList addrs;
  resolve(host, 9, 0, addrs, "finding the interface towards " + host);
  // A UDP connect sends nothing; it only asks the kernel which source address it would use.
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  RT_CHECK(fd >= 0, "socket: ", std::strerror(errno));
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  const bool ok = ::connect(fd, addrs.head->ai_addr, addrs.head->ai_addrlen) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  const int err = errno;
  ::close(fd);
  RT_CHECK(ok, "no network route to MASTER_ADDR ", host, ": ", std::strerror(err));
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof(buf));
  return buf;
}

int pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  RT_CHECK(fd >= 0, "socket: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int err = errno;
  ::close(fd);
  RT_CHECK(ok, "cannot find a free port on 127.0.0.1: ", std::strerror(err));
  return ntohs(a.sin_port);
}

}  // namespace rt::dist
