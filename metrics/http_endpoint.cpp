// Metrics and health HTTP endpoint; see http_endpoint.hpp.
#include "metrics/http_endpoint.hpp"

#include <stdexcept>

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

namespace stp::metrics {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using boost::system::error_code;

namespace {
constexpr std::size_t kMaxRequestBytes = 8 * 1024;
constexpr auto kRequestTimeout = std::chrono::seconds(10);
}  // namespace

HttpEndpoint::HttpEndpoint(asio::io_context& io, const tcp::endpoint& endpoint, Metrics& metrics,
                           std::function<bool()> ready)
    : acceptor_(io), metrics_(metrics), ready_(std::move(ready)) {
  error_code ec;
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::invalid_argument("--metrics-listen " + endpoint_label(endpoint) + ": " +
                                ec.message());
  }
}

void HttpEndpoint::start() {
  asio::co_spawn(acceptor_.get_executor(), accept_loop(), asio::detached);
}

void HttpEndpoint::stop() {
  error_code ignored;
  acceptor_.close(ignored);
}

asio::awaitable<void> HttpEndpoint::accept_loop() {
  while (acceptor_.is_open()) {
    error_code ec;
    auto socket = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) continue;
    if (connections_ >= kMaxConnections) {
      // Make room by closing the connection that has waited longest without a request: idle
      // connections must never lock out Prometheus or a liveness probe.
      if (awaiting_request_.empty()) continue;  // all busy answering: closing refuses this one
      const auto oldest = awaiting_request_.front();
      awaiting_request_.pop_front();
      *oldest.evicted = true;
      error_code ignored;
      oldest.socket->close(ignored);
    }
    ++connections_;
    asio::co_spawn(acceptor_.get_executor(), serve(std::move(socket)),
                   [this](std::exception_ptr) { --connections_; });
  }
}

asio::awaitable<void> HttpEndpoint::serve(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer(kMaxRequestBytes);
  http::request_parser<http::empty_body> parser;
  parser.header_limit(kMaxRequestBytes);
  stream.expires_after(kRequestTimeout);
  bool evicted = false;  // set by the acceptor, which then took us off the list
  const auto waiting =
      awaiting_request_.insert(awaiting_request_.end(), {&stream.socket(), &evicted});
  error_code ec;
  co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  if (!evicted) awaiting_request_.erase(waiting);
  if (ec) co_return;
  const auto& request = parser.get();

  http::response<http::string_body> response;
  response.version(request.version());
  response.keep_alive(false);
  response.set(http::field::server, "smtp-tls-proxy");
  const auto target = request.target();
  if (request.method() != http::verb::get && request.method() != http::verb::head) {
    response.result(http::status::method_not_allowed);
    response.body() = "method not allowed\n";
  } else if (target == "/metrics") {
    response.result(http::status::ok);
    response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.body() = metrics_.serialize();
  } else if (target == "/healthz") {
    response.result(http::status::ok);
    response.body() = "ok\n";
  } else if (target == "/readyz") {
    const bool ready = ready_();
    response.result(ready ? http::status::ok : http::status::service_unavailable);
    response.body() = ready ? "ready\n" : "not ready\n";
  } else {
    response.result(http::status::not_found);
    response.body() = "not found\n";
  }
  response.prepare_payload();
  if (request.method() == http::verb::head) {
    http::response_serializer<http::string_body> serializer(response);
    co_await http::async_write_header(stream, serializer,
                                      asio::redirect_error(asio::use_awaitable, ec));
  } else {
    co_await http::async_write(stream, response, asio::redirect_error(asio::use_awaitable, ec));
  }
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
}

}  // namespace stp::metrics
