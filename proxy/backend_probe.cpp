// MTA liveness probe; see backend_probe.hpp.
#include "proxy/backend_probe.hpp"

#include "proxy/log.hpp"
#include "smtp/proxy_protocol.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace stp {
namespace asio = boost::asio;
using boost::system::error_code;

BackendProbe::BackendProbe(asio::io_context& io, const Config& config, EhloCache& ehlo_cache,
                           std::atomic<bool>& probed)
    : io_(io),
      config_(config),
      ehlo_cache_(ehlo_cache),
      probed_(probed),
      timer_(io),
      deadline_(deadlines_, *this),
      mta_(io.get_executor(), deadline_, "probe:", "mail server"),
      target_(Upstream::target(config.backend_host, config.backend_port)) {
  mta_.set_timeout(kTimeout);
  mta_.set_failure_level(spdlog::level::debug);  // the loop logs each change of state
  deadlines_.start(io.get_executor());
}

void BackendProbe::start() {
  asio::co_spawn(io_, loop(), asio::detached);
}

void BackendProbe::stop() {
  stopped_ = true;
  timer_.cancel();
  deadline_.cancel();
  deadlines_.stop();
  mta_.close();
}

asio::awaitable<void> BackendProbe::loop() {
  bool last = false;
  bool first = true;
  while (!stopped_) {
    const bool up = co_await probe_once();
    mta_up_.store(up, std::memory_order_relaxed);
    probed_.store(true, std::memory_order_release);
    if (first || up != last) {
      if (up) {
        spdlog::info("mail server {}:{} is up", config_.backend_host, config_.backend_port);
      } else {
        spdlog::warn("mail server {}:{} is down (probe failed)", config_.backend_host,
                     config_.backend_port);
      }
    }
    first = false;
    last = up;
    timer_.expires_after(config_.backend_probe_interval);
    error_code ignored;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
}

asio::awaitable<bool> BackendProbe::probe_once() {
  mta_.set_limit(Deadline::Clock::now() + kTimeout);
  const bool proxy_v2 = config_.backend_metadata == BackendMetadata::proxy_v2;
  bool up = co_await mta_.connect(target_, kTimeout);
  if (up && proxy_v2) {
    error_code ec;
    const auto local = mta_.socket().local_endpoint(ec);
    const auto remote = mta_.socket().remote_endpoint(ec);
    const auto header = proxy_protocol::encode_v2({.source = local, .destination = remote});
    if (ec) up = false;
    if (up) up = co_await mta_.write(header);
  }
  smtp::ReplyScan greeting{smtp::ReplyScan::Status::malformed};
  if (up) greeting = co_await mta_.read_reply();
  up = greeting.status == smtp::ReplyScan::Status::complete && greeting.code / 100 == 2;
  if (up && proxy_v2) {
    // An MTA that does not expect the header reads it as SMTP lines (its signature even
    // holds a QUIT) and answers those first: only a 250 to our EHLO shows it was taken.
    mta_.consume(greeting);
    const auto ehlo = co_await mta_.ehlo(config_.hostname);
    const bool taken =
        ehlo.scan.status == smtp::ReplyScan::Status::complete && ehlo.scan.code == 250;
    if (taken) {
      header_refusal_logged_ = false;
      ehlo_cache_.store(std::make_shared<const std::string>(mta_.reply(ehlo.scan)));
    } else if (!header_refusal_logged_) {
      header_refusal_logged_ = true;
      spdlog::error(
          "mail server {}:{} did not take the PROXY v2 header (it answered \"{}\"): let it "
          "expect one from this proxy (Exim hosts_proxy, Postfix "
          "smtpd_upstream_proxy_protocol = haproxy)",
          config_.backend_host, config_.backend_port, log::escape(mta_.buffered(), 120));
    }
    up = taken;
  }
  if (up) {
    co_await mta_.quit(kTimeout);
  } else {
    mta_.close();
  }
  co_return up;
}

}  // namespace stp
