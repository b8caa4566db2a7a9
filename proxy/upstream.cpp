// The next hop's SMTP connection; see upstream.hpp.
#include "proxy/upstream.hpp"

#include "proxy/log.hpp"
#include "tls/tls_context.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace stp {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

Upstream::Upstream(const asio::any_io_executor& executor, Deadline& deadline,
                   std::string_view log_id, std::string_view peer)
    : socket_(executor),
      deadline_(deadline),
      log_id_(log_id),
      peer_(peer),
      input_(kMaxReplyLength) {}

Upstream::Target Upstream::target(std::string host, std::uint16_t port) {
  Target target{.endpoint = std::nullopt, .host = std::move(host), .port = port};
  error_code ec;
  const auto address = asio::ip::make_address(target.host, ec);
  if (!ec) target.endpoint.emplace(address, port);
  return target;
}

void Upstream::arm() {
  deadline_.arm_at(std::min(Clock::now() + timeout_, limit_));
}

void Upstream::fail(std::string_view doing, const error_code& ec) {
  spdlog::log(failure_level_, "{} {} connection lost while {}: {}", log_id_, peer_, doing,
              deadline_.expired() ? std::string("timeout") : ec.message());
  lost_ = true;
}

asio::awaitable<bool> Upstream::connect(const Target& target, Clock::duration timeout) {
  close();
  lost_ = false;
  deadline_.arm_at(std::min(Clock::now() + timeout, limit_));
  error_code ec;
  if (target.endpoint) {
    co_await socket_.async_connect(*target.endpoint, asio::redirect_error(asio::use_awaitable, ec));
  } else {
    tcp::resolver resolver(socket_.get_executor());
    const auto endpoints = co_await resolver.async_resolve(
        target.host, std::to_string(target.port), asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) {
      co_await asio::async_connect(socket_, endpoints,
                                   asio::redirect_error(asio::use_awaitable, ec));
    }
  }
  if (ec) {
    spdlog::log(failure_level_, "{} cannot connect to {} {}:{}: {}", log_id_, peer_, target.host,
                target.port, deadline_.expired() ? std::string("timeout") : ec.message());
    close();
    lost_ = true;
    co_return false;
  }
  error_code ignored;
  socket_.set_option(tcp::no_delay(true), ignored);
  co_return true;
}

asio::awaitable<bool> Upstream::write(std::string_view bytes) {
  if (lost_) co_return false;
  arm();
  error_code ec;
  co_await write_all(bytes, ec);
  if (ec) {
    fail("sending", ec);
    co_return false;
  }
  co_return true;
}

asio::awaitable<smtp::ReplyScan> Upstream::read_reply() {
  constexpr smtp::ReplyScan kFailed{smtp::ReplyScan::Status::malformed};
  // One bound for the whole reply: a peer trickling it byte by byte gains no time.
  const auto reply_limit = std::min(Clock::now() + timeout_, limit_);
  while (true) {
    const auto scan = smtp::scan_reply(input_.view(), kMaxReplyLength);
    if (scan.status == smtp::ReplyScan::Status::complete) co_return scan;
    if (lost_) co_return kFailed;
    // The buffer holds kMaxReplyLength bytes: a reply still unfinished in a full buffer is
    // longer (reading on would get nothing, at once, for ever).
    const bool too_long = scan.status == smtp::ReplyScan::Status::need_more && input_.full();
    if (scan.status == smtp::ReplyScan::Status::malformed || too_long) {
      // A session's MTA breaking the protocol is an error; a probe's only a debug line.
      const auto level = failure_level_ < spdlog::level::warn ? failure_level_ : spdlog::level::err;
      spdlog::log(level, "{} {} reply from {}: \"{}\"", log_id_,
                  too_long ? "overlong" : "malformed", peer_, log::escape(input_.view(), 200));
      lost_ = true;
      co_return kFailed;
    }
    deadline_.arm_at(reply_limit);
    error_code ec;
    const auto n = co_await read_some(ec);
    if (ec) {
      fail("waiting for a reply", ec);
      co_return kFailed;
    }
    input_.commit(n);
  }
}

