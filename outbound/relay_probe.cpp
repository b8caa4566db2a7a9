// The relay hosts' health for /readyz; see relay_probe.hpp.
#include "outbound/relay_probe.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace stp::outbound {
namespace asio = boost::asio;
using boost::system::error_code;

RelayProbe::RelayProbe(asio::io_context& io, const Config& config)
    : io_(io),
      config_(config),
      timer_(io),
      deadline_(deadlines_, *this),
      upstream_(io.get_executor(), deadline_, "relay probe:", "relay host") {
  upstream_.set_timeout(kTimeout);
  upstream_.set_failure_level(spdlog::level::debug);  // the loop logs each change of state
  deadlines_.start(io.get_executor());
}

void RelayProbe::start() {
  asio::co_spawn(io_, loop(), asio::detached);
}

void RelayProbe::stop() {
  stopped_ = true;
  timer_.cancel();
  deadline_.cancel();
  deadlines_.stop();
  upstream_.close();
}

asio::awaitable<void> RelayProbe::loop() {
  bool first = true;
  bool last = false;
  while (!stopped_) {
    bool up = false;
    for (const RelayHost& host : config_.relay.hosts) {
      up = co_await greets(host);
      if (up || stopped_) break;
    }
    up_.store(up, std::memory_order_relaxed);
    if (first || up != last) {
      if (up) {
        spdlog::info("a relay host answers: outbound relay ready");
      } else {
        spdlog::warn("no relay host answers (probe): outbound relay not ready");
      }
    }
    first = false;
    last = up;
    timer_.expires_after(config_.backend_probe_interval);
    error_code ignored;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
}

asio::awaitable<bool> RelayProbe::greets(const RelayHost& host) {
  upstream_.set_limit(Deadline::Clock::now() + kTimeout);
  bool up = co_await upstream_.connect(Upstream::target(host.name, host.port), kTimeout);
  smtp::ReplyScan greeting{smtp::ReplyScan::Status::malformed};
  const bool implicit = std::count(config_.relay.tls_on_connect_ports.begin(),
                                   config_.relay.tls_on_connect_ports.end(), host.port) > 0;
  // A TLS-on-connect port greets only after a handshake: an open port is enough there.
  if (up && implicit) {
    upstream_.close();
    co_return true;
  }
  if (up) greeting = co_await upstream_.read_reply();
  up = greeting.status == smtp::ReplyScan::Status::complete && greeting.code == 220;
  if (up) {
    upstream_.consume(greeting);
    co_await upstream_.quit(kTimeout);
  }
  upstream_.close();
  co_return up;
}

}  // namespace stp::outbound
