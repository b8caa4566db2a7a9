// An inbound session's side of the client, written once for both stream types: the protocol
// loop over groups of pipelined commands, reads (and parking between commands), replies, and
// the relay of message content to the MTA.
#include "inbound/session.hpp"

#include "proxy/log.hpp"
#include "proxy/relay.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace stp::inbound {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {
constexpr auto kFinalWriteTimeout = std::chrono::seconds(10);

}  // namespace

template <class Stream>
struct Session::ContentSource {
  InputBuffer& input() { return session.client_in_; }
  asio::awaitable<bool> read_more(Clock::time_point deadline) {
    const Read read = co_await session.read_client(stream, false, deadline);
    co_return read == Read::ok;
  }
  Session& session;
  Stream& stream;
};

template <class Stream>
asio::awaitable<Session::Outcome> Session::serve(Stream& client) {
  while (true) {
    if (should_stop_before_command()) {
      end_reason_ = "shutdown";
      co_await say(client, services_.replies.shutdown);
      co_return Outcome::close;
    }
    if (errors_ >= config_.max_errors) {
      violation(metrics::Violation::too_many_errors);
      spdlog::info("{} {} reached {} errors (--max-errors); closing", id_, client_label_, errors_);
      end_reason_ = "too many errors";
      co_await say(client, services_.replies.too_many_errors);
      co_return Outcome::close;
    }
    GroupEnd end = GroupEnd::none;
    const bool taken = co_await take_group(client, end);  // (GCC 12: no co_await in ?:)
    if (!taken) co_return waiting_for_command_ ? Outcome::park : Outcome::close;

    if (end == GroupEnd::bdat && !co_await relay_bdat_chunk(client)) co_return Outcome::close;
    if (!co_await flush_group(client)) co_return Outcome::close;
    if (std::exchange(mta_abandon_due_, false)) {
      detach_backend();
      spdlog::info("{} BDAT message of {} abandoned: mail server connection closed", id_,
                   client_label_);
    }
    if (end == GroupEnd::attach && !attached()) {
      const bool attached_now = co_await attach_backend(client, false);  // (GCC 12: not in if)
      if (!attached_now) co_return Outcome::close;
    }
    switch (end) {
      case GroupEnd::data:
        if (transaction_ == Transaction::data && !co_await relay_data(client)) {
          co_return Outcome::close;
        }
        break;
      case GroupEnd::start_tls:
        // Whatever the client sent after STARTTLS was sent in the clear: never execute it.
        if (!client_in_.empty()) {
          violation(metrics::Violation::pipelined_after_starttls);
          spdlog::warn("{} {} pipelined {} bytes after STARTTLS; discarded", id_, client_label_,
                       client_in_.size());
        }
        client_in_.clear();
        framer_.reset();
        transaction_ = Transaction::none;
        services_.metrics.starttls(metrics::StartTls::used).Increment();
        co_return Outcome::start_tls;
      case GroupEnd::quit:
      case GroupEnd::close:
        co_return Outcome::close;
      default:
        break;
    }
  }
}

// Reads up to a whole command, then takes every command that is already here, up to the
// group's bound. False when no command came: the session ends, or parks if
// waiting_for_command_ is still set.
template <class Stream>
asio::awaitable<bool> Session::take_group(Stream& client, GroupEnd& end) {
  using Status = smtp::CommandFramer::Status;
  auto frame = framer_.next(client_in_.view());
  while (frame.status == Status::need_more) {
    client_in_.consume(frame.consumed);
    const Read read = co_await read_client(client, true);
    if (read == Read::park) co_return false;
    waiting_for_command_ = false;
    if (read == Read::ended) co_return false;
    frame = framer_.next(client_in_.view());
  }
  if (!attached() && config_.backend_metadata == BackendMetadata::proxy_v2 &&
      !services_.runtime.mta_probed.load(std::memory_order_acquire)) {
    co_await wait_for_first_probe();
  }
  if (std::exchange(mta_reset_due_, false)) reset_mta();
  std::size_t taken = 0;
  unsigned refusals = 0;  // the group's own, counted as errors when they are sent
  while (true) {
    const auto replies_before = pending_.size();
    end = frame.status == Status::line_too_long ? on_line_too_long() : on_line(frame.line);
    if (end == GroupEnd::attach) break;  // the line stays, to be read again
    client_in_.consume(frame.consumed);
    if (pending_.size() > replies_before && pending_.back().kind == PendingReply::Kind::local &&
        !pending_.back().local.empty() && pending_.back().local[0] >= '4') {
      ++refusals;  // as add_reply() will count it
    }
    // --max-pipelined-commands: the rest waits, unread past the buffer, until these are
    // answered. --max-errors ends the group too: serve() closes once it is answered.
    if (end != GroupEnd::none || ++taken >= config_.max_pipelined_commands ||
        errors_ + refusals >= config_.max_errors) {
      break;
    }
    frame = framer_.next(client_in_.view());
    if (frame.status == Status::need_more) {
      client_in_.consume(frame.consumed);
      break;
    }
  }
  co_return true;
}

