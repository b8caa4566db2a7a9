// The next hop, seen from the proxy as its SMTP client: a connection to an MTA (the one the
// inbound side serves, or later a smarthost), its reply buffer, and the operations on it that
// both directions and the health probe share: connect, write, read one reply, EHLO, STARTTLS
// or TLS from the first byte (the connect role of tls::TlsStream), QUIT.
//
// Every wait is bounded by the owner's Deadline (armed here with the reply timeout, never
// past a limit the owner may set); a failure marks the connection lost, logs why once, and
// is final: later writes and reads fail at once. Trusts the MTA only for replies that are
// size-bounded and syntax-checked (smtp::scan_reply).
#pragma once

#include "proxy/deadline.hpp"
#include "proxy/input_buffer.hpp"
#include "smtp/smtp_parse.hpp"
#include "tls/client_context.hpp"
#include "tls/tls_stream.hpp"

#include <spdlog/common.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace stp {

class Upstream {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t kMaxReplyLength = 16 * 1024;

  // Where to connect: an address, or a name resolved at each connection.
  struct Target {
    std::optional<boost::asio::ip::tcp::endpoint> endpoint;  // when host is an address
    std::string host;
    std::uint16_t port = 0;
  };
  static Target target(std::string host, std::uint16_t port);

  // `log_id` and `peer` start the log lines ("0A1B2C3D4E5F mail server ..."): both must
  // outlive this object.
  Upstream(const boost::asio::any_io_executor& executor, Deadline& deadline,
           std::string_view log_id, std::string_view peer);

  // Each operation below waits at most `timeout` (a reply: all of it, however slowly it
  // comes), and never past `limit`.
  void set_timeout(Clock::duration timeout) { timeout_ = timeout; }
  void set_limit(Clock::time_point limit) { limit_ = limit; }
  // Another start for the log lines (a kept connection serving another session); the same
  // lifetime rule.
  void set_log_id(std::string_view log_id) { log_id_ = log_id; }
  // How loudly a failure is logged (a probe that fails every few seconds: debug).
  void set_failure_level(spdlog::level::level_enum level) { failure_level_ = level; }

  // Connects (bounded by `timeout`); false when it could not, with the reason logged.
  boost::asio::awaitable<bool> connect(const Target& target, Clock::duration timeout);
  boost::asio::awaitable<bool> write(std::string_view bytes);
  // Reads until one whole reply is buffered: its scan, or Status::malformed when the
  // connection failed, timed out or sent something that is not a reply (then lost()).
  boost::asio::awaitable<smtp::ReplyScan> read_reply();
  // The reply read_reply() returned, and dropping it from the buffer.
  std::string_view reply(const smtp::ReplyScan& scan) const {
    return input_.view().substr(0, scan.length);
  }
  void consume(const smtp::ReplyScan& scan) { input_.consume(scan.length); }
  // Everything received and not consumed (for a log line about a bad reply).
  std::string_view buffered() const { return input_.view(); }
  // A command `line` (with its CRLF) and its reply.
  boost::asio::awaitable<smtp::ReplyScan> command(std::string_view line);
  // EHLO `name`: the reply's scan, and what it offers when it is a 250 (still buffered).
  struct Ehlo {
    smtp::ReplyScan scan;
    smtp::MtaCapabilities capabilities;
  };
  boost::asio::awaitable<Ehlo> ehlo(std::string_view name);

  // TLS on the open connection, as its client, from here on: right after connect() for TLS
  // from the first byte (RFC 8314), or after STARTTLS's 220. False when the handshake failed
  // (logged with OpenSSL's reason; lost()). The caller greets again after it (RFC 3207).
  boost::asio::awaitable<bool> start_tls(std::shared_ptr<const tls::ClientContext> context,
                                         const tls::ConnectParameters& parameters);
  // STARTTLS, then the handshake on 220. `refused`: another reply, left buffered for the
  // caller to read (reply(), consume()); the connection goes on in the clear. `failed`: no
  // reply, a failed handshake, or bytes after the 220 (a man in the middle's injection that
  // would otherwise be read as the first replies under TLS): lost().
  enum class StartTls { secured, refused, failed };
  struct StartTlsResult {
    StartTls outcome;
    smtp::ReplyScan scan;  // the reply to STARTTLS, when there was one
  };
  boost::asio::awaitable<StartTlsResult> starttls(std::shared_ptr<const tls::ClientContext> context,
                                                  const tls::ConnectParameters& parameters);
  // The TLS session, when one is up (for its facts); null in the clear.
  const tls::TlsStream* tls() const { return tls_.get(); }
  // OpenSSL's verdict on the server's certificate at the last handshake, failed or not
  // (X509_V_OK when it verified; an X509_V_ERR_* otherwise).
  long tls_verify_result() const { return verify_result_; }

  // QUIT, and its reply or the end of the connection (unread: it only lets the MTA close
  // first), then close. Bounded by `timeout`.
  boost::asio::awaitable<void> quit(Clock::duration timeout);

  // Closes the connection (after close_notify under TLS, so that its session may be
  // resumed); the next connect() opens a fresh one.
  void close();
  // Ends every wait at once (the connection stays open until close()).
  void cancel();
  // Marks the connection unusable (the caller closed it, say, to abandon a message).
  void abandon();

  bool open() const { return socket_.is_open(); }
  bool lost() const { return lost_; }
  bool has_input() const { return !input_.empty(); }
  // Nothing has come since the last reply was read: no byte buffered here or in TLS, none
  // waiting on the socket. A kept connection whose peer spoke while idle is out of step.
  bool quiet();
  // Gives the reply buffer's memory back while nothing is buffered (an idle session).
  void release_buffer() { input_.release_if_empty(); }
  boost::asio::ip::tcp::socket& socket() { return socket_; }

 private:
  void arm();
  void fail(std::string_view doing, const boost::system::error_code& ec);
  // The connection's bytes, through TLS when it is up; called only when a reply is due.
  boost::asio::awaitable<std::size_t> read_some(boost::system::error_code& ec);
  boost::asio::awaitable<void> write_all(std::string_view bytes, boost::system::error_code& ec);

  boost::asio::ip::tcp::socket socket_;
  Deadline& deadline_;
  std::string_view log_id_;
  std::string_view peer_;
  InputBuffer input_;
  std::unique_ptr<tls::TlsStream> tls_;  // only while TLS is up: most hops are plain
  Clock::duration timeout_ = std::chrono::minutes(5);
  Clock::time_point limit_ = Clock::time_point::max();
  spdlog::level::level_enum failure_level_ = spdlog::level::warn;
  bool lost_ = false;
  long verify_result_ = 0;
};

}  // namespace stp
