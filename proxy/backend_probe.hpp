// Watches the MTA for /readyz: every --backend-probe-interval it connects, reads the
// greeting and says QUIT. The MTA is "up" while its last greeting was 2xx.
//
// With --backend-metadata proxy-v2 the connection starts with a PROXY header naming the
// proxy itself (an MTA that expects the header accepts nothing else), and the probe also
// sends EHLO and keeps the MTA's reply: sessions answer their clients' EHLO from it until
// they know whether the client will use TLS. The MTA is up only if that EHLO got 250: an MTA
// not told to expect the header reads it as SMTP lines and answers them instead.
//
// Trusts nothing the MTA sends beyond a bounded reply; runs on one io_context.
#pragma once

#include "proxy/config.hpp"
#include "proxy/deadline.hpp"
#include "proxy/upstream.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

namespace stp {

class BackendProbe : private Deadline::Owner {
 public:
  using EhloCache = std::atomic<std::shared_ptr<const std::string>>;
  // The longest one probe takes.
  static constexpr auto kTimeout = std::chrono::seconds(5);

  // `probed` is set once the first probe has finished, whatever it found.
  BackendProbe(boost::asio::io_context& io, const Config& config, EhloCache& ehlo_cache,
               std::atomic<bool>& probed);

  void start();
  void stop();
  bool mta_up() const { return mta_up_.load(std::memory_order_relaxed); }

 private:
  boost::asio::awaitable<void> loop();
  boost::asio::awaitable<bool> probe_once();

  void on_deadline_expired() override { mta_.cancel(); }

  boost::asio::io_context& io_;
  const Config& config_;
  EhloCache& ehlo_cache_;
  std::atomic<bool>& probed_;
  boost::asio::steady_timer timer_;
  DeadlineQueue deadlines_;
  Deadline deadline_;
  Upstream mta_;
  Upstream::Target target_;
  std::atomic<bool> mta_up_{false};
  bool stopped_ = false;
  bool header_refusal_logged_ = false;  // proxy-v2: said once until the MTA takes it again
};

}  // namespace stp
