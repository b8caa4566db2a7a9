// TLS and plain client streams; see tls_stream.hpp.
#include "tls/tls_stream.hpp"

#include "tls/client_context.hpp"
#include "tls/tls_context.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

namespace stp::tls {
namespace asio = boost::asio;
using boost::system::error_code;

namespace {

error_code openssl_error(unsigned long e) {
  if (e == 0) return asio::error::connection_reset;
  return {static_cast<int>(e), asio::error::get_ssl_category()};
}

// Plaintext handed to one SSL_write: one full record.
constexpr std::size_t kRecordPlaintext = 16384;
// A write sends the queue whenever it reaches this (two records), so it stays near it.
constexpr std::size_t kQueueSendAt = 2 * (kRecordPlaintext + 256);
// Beyond this the queue takes nothing more and the operation fails: only a peer that makes
// OpenSSL write without reading (it cannot, between the flushes above) would get here.
constexpr std::size_t kQueueHardLimit = 256 * 1024;
// What it starts with: room for a ticket and a reply (small enough for malloc's per-thread
// cache, as it is taken and given back once per reply); a handshake flight grows it.
constexpr std::size_t kQueueStart = 512;

}  // namespace

// OpenSSL's write side: a BIO that appends every record to the stream's queue. Flushing is a
// no-op for OpenSSL (the stream sends the queue when the operation ends or must wait).
struct RecordQueue {
  // Takes every record (an alert or close_notify is never left behind), up to the hard
  // limit; a failure here (no retry flag) fails the TLS operation. Never throws into OpenSSL.
  static int write(BIO* bio, const char* data, std::size_t size, std::size_t* written) noexcept {
    BIO_clear_retry_flags(bio);
    *written = 0;
    auto& queue = static_cast<TlsStream*>(BIO_get_data(bio))->queue_;
    if (queue.size() + size > kQueueHardLimit) return 0;
    try {
      if (queue.empty()) queue.reserve(std::max(size, kQueueStart));  // one allocation, usually
      const auto* bytes = reinterpret_cast<const unsigned char*>(data);
      queue.insert(queue.end(), bytes, bytes + size);
    } catch (...) {  // out of memory
      return 0;
    }
    *written = size;
    return 1;
  }
  static long control(BIO* bio, int command, long, void*) {
    switch (command) {
      case BIO_CTRL_FLUSH:
        return 1;
      case BIO_CTRL_WPENDING:
        return static_cast<long>(static_cast<TlsStream*>(BIO_get_data(bio))->queue_.size());
      default:
        return 0;
    }
  }
  static int create(BIO* bio) {
    BIO_set_init(bio, 1);
    return 1;
  }
  static const BIO_METHOD* method() {
    static BIO_METHOD* const m = [] {
      const int index = BIO_get_new_index();
      BIO_METHOD* made =
          index == -1 ? nullptr
                      : BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "smtp-tls-proxy record queue");
      if (made &&
          (BIO_meth_set_write_ex(made, &write) != 1 || BIO_meth_set_ctrl(made, &control) != 1 ||
           BIO_meth_set_create(made, &create) != 1)) {
        BIO_meth_free(made);
        made = nullptr;
      }
      return made;
    }();
    return m;
  }
};

TlsStream::TlsStream(asio::ip::tcp::socket& socket, std::shared_ptr<const void> context,
                     SSL_CTX* ctx)
    : socket_(socket), context_(std::move(context)) {
  error_code ec;
  socket_.non_blocking(true, ec);
  if (ec) return;
  const BIO_METHOD* queue_method = RecordQueue::method();
  ssl_ = queue_method ? SSL_new(ctx) : nullptr;
  BIO* queue = ssl_ ? BIO_new(queue_method) : nullptr;
  if (queue) BIO_set_data(queue, this);
  if (ssl_ && (!queue || SSL_set_rfd(ssl_, static_cast<int>(socket_.native_handle())) != 1)) {
    BIO_free(queue);
    drop_ssl();
    return;
  }
  if (ssl_) SSL_set0_wbio(ssl_, queue);  // the SSL owns it from here
}