template <class Stream>
asio::awaitable<bool> Session::open_backend(Stream& client) {
  if (config_.backend_metadata == BackendMetadata::proxy_v2 && tls_active()) {
    // Implicit TLS: the PROXY header can tell everything now, and Exim wants it promptly.
    co_return co_await attach_backend(client, true);
  }
  // The proxy greets the client itself and connects to the MTA at the first command that
  // needs it (flush_group): a client that connects and then trickles, or says nothing, costs
  // the MTA no connection (no smtpd process), only this session's own small state. In
  // proxy-v2 mode the PROXY header must also say whether the client uses TLS, which is not
  // known yet.
  co_return co_await say(client, services_.replies.greeting);
}

// Opens the MTA connection (connect_and_identify) and tells the client if it cannot be had.
// `greet_client`: the client has not been greeted yet, and hears the MTA's greeting.
template <class Stream>
asio::awaitable<bool> Session::attach_backend(Stream& client, bool greet_client) {
  using Failure = Attach::Failure;
  auto attach = co_await connect_and_identify(greet_client);
  const auto& replies = services_.replies;
  if (attach.failure == Failure::none) {
    if (!greet_client) co_return true;
    co_return co_await say(client, attach.greeting.empty() ? std::string_view(replies.greeting)
                                                           : std::string_view(attach.greeting));
  }
  auto rejection = metrics::Rejection::mta_unavailable;
  std::string_view text = replies.service_unavailable;
  switch (attach.failure) {
    case Failure::unreachable:
      end_session("mail server unreachable");
      break;
    case Failure::lost:
      end_session("mail server lost");
      break;
    case Failure::refused:
      end_session("mail server refused the client's greeting");
      text = replies.mta_refused;
      break;
    case Failure::greeting:
      // A client the proxy greeted itself hears a 421: the MTA's refusal as the reply to its
      // EHLO or MAIL could bounce its mail, while the same words as a greeting only defer it.
      end_session("mail server refused connection");
      text = greet_client ? std::string_view(attach.greeting) : replies.mta_refused;
      break;
    case Failure::identity:
      end_session("mail server refused client identity");
      rejection = metrics::Rejection::identity_refused;
      services_.metrics.backend_xclient_failures().Increment();
      text = replies.identity_refused;
      break;
    case Failure::none:
      break;
  }
  services_.metrics.rejected(rejection).Increment();
  co_await say(client, text);
  co_return false;
}

template <class Stream>
asio::awaitable<bool> Session::flush_group(Stream& client) {
  if (!attached() && !to_mta_.empty() && !co_await attach_backend(client, false)) {
    // proxy-v2: the client went on without TLS, and the MTA cannot be reached.
    pending_.clear();
    to_mta_.clear();
    co_return false;
  }
  if (!to_mta_.empty()) {
    co_await mta_.write(to_mta_);
    to_mta_.clear();
  }
  for (const auto& pending : pending_) {
    const auto kind = pending.kind;
    if (kind == PendingReply::Kind::local || kind == PendingReply::Kind::local_repeat) {
      add_reply(pending.text.empty() ? pending.local : std::string_view(pending.text), kind);
      continue;
    }
    const auto scan = co_await mta_.read_reply();
    if (scan.status != smtp::ReplyScan::Status::complete) {
      // Never leave a command unanswered, and never let it look accepted.
      const bool shutdown = stop_ == Stop::terminate;
      end_session(shutdown ? "shutdown" : "mail server lost");
      add_reply(shutdown ? services_.replies.shutdown : services_.replies.mta_lost,
                PendingReply::Kind::local);
      break;
    }
    on_mta_reply(pending, scan.code, mta_.reply(scan));
    mta_.consume(scan);
    if (scan.code == 421) {  // the MTA is closing: nothing more will come
      end_session("mail server closed (421)");
      break;
    }
  }
  pending_.clear();
  co_return co_await send_replies(client);
}

