// Blocking TCP sockets with deadlines, for the store: every wait is bounded, so that a dead or
// silent peer becomes an rt::Error instead of a hang. `what` prefixes every message ("the TCP store
// at 127.0.0.1:29500 (rank 1)").
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace rt::dist {

using Clock = std::chrono::steady_clock;

// A listening socket on host:port (a loopback host binds loopback only, any other host binds every
// interface, as rank 0 must be reachable at MASTER_ADDR). Port in use is an error naming it.
int listen_tcp(const std::string& host, int port, const std::string& what);

// Connects to host:port, retrying refused or unreachable connects with backoff until `deadline`
// (rank 0 may not be listening yet).
int connect_tcp(const std::string& host, int port, Clock::time_point deadline, const std::string& what);

// All `n` bytes, or an rt::Error (peer closed, error, or deadline passed).
void send_all(int fd, const void* data, size_t n, Clock::time_point deadline, const std::string& what);
void recv_all(int fd, void* data, size_t n, Clock::time_point deadline, const std::string& what);

// The local address that routes to host (the interface Gloo should listen on), e.g. "127.0.0.1".
std::string local_address_towards(const std::string& host);

// A port on 127.0.0.1 that was free a moment ago (for `runtime launch` without --master-port).
int pick_free_port();

}  // namespace rt::dist
