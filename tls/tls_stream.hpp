// TLS on a connected TCP socket, driven directly: OpenSSL reads the socket's file descriptor
// itself, and writes its records into a small queue this stream sends with one system call
// per operation; the session waits for readiness through Asio only when OpenSSL asks. So the
// first reply and the TLS 1.3 session ticket before it, and the last reply and the
// close_notify after it, each leave in a single TCP segment. Unlike asio::ssl::stream this keeps no
// buffers of its own while idle (the queue is empty between operations, and OpenSSL's are
// released) and copies received data only once.
//
// Two roles: accept (the proxy is the TLS server, to a client) and connect (the proxy is the
// TLS client, to a relay host or an MTA). They differ only in how the SSL is set up and in
// the end of the handshake: the server holds its TLS 1.3 ticket back for its first reply,
// while the client's last flight is sent at once (the server may be the one to speak next).
//
// Used by one coroutine at a time (a session never reads and writes its peer at once).
// Trusts nothing from the peer; every failure is an error_code whose message() is OpenSSL's
// reason.
#pragma once

#include <openssl/ssl.h>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstddef>
#include <memory>
#include <vector>

namespace stp::tls {

class ClientContext;
class ServerContext;
struct ConnectParameters;

class TlsStream {
 public:
  // Accept role. Keeps `context` alive for the stream's lifetime. native_handle() is null if
  // OpenSSL could not make a session (then every operation fails).
  TlsStream(boost::asio::ip::tcp::socket& socket, std::shared_ptr<const ServerContext> context);
  // Connect role, on a connected socket, under `parameters` (SNI, the names checked, verify
  // or only record, the session to resume: ClientContext::prepare). The same otherwise. End
  // it with write(..., true) or shutdown(): OpenSSL will not resume the session of a
  // connection that ended without close_notify.
  TlsStream(boost::asio::ip::tcp::socket& socket, std::shared_ptr<const ClientContext> context,
            const ConnectParameters& parameters);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  boost::asio::awaitable<void> handshake(boost::system::error_code& ec);
  // With `answer_due` (the caller has just asked the peer something), waits for readiness
  // before it reads: a read tried at once would only find nothing.
  boost::asio::awaitable<std::size_t> read_some(boost::asio::mutable_buffer buffer,
                                                boost::system::error_code& ec,
                                                bool answer_due = false);
  // Sends `buffer` whole (after the session's ticket, the first time); with `close`, followed
  // in the same segment by close_notify: the session's last words.
  boost::asio::awaitable<void> write(boost::asio::const_buffer buffer,
                                     boost::system::error_code& ec, bool close = false);
  // Waits until a read would not block (decrypted bytes pending, or the socket is readable).
  // Sends first what OpenSSL queued on its own since the last write (has_unsent()).
  boost::asio::awaitable<void> wait_readable(boost::system::error_code& ec);
  // Whether wait_readable() would send before it waits: cancelling it then would cut a
  // record short, while cancelling the bare wait loses nothing.
  bool has_unsent() const { return queue_.size() > held_ticket_; }
  // Whether the wait for the peer's next bytes can be a bare readiness wait on the socket, made
  // by the caller instead of wait_readable() (nothing decrypted is pending, nothing queued must
  // go first); if so, it does what wait_readable() does before such a wait.
  bool prepare_bare_wait() noexcept;
  // Sends close_notify (unless sent) and whatever else is queued, if the socket takes it now;
  // never waits for the peer's.
  void shutdown() noexcept;

  SSL* native_handle() const { return ssl_; }

  // Sets up, once, the write side all streams share; false when OpenSSL cannot (then no
  // stream can work, so the caller refuses to start).
  static bool prepare();

 private:
  friend struct RecordQueue;

  // Makes the SSL from `ctx` on the socket, with the record queue as its write side.
  TlsStream(boost::asio::ip::tcp::socket& socket, std::shared_ptr<const void> context,
            SSL_CTX* ctx);
  void drop_ssl() noexcept;

  // Waits for what OpenSSL asked for; returns false (and sets ec) when the call failed.
  boost::asio::awaitable<bool> wait_for(int ssl_result, boost::system::error_code& ec);
  // Sends the queue; false (and ec) when the socket failed.
  boost::asio::awaitable<bool> send_queue(boost::system::error_code& ec);
  // The same before waiting for the peer, unless all it holds is the held-back ticket.
  boost::asio::awaitable<bool> send_unless_only_ticket(boost::system::error_code& ec);
  // Sends what of the queue the socket takes now, without waiting; how much it took.
  std::size_t send_what_it_takes(boost::system::error_code& ec) noexcept;
  // TCP_QUICKACK: the ACK of what the peer sent last leaves now, not at the delayed-ACK timer.
  void acknowledge_now() noexcept;
  // Sends what of the queue the socket takes now (an alert, close_notify) and drops the rest.
  void send_queue_now() noexcept;
  void drop_queue() noexcept;

  boost::asio::ip::tcp::socket& socket_;
  std::shared_ptr<const void> context_;  // the ServerContext or ClientContext ssl_ came from
  SSL* ssl_ = nullptr;
  std::vector<unsigned char> queue_;  // records written by OpenSSL, not yet sent
  std::size_t held_ticket_ = 0;       // accept role: queue_ bytes that are the held ticket
  bool broken_ = false;               // a send was cut short: the byte stream is no longer whole
};

// A plain TCP connection, with the same interface as TlsStream, so the session's protocol
// loop is written once for both.
class PlainStream {
 public:
  explicit PlainStream(boost::asio::ip::tcp::socket& socket) : socket_(socket) {}

  boost::asio::awaitable<std::size_t> read_some(boost::asio::mutable_buffer buffer,
                                                boost::system::error_code& ec);
  // `close` changes nothing here: the session closes the socket after it.
  boost::asio::awaitable<void> write(boost::asio::const_buffer buffer,
                                     boost::system::error_code& ec, bool close = false);
  boost::asio::awaitable<void> wait_readable(boost::system::error_code& ec);
  bool has_unsent() const { return false; }
  bool prepare_bare_wait() noexcept { return true; }

 private:
  boost::asio::ip::tcp::socket& socket_;
};

}  // namespace stp::tls
