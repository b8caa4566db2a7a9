// The server: binds the listeners, runs one event loop per thread, hands each accepted
// connection to a session (made by the SessionFactory of its direction) on one of those loops, and
// handles the process's life: the metrics and health endpoint, the MTA probe behind /readyz,
// certificate reloads (SIGHUP, and by itself when the files change), and the graceful drain on
// SIGTERM/SIGINT.
//
// Each session lives on one thread's io_context, so nothing inside a session needs a lock.
// Every thread has its own listening socket on each listener (SO_REUSEPORT, as nginx's
// reuseport and Envoy's per-worker listeners): the kernel spreads the connections and each
// thread accepts its own, with no hand-over between threads. Only processes of the same user
// could join such a port, and those can already control this one. Everything the server
// itself does runs on the first thread.
#pragma once

#include "metrics/http_endpoint.hpp"
#include "metrics/metrics.hpp"
#include "proxy/backend_probe.hpp"
#include "proxy/config.hpp"
#include "proxy/runtime.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace stp {

class Server {
 public:
  // Binds every listener; throws ConfigError naming the flag when one cannot be bound.
  Server(const Config& config, std::shared_ptr<const tls::ServerContext> tls);
  ~Server();

  // What sessions share with the server (the factories are made from it).
  Runtime& runtime() { return runtime_; }

  // Serves until SIGTERM or SIGINT and the drain that follows, with `inbound` making the
  // sessions of every listener; returns the exit code.
  // `relay` serves the --relay-listen listeners (an error when there are some and it is null).
  int run(SessionFactory& inbound, SessionFactory* relay = nullptr);

 private:
  struct Worker {
    // Before io: sessions destroyed with io's handlers leave its list and its deadline queue.
    WorkerState state;
    boost::asio::io_context io{1};
    std::chrono::steady_clock::time_point last_over_limit_log{};
    Worker() {
      state.deadlines.start(io.get_executor());
      state.memory.start(io.get_executor());
    }
    ~Worker() {
      state.deadlines.stop();
      state.memory.stop();
    }
  };

  // A listening socket of one worker's.
  struct Acceptor {
    boost::asio::ip::tcp::acceptor socket;
    std::size_t listener_index;
    Worker& worker;
  };

  boost::asio::awaitable<void> accept_loop(Acceptor& acceptor);
  boost::asio::awaitable<void> drain();
  boost::asio::awaitable<void> watch_certificate_files();
  void refuse_over_limit(boost::asio::ip::tcp::socket socket, const Listener& listener,
                         Worker& worker);
  // The expiry metric and a log line per server certificate.
  void publish_certificates(const tls::ServerContext& tls);
  void reload(std::string_view why);
  void on_signal(const boost::system::error_code& ec, int signal);
  template <class Action>
  void for_each_session(Action action);
  bool ready() const;

  const Config& config_;
  metrics::Metrics metrics_;
  Runtime runtime_;
  SessionFactory& factory_for(std::size_t listener_index) const;
  bool serves_inbound() const;

  SessionFactory* inbound_ = nullptr;
  SessionFactory* relay_ = nullptr;
  std::string reply_too_many_connections_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;  // listener by listener, a worker's each
  std::optional<metrics::HttpEndpoint> http_;
  BackendProbe probe_;
  boost::asio::signal_set signals_;
  std::atomic<bool> draining_{false};
  std::string reload_signature_;  // what the certificate files looked like at the last attempt
};

}  // namespace stp
