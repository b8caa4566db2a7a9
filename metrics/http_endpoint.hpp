// The operator's HTTP port (--metrics-listen): /metrics in Prometheus text format, /healthz
// (200 while the process serves) and /readyz (200 when the listeners are up and the MTA
// answered its last probe, 503 otherwise).
//
// Trusts nothing from its clients: one small request per connection (8 KiB at most, 10 s
// at most), GET or HEAD only, at most 64 connections at once; the reply always closes. When
// all 64 are taken, the one that has waited longest for its request is closed to make room,
// so idle connections cannot lock out Prometheus or a liveness probe.
#pragma once

#include "metrics/metrics.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <functional>
#include <list>

namespace stp::metrics {

class HttpEndpoint {
 public:
  // Connections served at once (the process's descriptor budget counts them too).
  static constexpr unsigned kMaxConnections = 64;

  // Binds at once; throws std::invalid_argument naming --metrics-listen when it cannot.
  HttpEndpoint(boost::asio::io_context& io, const boost::asio::ip::tcp::endpoint& endpoint,
               Metrics& metrics, std::function<bool()> ready);

  void start();
  void stop();

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket);

  boost::asio::ip::tcp::acceptor acceptor_;
  Metrics& metrics_;
  std::function<bool()> ready_;
  // Touched only on the acceptor's io_context (one thread).
  unsigned connections_ = 0;
  struct AwaitingRequest {
    boost::asio::ip::tcp::socket* socket;
    bool* evicted;
  };
  std::list<AwaitingRequest> awaiting_request_;  // connections with no request yet, oldest first
};

}  // namespace stp::metrics
