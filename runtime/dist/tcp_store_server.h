// The store's server side, run by rank 0: an accept thread and one thread per client (a world has
// few ranks, and a thread per client keeps blocking gets simple: each waits on the map's condition
// variable until its key appears or its timeout passes).
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace rt::dist {

class TcpStoreServer {
 public:
  // Listens now (so a port in use fails here, on rank 0, naming host:port).
  TcpStoreServer(const std::string& host, int port, int rank);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

 private:
  void accept_loop();
  void serve(int fd);
  std::string handle(const std::string& request, int& client_rank, bool& said_bye);

  std::string what_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  std::mutex mu_;
  std::condition_variable changed_;
  bool stopping_ = false;
  std::map<std::string, std::string> data_;
  std::vector<int> lost_;
  std::vector<int> client_fds_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

}  // namespace rt::dist