template <class Stream>
asio::awaitable<bool> Session::relay_data(Stream& client) {
  ContentSource<Stream> source{*this, client};
  auto header = config_.received_header ? received_header() : std::string();
  const auto relayed = co_await relay::data(source, mta_, data_filter_, std::move(header),
                                            config_.bare_lf, config_.smtp_receive_timeout, to_mta_);
  using Status = relay::ContentResult::Status;
  if (relayed.status == Status::source_ended) co_return false;  // finish() abandons it
  transaction_ = Transaction::none;
  if (relayed.status == Status::bare_line_ending) {
    violation(metrics::Violation::bare_lf);
    spdlog::info("{} bare <CR> or <LF> in message from {}; rejected", id_, client_label_);
    count_message(550);
    end_session("bare line ending");
    co_await say(client, reply::kBareLineEnding);
    co_return false;
  }
  if (relayed.normalized) {
    violation(metrics::Violation::bare_lf);
    spdlog::info("{} bare <CR> or <LF> in message from {}; normalised", id_, client_label_);
  }
  const auto scan = co_await mta_.read_reply();
  if (scan.status != smtp::ReplyScan::Status::complete) {
    count_message(451);
    const bool shutdown = stop_ == Stop::terminate;
    end_session(shutdown ? "shutdown" : "mail server lost");
    co_await say(client, shutdown ? services_.replies.shutdown : services_.replies.mta_lost);
    co_return false;
  }
  count_message(scan.code);
  add_reply(mta_.reply(scan), PendingReply::Kind::mta);
  mta_.consume(scan);
  co_return co_await send_replies(client);
}

template <class Stream>
asio::awaitable<bool> Session::relay_bdat_chunk(Stream& client) {
  const bool forward = chunk_.fate != ChunkFate::discard;
  // A chunk goes straight to the MTA, before flush_group() would connect.
  if ((forward || !to_mta_.empty()) && !attached()) {
    const bool attached_now = co_await attach_backend(client, false);  // (GCC 12: not in if)
    if (!attached_now) co_return false;
  }
  const auto& size = chunk_.size;
  if (forward) {
    std::string header;
    if (chunk_.fate == ChunkFate::relay_with_header) {
      // The header's end depends on the chunk's first byte (starts_with_continuation).
      while (size.size > 0 && client_in_.empty()) {
        if (co_await read_client(client, false) != Read::ok) co_return false;
      }
      header = received_header();
      if (size.size > 0 && *starts_with_continuation(client_in_.view(), false)) header += "\r\n";
    }
    to_mta_ += fmt::format("BDAT {}{}\r\n", size.size + header.size(), size.last ? " LAST" : "");
    to_mta_ += header;
  }
  ContentSource<Stream> source{*this, client};
  co_return co_await relay::chunk(source, mta_, size.size, forward, config_.smtp_receive_timeout,
                                  to_mta_);
}

template <class Stream>
asio::awaitable<Session::Read> Session::read_client(Stream& client, bool idle,
                                                    Clock::time_point deadline) {
  error_code ec;
  if (!parked_wait_) {
    deadline_.arm_at(std::min(Clock::now() + config_.smtp_receive_timeout, deadline));
  }
  waiting_for_command_ = idle;
  if (idle && client_in_.empty()) {
    const bool woken = co_await wait_idle(client, ec);
    if (!woken) co_return Read::park;
  }
  std::size_t n = 0;
  if (!ec) n = co_await client.read_some(client_in_.prepare(), ec);
  if (!ec) {
    client_in_.commit(n);
    bytes_from_client_ += n;
    services_.metrics.bytes_from_client().Increment(static_cast<double>(n));
    co_return Read::ok;
  }
  waiting_for_command_ = false;
  co_await end_read(client, ec);
  co_return Read::ended;
}

