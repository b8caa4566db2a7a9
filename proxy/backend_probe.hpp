// Watches the MTA for /readyz: every --backend-probe-interval it connects, reads the
// greeting and says QUIT. The MTA is "up" while its last greeting was 2xx.
//
// Trusts nothing the MTA sends beyond a bounded greeting; runs on one io_context.
#pragma once

#include "proxy/config.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>

namespace stp {

class BackendProbe {
 public:
  BackendProbe(boost::asio::io_context& io, const Config& config);

  void start();
  void stop();
  bool mta_up() const { return mta_up_.load(std::memory_order_relaxed); }

 private:
  boost::asio::awaitable<void> loop();
  boost::asio::awaitable<bool> probe_once();

  boost::asio::io_context& io_;
  const Config& config_;
  boost::asio::steady_timer timer_;
  std::atomic<bool> mta_up_{false};
  bool stopped_ = false;
};

}  // namespace stp