TlsStream::TlsStream(asio::ip::tcp::socket& socket, std::shared_ptr<const ServerContext> context)
    : TlsStream(socket, context, context->native_handle()) {
  if (ssl_) SSL_set_accept_state(ssl_);
}

TlsStream::TlsStream(asio::ip::tcp::socket& socket, std::shared_ptr<const ClientContext> context,
                     const ConnectParameters& parameters)
    : TlsStream(socket, context, context->native_handle()) {
  if (!ssl_) return;
  if (!context->prepare(ssl_, parameters)) {
    drop_ssl();
    return;
  }
  SSL_set_connect_state(ssl_);
}

void TlsStream::drop_ssl() noexcept {
  SSL_free(ssl_);
  ssl_ = nullptr;
}

bool TlsStream::prepare() {
  return RecordQueue::method() != nullptr;
}

TlsStream::~TlsStream() {
  SSL_free(ssl_);
}

asio::awaitable<bool> TlsStream::wait_for(int ssl_result, error_code& ec) {
  const int saved_errno = errno;
  const int reason = SSL_get_error(ssl_, ssl_result);
  switch (reason) {
    case SSL_ERROR_WANT_READ: {
      // What OpenSSL wrote goes first (a handshake flight, an alert the peer waits for).
      // (The result is named: GCC 12 mis-resumes a co_await inside a condition here.)
      const bool sent = co_await send_unless_only_ticket(ec);
      if (!sent) co_return false;
      co_await socket_.async_wait(asio::socket_base::wait_read,
                                  asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    }
    case SSL_ERROR_WANT_WRITE: {
      // (The queue never asks OpenSSL to retry; a write side it cannot see would.)
      const bool sent = co_await send_queue(ec);
      if (!sent) co_return false;
      co_await socket_.async_wait(asio::socket_base::wait_write,
                                  asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    }
    case SSL_ERROR_ZERO_RETURN:
      send_queue_now();
      ec = asio::error::eof;
      co_return false;
    case SSL_ERROR_SYSCALL: {
      send_queue_now();
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
      send_queue_now();  // the alert that says why
      ec = openssl_error(ERR_get_error());
      ERR_clear_error();
      co_return false;
  }
}

asio::awaitable<bool> TlsStream::send_queue(error_code& ec) {
  if (broken_) {
    ec = asio::error::broken_pipe;
    co_return false;
  }
  if (queue_.empty()) co_return true;
  // Most often the socket takes it all at once: one send(), no Asio operation to set up.
  const std::size_t sent = send_what_it_takes(ec);
  if (!ec && sent < queue_.size()) {
    co_await asio::async_write(socket_, asio::buffer(queue_.data() + sent, queue_.size() - sent),
                               asio::redirect_error(asio::use_awaitable, ec));
  }
  // Cut short (an error, the session's timer): a record may have gone out in part, and
  // nothing after it could be read, so nothing more is ever sent.
  if (ec) broken_ = true;
  drop_queue();
  co_return !ec;
}

asio::awaitable<bool> TlsStream::send_unless_only_ticket(error_code& ec) {
  if (queue_.size() == held_ticket_) {
    // Sent at once, the ticket would have carried the ACK of the client's Finished. Held, it
    // leaves that ACK to the delayed-ACK timer, and a client that keeps Nagle on (Python's
    // smtplib, OpenSSL's s_client) holds its first command behind it for 40 ms: ACK now.
    if (held_ticket_ > 0) acknowledge_now();
    co_return true;
  }
  const bool sent = co_await send_queue(ec);
  co_return sent;
}

void TlsStream::acknowledge_now() noexcept {
#ifdef TCP_QUICKACK  // Linux
  const int on = 1;  // sends an ACK that is due now, and leaves delayed-ACK mode for a while
  ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
#endif
}

void TlsStream::send_queue_now() noexcept {
  if (queue_.empty() || broken_) {
    drop_queue();
    return;
  }
  error_code ec;
  if (send_what_it_takes(ec) < queue_.size() || ec) broken_ = true;
  drop_queue();
}

std::size_t TlsStream::send_what_it_takes(error_code& ec) noexcept {
  const std::size_t sent = socket_.send(asio::buffer(queue_), 0, ec);  // non-blocking socket
  if (ec == asio::error::would_block) ec = {};
  return sent;
}

void TlsStream::drop_queue() noexcept {
  std::vector<unsigned char>().swap(queue_);  // an idle session holds no buffer
  held_ticket_ = 0;
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
      if (SSL_is_server(ssl_) && SSL_version(ssl_) == TLS1_3_VERSION) {
        // What is queued now is the session ticket, written after the client's Finished: the
        // client needs it for no step of its own, so it waits for the first reply.
        held_ticket_ = queue_.size();
        queue_.shrink_to_fit();  // held while the client's first command is awaited
      } else {
        // TLS 1.2: the server's last flight, which the client waits for. Connect role: the
        // client's Finished (TLS 1.3, or a resumed TLS 1.2 session), which the server waits
        // for before it says anything (the greeting of implicit TLS).
        const bool sent = co_await send_queue(ec);
        if (!sent) co_return;
      }
      ec = {};
      co_return;
    }
    if (!co_await wait_for(r, ec)) co_return;
  }
}

asio::awaitable<std::size_t> TlsStream::read_some(asio::mutable_buffer buffer, error_code& ec,
                                                  bool answer_due) {
  if (!ssl_) {
    ec = asio::error::no_memory;
    co_return 0;
  }
  if (answer_due) {
    co_await wait_readable(ec);
    if (ec) co_return 0;
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

asio::awaitable<void> TlsStream::write(asio::const_buffer buffer, error_code& ec, bool close) {
  if (!ssl_ || broken_) {
    ec = ssl_ ? asio::error::broken_pipe : asio::error::no_memory;
    co_return;
  }
  const auto* data = static_cast<const char*>(buffer.data());
  std::size_t left = buffer.size();
  ec = {};
  while (left > 0) {
    ERR_clear_error();
    errno = 0;
    std::size_t n = 0;
    const int r = SSL_write_ex(ssl_, data, std::min(left, kRecordPlaintext), &n);
    if (r != 1) {
      if (!co_await wait_for(r, ec)) co_return;
      continue;
    }
    data += n;
    left -= n;
    if (queue_.size() >= kQueueSendAt) {  // a long reply: send as it goes
      const bool sent = co_await send_queue(ec);
      if (!sent) co_return;
    }
  }
  if (close) {
    ERR_clear_error();
    SSL_shutdown(ssl_);  // queues close_notify; the peer's is never waited for
    ERR_clear_error();
  }
  co_await send_queue(ec);
}

asio::awaitable<void> TlsStream::wait_readable(error_code& ec) {
  ec = {};
  if (ssl_ && SSL_has_pending(ssl_)) co_return;
  const bool sent = co_await send_unless_only_ticket(ec);
  if (!sent) co_return;
  co_await socket_.async_wait(asio::socket_base::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
}

bool TlsStream::prepare_bare_wait() noexcept {
  if (!ssl_ || SSL_has_pending(ssl_) || has_unsent()) return false;
  if (held_ticket_ > 0) acknowledge_now();  // as send_unless_only_ticket() does
  return true;
}

void TlsStream::shutdown() noexcept {
  if (!ssl_ || broken_) return;
  if ((SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) == 0) {
    ERR_clear_error();
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  send_queue_now();  // one attempt; a peer that does not read it loses nothing
}

asio::awaitable<std::size_t> PlainStream::read_some(asio::mutable_buffer buffer, error_code& ec) {
  co_return co_await socket_.async_read_some(buffer, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> PlainStream::write(asio::const_buffer buffer, error_code& ec, bool) {
  co_await asio::async_write(socket_, buffer, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> PlainStream::wait_readable(error_code& ec) {
  co_await socket_.async_wait(asio::socket_base::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
}

}  // namespace stp::tls