// Between commands: waits until the client sends, giving the MTA connection back if it idles
// long enough. A wait that outlasts kParkAfter is left to a parked session (see park()):
// false. Shorter waits, the round trips of a dialogue, keep the coroutine, which costs less
// than parking and starting afresh at every command.
template <class Stream>
asio::awaitable<bool> Session::wait_idle(Stream& client, error_code& ec) {
  // A session between commands holds no buffer of its own.
  client_in_.release_if_empty();
  mta_.release_buffer();
  const auto idle_since = Clock::now();
  const auto park_at = idle_since + kParkAfter;
  while (true) {
    // Only the bare wait is woken for a release: a send inside it is never cut short.
    auto release_at = Clock::time_point::max();
    if (backend_releasable() && !client.has_unsent()) {
      release_at = idle_since + config_.backend_idle_timeout;
    }
    if (parked_wait_) {
      ec = *std::exchange(parked_wait_, std::nullopt);
      release_at = Clock::time_point::min();  // a parked wait's only wake point is the release
    } else if (client.prepare_bare_wait()) {
      if (Clock::now() >= park_at) {
        if (release_at != Clock::time_point::max()) deadline_.wake_at(release_at);
        co_return false;
      }
      deadline_.wake_at(std::min(park_at, release_at));
      co_await client_.async_wait(tcp::socket::wait_read,
                                  asio::redirect_error(asio::use_awaitable, ec));
    } else {
      if (release_at != Clock::time_point::max()) deadline_.wake_at(release_at);
      co_await client.wait_readable(ec);
    }
    deadline_.clear_wake_point();
    if (!deadline_.take_wake_point() || ec != asio::error::operation_aborted) co_return true;
    if (Clock::now() < release_at) {                     // the park point: parks at the next turn
      if (should_stop_before_command()) co_return true;  // a stop came with it
      ec = {};
      continue;
    }
    if (stopping()) co_return true;
    co_await release_backend();
    if (stopping()) co_return true;  // stopped meanwhile: ec says aborted
    ec = {};
  }
}

// Why the client could not be read, and the last reply that says so.
template <class Stream>
asio::awaitable<void> Session::end_read(Stream& client, const error_code& ec) {
  if (stop_ == Stop::terminate || (stop_ == Stop::drain && ec == asio::error::operation_aborted)) {
    end_reason_ = "shutdown";
    co_await say(client, services_.replies.shutdown);
  } else if (deadline_.expired()) {
    violation(metrics::Violation::timeout);
    end_reason_ = "timeout";
    spdlog::info("{} client {} timed out", id_, client_label_);
    co_await say(client, services_.replies.timeout);
  } else if (ec == asio::error::eof) {
    end_reason_ = "client closed";
  } else {
    end_reason_ = "client connection error";
    spdlog::debug("{} read from client failed: {}", id_, ec.message());
  }
}

template <class Stream>
asio::awaitable<bool> Session::send_replies(Stream& client) {
  if (to_client_.empty()) co_return !ending_;
  const bool written = co_await write_client(client, to_client_, ending_);
  to_client_.clear();
  co_return written && !ending_;
}

template <class Stream>
asio::awaitable<bool> Session::say(Stream& client, std::string_view text) {
  add_reply(text, PendingReply::Kind::local);
  co_return co_await send_replies(client);
}

// `last`: the session closes after these bytes (with TLS, close_notify goes with them).
template <class Stream>
asio::awaitable<bool> Session::write_client(Stream& client, std::string_view bytes, bool last) {
  deadline_.arm(std::max<Clock::duration>(config_.smtp_receive_timeout, kFinalWriteTimeout));
  error_code ec;
  co_await client.write(asio::buffer(bytes), ec, last);
  if (ec) {
    end_reason_ = deadline_.expired() ? "timeout writing to client" : "client connection error";
    co_return false;
  }
  bytes_to_client_ += bytes.size();
  services_.metrics.bytes_to_client().Increment(static_cast<double>(bytes.size()));
  co_return true;
}

// What session.cpp and the others call, for both streams.
#define STP_CLIENT_STREAM_FUNCTIONS(Stream)                              \
  template asio::awaitable<Session::Outcome> Session::serve(Stream&);    \
  template asio::awaitable<bool> Session::open_backend(Stream&);         \
  template asio::awaitable<bool> Session::attach_backend(Stream&, bool); \
  template asio::awaitable<bool> Session::say(Stream&, std::string_view);
STP_CLIENT_STREAM_FUNCTIONS(tls::PlainStream)
STP_CLIENT_STREAM_FUNCTIONS(tls::TlsStream)
#undef STP_CLIENT_STREAM_FUNCTIONS

}  // namespace stp::inbound
