// A trusted load balancer's PROXY v1 or v2 header, read before anything else on the
// connection: exactly the header's bytes, never one of what follows (which may be a TLS
// ClientHello that OpenSSL reads from the socket itself).
#include "inbound/session.hpp"

#include "proxy/log.hpp"
#include "smtp/proxy_protocol.hpp"

#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>

namespace stp::inbound {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {
// PROXY v1 is at most 107 bytes with its CRLF; v2 is 16 bytes and what its length says (we
// accept no more TLVs than a load balancer sends: addresses and a few small TLVs).
constexpr std::size_t kProxyV1MaxLength = 107;
constexpr std::size_t kProxyV2FixedLength = 16;
constexpr std::size_t kProxyV2MaxLength = 16 + 1024;
}  // namespace

asio::awaitable<bool> Session::read_proxy_header() {
  deadline_.arm(config_.tls_handshake_timeout);
  std::string header;
  error_code ec;
  auto read_exactly = [&](std::size_t n) -> asio::awaitable<bool> {
    const auto old_size = header.size();
    header.resize(old_size + n);
    co_await asio::async_read(client_, asio::buffer(header.data() + old_size, n),
                              asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  };
  auto fail = [&](std::string_view why) {
    services_.metrics.rejected(metrics::Rejection::proxy_header).Increment();
    end_reason_ = "bad PROXY header";
    spdlog::warn("{} load balancer {}: {}; closing", id_, client_label_,
                 deadline_.expired() ? std::string("timeout waiting for the PROXY header")
                                     : std::string(why));
    return false;
  };
  // "PROXY " (v1) or the first 6 bytes of the v2 signature.
  if (!co_await read_exactly(6)) co_return fail(ec.message());
  if (header == "PROXY ") {
    // The line ends at CRLF: peek, then take exactly up to it.
    std::array<char, kProxyV1MaxLength> peeked{};
    while (true) {
      const auto room = kProxyV1MaxLength - header.size();
      if (room == 0) co_return fail("PROXY v1 line too long");
      const auto n = co_await client_.async_receive(asio::buffer(peeked.data(), room),
                                                    tcp::socket::message_peek,
                                                    asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return fail(ec.message());
      if (n == 0) co_return fail("connection closed");
      const std::string_view fresh(peeked.data(), n);
      std::size_t take = n;
      if (header.back() == '\r' && fresh.front() == '\n') {
        take = 1;
      } else if (const auto crlf = fresh.find("\r\n"); crlf != std::string_view::npos) {
        take = crlf + 2;
      }
      if (!co_await read_exactly(take)) co_return fail(ec.message());
      if (header.ends_with("\r\n")) break;
    }
  } else {
    if (!co_await read_exactly(kProxyV2FixedLength - header.size())) co_return fail(ec.message());
    const auto length = (static_cast<std::size_t>(static_cast<unsigned char>(header[14])) << 8) |
                        static_cast<unsigned char>(header[15]);
    if (kProxyV2FixedLength + length > kProxyV2MaxLength) {
      co_return fail("PROXY v2 header too long");
    }
    if (length > 0 && !co_await read_exactly(length)) co_return fail(ec.message());
  }
  const auto decoded = proxy_protocol::decode(header);
  if (decoded.status != proxy_protocol::Decoded::Status::complete ||
      decoded.length != header.size()) {
    co_return fail("malformed PROXY header \"" + log::escape(header, 120) + "\"");
  }
  if (decoded.local) {
    // A health check (v2 LOCAL, v1 UNKNOWN): no client to speak for, and the balancer's own
    // address must never reach the MTA as one (it is often on a network the MTA trusts).
    health_check_ = true;
    spdlog::debug("{} load balancer {} sent a header without a client (a health check)", id_,
                  client_label_);
  } else {
    const auto balancer = client_label_;
    learn_client(decoded.source, decoded.destination);
    spdlog::debug("{} load balancer {} relays {}", id_, balancer, client_label_);
  }
  co_return true;
}

}  // namespace stp::inbound
