// The server: binds the listeners, runs one event loop per thread, hands each accepted
// connection to a Session on one of those loops, and stops on SIGTERM/SIGINT.
//
// Each session lives on one thread's io_context, so nothing inside a session needs a lock;
// accepted sockets are spread round-robin over the threads.
#pragma once

#include "proxy/config.hpp"
#include "proxy/session.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>

#include <memory>
#include <vector>

namespace stp {

class Server {
 public:
  // Binds every listener; throws ConfigError naming --listen when one cannot be bound.
  Server(const Config& config, std::shared_ptr<const tls::ServerContext> tls);
  ~Server();

  // Serves until SIGTERM or SIGINT; returns the process exit code.
  int run();

 private:
  boost::asio::awaitable<void> accept_loop(boost::asio::ip::tcp::acceptor& acceptor,
                                           const Listener& listener);
  boost::asio::io_context& next_worker();

  const Config& config_;
  SessionServices services_;
  std::vector<std::unique_ptr<boost::asio::io_context>> workers_;
  std::vector<boost::asio::ip::tcp::acceptor> acceptors_;  // on workers_[0]
  boost::asio::signal_set signals_;
  std::size_t next_worker_ = 0;
};

}  // namespace stp
