// MTA liveness probe; see backend_probe.hpp.
#include "proxy/backend_probe.hpp"

#include "proxy/log.hpp"
#include "smtp/proxy_protocol.hpp"
#include "smtp/smtp_parse.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace stp {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using namespace asio::experimental::awaitable_operators;

namespace {
constexpr std::size_t kMaxGreeting = 4096;
}  // namespace

BackendProbe::BackendProbe(asio::io_context& io, const Config& config, EhloCache& ehlo_cache,
                           std::atomic<bool>& probed)
    : io_(io), config_(config), ehlo_cache_(ehlo_cache), probed_(probed), timer_(io) {}

void BackendProbe::start() {
  asio::co_spawn(io_, loop(), asio::detached);
}

void BackendProbe::stop() {
  stopped_ = true;
  timer_.cancel();
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
  tcp::socket socket(io_);
  asio::steady_timer deadline(io_);
  deadline.expires_after(kTimeout);
  // Everything below races the deadline; whichever finishes first cancels the other.
  const bool proxy_v2 = config_.backend_metadata == BackendMetadata::proxy_v2;
  auto read_reply = [&](std::string& buffer) -> asio::awaitable<smtp::ReplyScan> {
    char chunk[512];
    while (true) {
      const auto scan = smtp::scan_reply(buffer, kMaxGreeting);
      if (scan.status != smtp::ReplyScan::Status::need_more) co_return scan;
      const auto n = co_await socket.async_read_some(asio::buffer(chunk), asio::use_awaitable);
      buffer.append(chunk, n);
    }
  };
  auto attempt = [&]() -> asio::awaitable<bool> {
    tcp::resolver resolver(io_);
    const auto endpoints = co_await resolver.async_resolve(
        config_.backend_host, std::to_string(config_.backend_port), asio::use_awaitable);
    co_await asio::async_connect(socket, endpoints, asio::use_awaitable);
    if (proxy_v2) {
      const auto header = proxy_protocol::encode_v2(
          {.source = socket.local_endpoint(), .destination = socket.remote_endpoint()});
      co_await asio::async_write(socket, asio::buffer(header), asio::use_awaitable);
    }
    std::string buffer;
    const auto greeting = co_await read_reply(buffer);
    if (greeting.status != smtp::ReplyScan::Status::complete || greeting.code / 100 != 2) {
      co_return false;
    }
    if (proxy_v2) {
      // An MTA that does not expect the header reads it as SMTP lines (its signature even
      // holds a QUIT) and answers those first: only a 250 to our EHLO shows it was taken.
      buffer.erase(0, greeting.length);
      const std::string ehlo = "EHLO " + config_.hostname + "\r\n";
      co_await asio::async_write(socket, asio::buffer(ehlo), asio::use_awaitable);
      const auto reply = co_await read_reply(buffer);
      if (reply.status != smtp::ReplyScan::Status::complete || reply.code != 250) {
        if (!header_refusal_logged_) {
          header_refusal_logged_ = true;
          spdlog::error(
              "mail server {}:{} did not take the PROXY v2 header (it answered \"{}\"): let it "
              "expect one from this proxy (Exim hosts_proxy, Postfix "
              "smtpd_upstream_proxy_protocol = haproxy)",
              config_.backend_host, config_.backend_port, log::escape(buffer, 120));
        }
        co_return false;
      }
      header_refusal_logged_ = false;
      ehlo_cache_.store(std::make_shared<const std::string>(buffer.substr(0, reply.length)));
    }
    co_await asio::async_write(socket, asio::buffer("QUIT\r\n", 6), asio::use_awaitable);
    co_return true;
  };
  // A refused or reset connection is an answer: it must not wait for the deadline (the race
  // below waits for the first operation that *succeeds*, so failures are results here).
  auto answer = [&]() -> asio::awaitable<bool> {
    try {
      co_return co_await attempt();
    } catch (const boost::system::system_error&) {
      co_return false;
    }
  };
  try {
    auto result = co_await (answer() || deadline.async_wait(asio::use_awaitable));
    co_return result.index() == 0 && std::get<0>(result);
  } catch (const std::exception&) {
    co_return false;
  }
}

}  // namespace stp
