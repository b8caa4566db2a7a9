// Watches the relay hosts for /readyz while the outbound relay is on: every
// --backend-probe-interval it connects to each configured relay host in turn until one greets
// with 220, and says QUIT. The relay is "up" while one did at the last round. Logs each change.
//
// Trusts nothing a relay host sends beyond a bounded reply; runs on one io_context.
#pragma once

#include "proxy/config.hpp"
#include "proxy/deadline.hpp"
#include "proxy/upstream.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <optional>

namespace stp::outbound {

class RelayProbe : private Deadline::Owner {
 public:
  static constexpr auto kTimeout = std::chrono::seconds(5);

  RelayProbe(boost::asio::io_context& io, const Config& config);
  void start();
  void stop();
  bool up() const { return up_.load(std::memory_order_relaxed); }

 private:
  boost::asio::awaitable<void> loop();
  boost::asio::awaitable<bool> greets(const RelayHost& host);
  void on_deadline_expired() override { upstream_.cancel(); }

  boost::asio::io_context& io_;
  const Config& config_;
  boost::asio::steady_timer timer_;
  DeadlineQueue deadlines_;
  Deadline deadline_;
  Upstream upstream_;
  std::atomic<bool> up_{false};
  bool stopped_ = false;
};

}  // namespace stp::outbound
