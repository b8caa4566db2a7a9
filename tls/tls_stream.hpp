// TLS on a connected TCP socket, driven directly: OpenSSL reads and writes the socket's file
// descriptor itself and the session waits for readiness through Asio only when OpenSSL asks.
// Unlike asio::ssl::stream this keeps no buffers of its own (OpenSSL's are released when a
// session is idle) and copies nothing twice.
//
// Used by one coroutine at a time (a session never reads and writes its client at once).
// Trusts nothing from the peer; every failure is an error_code whose message() is OpenSSL's
// reason.
#pragma once

#include <openssl/ssl.h>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstddef>
#include <memory>

namespace stp::tls {

class ServerContext;

class TlsStream {
 public:
  // Keeps `context` alive for the stream's lifetime. native_handle() is null if OpenSSL
  // could not make a session (then every operation fails).
  TlsStream(boost::asio::ip::tcp::socket& socket, std::shared_ptr<const ServerContext> context);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  boost::asio::awaitable<void> handshake(boost::system::error_code& ec);
  boost::asio::awaitable<std::size_t> read_some(boost::asio::mutable_buffer buffer,
                                                boost::system::error_code& ec);
  boost::asio::awaitable<void> write(boost::asio::const_buffer buffer,
                                     boost::system::error_code& ec);
  // Waits until a read would not block (decrypted bytes pending, or the socket is readable).
  boost::asio::awaitable<void> wait_readable(boost::system::error_code& ec);
  // Sends close_notify if the socket takes it now; never waits for the peer's.
  void shutdown() noexcept;

  SSL* native_handle() const { return ssl_; }

 private:
  // Waits for what OpenSSL asked for; returns false (and sets ec) when the call failed.
  boost::asio::awaitable<bool> wait_for(int ssl_result, boost::system::error_code& ec);

  boost::asio::ip::tcp::socket& socket_;
  std::shared_ptr<const ServerContext> context_;
  SSL* ssl_ = nullptr;
};

// The client side of a plain TCP connection, with the same interface as TlsStream, so the
// session's protocol loop is written once for both.
class PlainStream {
 public:
  explicit PlainStream(boost::asio::ip::tcp::socket& socket) : socket_(socket) {}

  boost::asio::awaitable<std::size_t> read_some(boost::asio::mutable_buffer buffer,
                                                boost::system::error_code& ec);
  boost::asio::awaitable<void> write(boost::asio::const_buffer buffer,
                                     boost::system::error_code& ec);
  boost::asio::awaitable<void> wait_readable(boost::system::error_code& ec);

 private:
  boost::asio::ip::tcp::socket& socket_;
};

}  // namespace stp::tls
