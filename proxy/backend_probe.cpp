// MTA liveness probe; see backend_probe.hpp.
#include "proxy/backend_probe.hpp"

#include "proxy/log.hpp"
#include "proxy/smtp_parse.hpp"

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
constexpr auto kProbeTimeout = std::chrono::seconds(5);
constexpr std::size_t kMaxGreeting = 4096;
}  // namespace

BackendProbe::BackendProbe(asio::io_context& io, const Config& config)
    : io_(io), config_(config), timer_(io) {}

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
  deadline.expires_after(kProbeTimeout);
  // Everything below races the deadline; whichever finishes first cancels the other.
  auto attempt = [&]() -> asio::awaitable<bool> {
    tcp::resolver resolver(io_);
    const auto endpoints = co_await resolver.async_resolve(
        config_.backend_host, std::to_string(config_.backend_port), asio::use_awaitable);
    co_await asio::async_connect(socket, endpoints, asio::use_awaitable);
    std::string greeting;
    char chunk[512];
    while (true) {
      const auto scan = smtp::scan_reply(greeting, kMaxGreeting);
      if (scan.status == smtp::ReplyScan::Status::malformed) co_return false;
      if (scan.status == smtp::ReplyScan::Status::complete) {
        co_await asio::async_write(socket, asio::buffer("QUIT\r\n", 6), asio::use_awaitable);
        co_return scan.code / 100 == 2;
      }
      const auto n = co_await socket.async_read_some(asio::buffer(chunk), asio::use_awaitable);
      greeting.append(chunk, n);
    }
  };
  try {
    auto result = co_await (attempt() || deadline.async_wait(asio::use_awaitable));
    co_return result.index() == 0 && std::get<0>(result);
  } catch (const std::exception&) {
    co_return false;
  }
}

}  // namespace stp