asio::awaitable<smtp::ReplyScan> Upstream::command(std::string_view line) {
  const bool written = co_await write(line);
  if (!written) co_return smtp::ReplyScan{smtp::ReplyScan::Status::malformed};
  const auto scan = co_await read_reply();
  co_return scan;
}

asio::awaitable<Upstream::Ehlo> Upstream::ehlo(std::string_view name) {
  std::string line;
  line.reserve(name.size() + 7);
  line.append("EHLO ").append(name).append("\r\n");
  const auto scan = co_await command(line);  // (GCC 12: not inside an initializer)
  Ehlo result{scan, {}};
  if (result.scan.status == smtp::ReplyScan::Status::complete && result.scan.code == 250) {
    result.capabilities = smtp::parse_ehlo_capabilities(reply(result.scan));
  }
  co_return result;
}

asio::awaitable<void> Upstream::quit(Clock::duration timeout) {
  if (!lost_ && socket_.is_open()) {
    deadline_.arm_at(std::min(Clock::now() + timeout, limit_));
    error_code ec;
    co_await write_all("QUIT\r\n", ec);
    if (!ec) co_await read_some(ec);
  }
  close();
}

asio::awaitable<bool> Upstream::start_tls(std::shared_ptr<const tls::ClientContext> context,
                                          const tls::ConnectParameters& parameters) {
  if (lost_ || !socket_.is_open()) co_return false;
  tls_ = std::make_unique<tls::TlsStream>(socket_, std::move(context), parameters);
  if (!tls_->native_handle()) {
    spdlog::error("{} cannot start TLS with {}: {}", log_id_, peer_, tls::take_openssl_errors());
    abandon();
    co_return false;
  }
  arm();
  error_code ec;
  co_await tls_->handshake(ec);
  verify_result_ = SSL_get_verify_result(tls_->native_handle());
  if (ec) {
    fail("in the TLS handshake", ec);
    tls_.reset();  // no close_notify after a failed handshake
    co_return false;
  }
  co_return true;
}

asio::awaitable<Upstream::StartTlsResult> Upstream::starttls(
    std::shared_ptr<const tls::ClientContext> context, const tls::ConnectParameters& parameters) {
  const auto scan = co_await command("STARTTLS\r\n");
  if (scan.status != smtp::ReplyScan::Status::complete) {
    co_return StartTlsResult{StartTls::failed, scan};
  }
  if (scan.code != 220) co_return StartTlsResult{StartTls::refused, scan};
  consume(scan);
  if (!input_.empty()) {
    spdlog::warn("{} {} sent more after its 220 to STARTTLS: \"{}\"; connection dropped", log_id_,
                 peer_, log::escape(input_.view(), 200));
    abandon();
    co_return StartTlsResult{StartTls::failed, scan};
  }
  const bool secured = co_await start_tls(std::move(context), parameters);
  co_return StartTlsResult{secured ? StartTls::secured : StartTls::failed, scan};
}

asio::awaitable<std::size_t> Upstream::read_some(error_code& ec) {
  if (tls_) {
    const auto n = co_await tls_->read_some(input_.prepare(), ec, true);  // after a command
    co_return n;
  }
  const auto n = co_await socket_.async_read_some(input_.prepare(),
                                                  asio::redirect_error(asio::use_awaitable, ec));
  co_return n;
}

asio::awaitable<void> Upstream::write_all(std::string_view bytes, error_code& ec) {
  if (tls_) {
    co_await tls_->write(asio::buffer(bytes), ec);
  } else {
    co_await asio::async_write(socket_, asio::buffer(bytes),
                               asio::redirect_error(asio::use_awaitable, ec));
  }
}

bool Upstream::quiet() {
  if (has_input() || (tls_ && SSL_has_pending(tls_->native_handle()))) return false;
  error_code ec;
  const auto waiting = socket_.available(ec);
  return !ec && waiting == 0;
}

void Upstream::close() {
  if (tls_) {
    if (!lost_) tls_->shutdown();
    tls_.reset();
  }
  error_code ignored;
  socket_.close(ignored);
  input_.clear();
  input_.release_if_empty();
}

void Upstream::cancel() {
  error_code ignored;
  socket_.cancel(ignored);
}

void Upstream::abandon() {
  close();
  lost_ = true;
}

}  // namespace stp
