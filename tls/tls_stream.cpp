// TLS and plain client streams; see tls_stream.hpp.
#include "tls/tls_stream.hpp"

#include "tls/tls_context.hpp"

#include <openssl/err.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <cerrno>

namespace stp::tls {
namespace asio = boost::asio;
using boost::system::error_code;

namespace {

error_code openssl_error(unsigned long e) {
  if (e == 0) return asio::error::connection_reset;
  return {static_cast<int>(e), asio::error::get_ssl_category()};
}

}  // namespace

TlsStream::TlsStream(asio::ip::tcp::socket& socket, std::shared_ptr<const ServerContext> context)
    : socket_(socket), context_(std::move(context)) {
  error_code ec;
  socket_.non_blocking(true, ec);
  if (ec) return;
  ssl_ = SSL_new(context_->native_handle());
  if (ssl_ && SSL_set_fd(ssl_, static_cast<int>(socket_.native_handle())) != 1) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (ssl_) SSL_set_accept_state(ssl_);
}

TlsStream::~TlsStream() {
  SSL_free(ssl_);
}

asio::awaitable<bool> TlsStream::wait_for(int ssl_result, error_code& ec) {
  const int saved_errno = errno;
  const int reason = SSL_get_error(ssl_, ssl_result);
  switch (reason) {
    case SSL_ERROR_WANT_READ:
      co_await socket_.async_wait(asio::socket_base::wait_read,
                                  asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    case SSL_ERROR_WANT_WRITE:
      co_await socket_.async_wait(asio::socket_base::wait_write,
                                  asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    case SSL_ERROR_ZERO_RETURN:
      ec = asio::error::eof;
      co_return false;
    case SSL_ERROR_SYSCALL: {
      const unsigned long e = ERR_get_error();
      if (e != 0) {
        ec = openssl_error(e);
      } else if (saved_errno != 0) {
        ec = error_code(saved_errno, boost::system::system_category());
      } else {
        ec = asio::error::eof;
      }
      co_return false;
    }
    default:
      ec = openssl_error(ERR_get_error());
      ERR_clear_error();
      co_return false;
  }
}

asio::awaitable<void> TlsStream::handshake(error_code& ec) {
  if (!ssl_) {
    ec = asio::error::no_memory;
    co_return;
  }
  while (true) {
    ERR_clear_error();
    errno = 0;
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) {
      ec = {};
      co_return;
    }
    if (!co_await wait_for(r, ec)) co_return;
  }
}

asio::awaitable<std::size_t> TlsStream::read_some(asio::mutable_buffer buffer, error_code& ec) {
  if (!ssl_) {
    ec = asio::error::no_memory;
    co_return 0;
  }
  while (true) {
    ERR_clear_error();
    errno = 0;
    std::size_t n = 0;
    const int r = SSL_read_ex(ssl_, buffer.data(), buffer.size(), &n);
    if (r == 1) {
      ec = {};
      co_return n;
    }
    if (!co_await wait_for(r, ec)) co_return 0;
  }
}

asio::awaitable<void> TlsStream::write(asio::const_buffer buffer, error_code& ec) {
  if (!ssl_) {
    ec = asio::error::no_memory;
    co_return;
  }
  const auto* data = static_cast<const char*>(buffer.data());
  std::size_t left = buffer.size();
  ec = {};
  while (left > 0) {
    ERR_clear_error();
    errno = 0;
    std::size_t n = 0;
    const int r = SSL_write_ex(ssl_, data, left, &n);
    if (r == 1) {
      data += n;
      left -= n;
      continue;
    }
    if (!co_await wait_for(r, ec)) co_return;
  }
}

asio::awaitable<void> TlsStream::wait_readable(error_code& ec) {
  ec = {};
  if (ssl_ && SSL_has_pending(ssl_)) co_return;
  co_await socket_.async_wait(asio::socket_base::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
}

void TlsStream::shutdown() noexcept {
  if (!ssl_) return;
  ERR_clear_error();
  SSL_shutdown(ssl_);  // one attempt; a peer that does not read it loses nothing
  ERR_clear_error();
}

asio::awaitable<std::size_t> PlainStream::read_some(asio::mutable_buffer buffer, error_code& ec) {
  co_return co_await socket_.async_read_some(buffer, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> PlainStream::write(asio::const_buffer buffer, error_code& ec) {
  co_await asio::async_write(socket_, buffer, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> PlainStream::wait_readable(error_code& ec) {
  co_await socket_.async_wait(asio::socket_base::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
}

}  // namespace stp::tls
