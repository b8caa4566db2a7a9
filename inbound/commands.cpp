// An inbound session's commands: each line the client sends is parsed once
// (smtp::parse_command), checked, and then answered here, forwarded to the MTA, or held for
// the MTA connection to open; and each MTA reply is read for what it changes (the transaction,
// the greeting, AUTH, BDAT). Replies queue in order (PendingReply) and go out in flush_group.
#include "inbound/session.hpp"
#include "smtp/proxy_protocol.hpp"

#include "acl/policy.hpp"
#include "proxy/log.hpp"

#include <algorithm>
#include <cctype>

namespace stp::inbound {
using smtp::Verb;

namespace {

// Exim reads an AUTH response with its CR into 16384 bytes: one byte less than a command.
constexpr std::size_t kMaxAuthResponse = 16382;
// BDAT messages abandoned at the MTA (each costs it a new connection) before the session ends.
constexpr unsigned kMaxAbandonedMessages = 3;
// A refused BDAT chunk larger than this is not read to its end: the session closes instead.
constexpr std::uint64_t kMaxDiscardedChunk = 64 * 1024 * 1024;
// The largest BDAT message sent on: Exim reads a chunk's size into 32 bits (and never offers
// SIZE above 2^31 - 1), with room below that for the trace header.
constexpr std::uint64_t kMaxBdatMessage = 0x7fffffff - 64 * 1024;

}  // namespace

Session::GroupEnd Session::on_line_too_long() {
  ++commands_;
  violation(metrics::Violation::line_too_long);
  spdlog::info("{} line too long from {}", id_, client_label_);
  // An AUTH response the MTA waits for: cancel the exchange there, or the client's next
  // command would be read by the MTA as the response.
  if (std::exchange(auth_continuation_, false)) return cancel_auth(reply::kLineTooLong);
  reply_locally(reply::kLineTooLong);
  return GroupEnd::none;
}

Session::GroupEnd Session::on_line(std::string_view line) {
  ++commands_;
  if (std::exchange(auth_continuation_, false)) {  // a SASL response: the MTA asked for it
    if (line.size() > kMaxAuthResponse) {
      violation(metrics::Violation::line_too_long);
      return cancel_auth(reply::kLineTooLong);
    }
    if (smtp::has_control_character(line)) {
      violation(metrics::Violation::bad_command_character);
      return cancel_auth(reply::kBadCharacter);
    }
    forward({.verb = Verb::auth, .line = line, .arguments = {}});
    return GroupEnd::wait_reply;
  }
  const auto parsed = smtp::parse_command(line);
  switch (parsed.syntax) {
    case smtp::CommandSyntax::ok:
      return on_command(parsed.command);
    case smtp::CommandSyntax::empty:
      violation(metrics::Violation::empty_command);
      reply_locally(reply::kBadSyntax);
      break;
    case smtp::CommandSyntax::leading_space:
      violation(metrics::Violation::bad_command_character);
      reply_locally(reply::kLeadingSpace);
      break;
    case smtp::CommandSyntax::control_character:
      violation(metrics::Violation::bad_command_character);
      reply_locally(reply::kBadCharacter);
      break;
  }
  spdlog::info("{} {} sent a malformed command \"{}\"; refused", id_, client_label_,
               log::escape_command(line, 60));
  return GroupEnd::none;
}

// "*" ends an AUTH exchange (RFC 4954); the MTA's 501 to it is not the client's to hear.
Session::GroupEnd Session::cancel_auth(std::string_view text) {
  to_mta_ += "*\r\n";
  pending_.push_back({PendingReply::Kind::mta_silent, Verb::auth});
  reply_locally(text);
  return GroupEnd::wait_reply;
}

// Where the group stops after a command forwarded as it came: the command table says what
// may follow it.
Session::GroupEnd Session::group_end_after(Verb verb) {
  switch (smtp::after_command(verb)) {
    case smtp::AfterCommand::command:
      return GroupEnd::none;
    case smtp::AfterCommand::reply:
      return GroupEnd::wait_reply;
    case smtp::AfterCommand::message:
      return verb == Verb::bdat ? GroupEnd::bdat : GroupEnd::data;
    case smtp::AfterCommand::tls_handshake:
      return GroupEnd::start_tls;
    case smtp::AfterCommand::nothing:
      return GroupEnd::quit;
  }
  return GroupEnd::none;
}

Session::GroupEnd Session::on_command(const smtp::Command& command) {
  const Verb verb = command.verb;
  if (proxy_protocol::is_header_line(command.line)) {
    // Only a trusted load balancer may say who the client is, and only before anything else.
    violation(metrics::Violation::client_proxy_header);
    spdlog::warn("{} {} sent a PROXY header but is not in --proxy-protocol-hosts; refused", id_,
                 client_label_);
    reply_locally(reply::kNotPermitted);
    return GroupEnd::none;
  }
  if (security_failure_ && verb != Verb::quit) {
    reply_locally(reply::kSecurityFailure);
    return verb == Verb::bdat ? refuse_bdat(command) : GroupEnd::none;
  }
  if (health_check_) return on_health_check(command);
  if (refused_by_policy(verb)) {
    return verb == Verb::bdat ? refuse_bdat(command) : GroupEnd::none;
  }
  const bool bdat_open =
      bdat_message_ == BdatMessage::open || bdat_message_ == BdatMessage::open_with_header;
  if (bdat_open && verb == Verb::rset) {
    bdat_message_ = BdatMessage::none;
    return abandon_bdat_message(reply::kOk);
  }
  if (bdat_open && verb != Verb::bdat && verb != Verb::noop && verb != Verb::quit) {
    reply_locally(reply::kOnlyBdat);
    return GroupEnd::none;
  }
  if (greeting_due_ && verb != Verb::ehlo && verb != Verb::helo && verb != Verb::noop &&
      verb != Verb::rset && verb != Verb::quit && verb != Verb::starttls) {
    reply_locally(reply::kHeloAfterTls);
    return verb == Verb::bdat ? refuse_bdat(command) : GroupEnd::none;
  }
  // Detached, the proxy answers what needs no MTA; but once a command of this group is bound
  // for the MTA, the rest follow it there, in order (an RSET must reset that MAIL).
  if (!attached() && to_mta_.empty() &&
      (smtp::command_flags(verb) & smtp::command_flag::answered_while_detached) != 0) {
    if (const auto end = answer_while_detached(command)) return *end;
  }
  switch (verb) {
    case Verb::starttls:
      return on_starttls(command);
    case Verb::turn:
      // The MTA would turn into the client on this connection, which the proxy cannot follow.
      spdlog::info("{} {} sent TURN/ATRN; refused", id_, client_label_);
      reply_locally(reply::kNotImplemented);
      return GroupEnd::none;
    case Verb::xclient:
    case Verb::xforward:
      violation(metrics::Violation::client_xclient);
      spdlog::warn("{} {} sent {}; refused", id_, client_label_,
                   verb == Verb::xclient ? "XCLIENT" : "XFORWARD");
      reply_locally(reply::kNotPermitted);
      return GroupEnd::none;
    case Verb::auth:
      if (!tls_active()) {
        violation(metrics::Violation::auth_before_tls);
        reply_locally(reply::kAuthNeedsTls);
        return GroupEnd::none;
      }
      break;
    case Verb::bdat:
      return on_bdat(command);
    case Verb::mail:
    case Verb::rset:
      // A new message starts here, whenever the MTA's reply comes: the next BDAT chunk is
      // the first of it, even when it is pipelined behind this command.
      bdat_message_ = BdatMessage::none;
      break;
    case Verb::helo:
    case Verb::ehlo:
      return on_greeting(command);
    default:
      break;
  }
  forward(command);
  return group_end_after(verb);
}

// A load balancer's health check (its header named no client): what needs no MTA is answered
// here, and anything else ends the session, so the balancer's address never reaches the MTA.
Session::GroupEnd Session::on_health_check(const smtp::Command& command) {
  if (const auto end = answer_without_mta(command.verb)) return *end;
  switch (command.verb) {
    case Verb::ehlo:
    case Verb::helo:
      reply_locally(services_.replies.helo);
      return GroupEnd::none;
    default:
      spdlog::info(
          "{} {} sent a command that needs the mail server after a header without a "
          "client; closing",
          id_, client_label_);
      reply_locally(services_.replies.no_client_identity);
      end_session("no client identity");
      return GroupEnd::close;
  }
}

Session::GroupEnd Session::on_starttls(const smtp::Command& command) {
  if (tls_active() || !advertise_tls_ || !command.arguments.empty()) {
    services_.metrics.starttls(metrics::StartTls::refused).Increment();
  }
  if (tls_active()) {
    reply_locally(reply::kTlsActive);
    return GroupEnd::none;
  }
  if (!advertise_tls_) {
    reply_locally(reply::kStartTlsNotOffered);
    return GroupEnd::none;
  }
  if (!command.arguments.empty()) {
    reply_locally(reply::kStartTlsSyntax);
    return GroupEnd::none;
  }
  start_tls_stream();
  if (!tls_->native_handle()) {
    spdlog::error("{} cannot start TLS: {}", id_, tls::take_openssl_errors());
    tls_.reset();
    security_failure_ = true;
    services_.metrics.starttls(metrics::StartTls::refused).Increment();
    reply_locally(reply::kTlsUnavailable);
    return GroupEnd::none;
  }
  reply_locally(reply::kStartTls);
  return GroupEnd::start_tls;
}

// A HELO or EHLO for the MTA.
Session::GroupEnd Session::on_greeting(const smtp::Command& command) {
  greeting_due_ = false;
  helo_name_ = std::string(command.arguments.substr(0, kMaxHeloName));
  extended_helo_ = command.verb == Verb::ehlo;
  if (to_mta_.empty()) replay_helo_.clear();  // the MTA hears this one instead
  bdat_message_ = BdatMessage::none;
  forward(command);
  // What the MTA offers (CHUNKING, SIZE) decides how the commands after this one are
  // handled: they wait for its reply (a client pipelines past EHLO only with Exim's
  // PIPECONNECT, and then gains nothing from the group going on).
  return GroupEnd::wait_reply;
}

void Session::forward(const smtp::Command& command) {
  to_mta_ += command.line;
  to_mta_ += "\r\n";
  pending_.push_back({PendingReply::Kind::mta, command.verb});
}

// Forwarded only if the MTA offered CHUNKING to this connection and the size fits: an MTA
// without CHUNKING would read the chunk as commands. The line the MTA gets is made from the
// parsed size (relay_bdat_chunk), never the client's spelling.
Session::GroupEnd Session::on_bdat(const smtp::Command& command) {
  if (!command.bdat) {
    // Without a size the chunk cannot be told from the commands after it: end here.
    violation(metrics::Violation::bad_bdat);
    reply_locally(reply::kBdatSyntax);
    end_reason_ = "bad BDAT";
    return GroupEnd::close;
  }
  const auto& arguments = *command.bdat;
  const std::uint64_t so_far = bdat_message_ == BdatMessage::none ? 0 : bdat_message_bytes_;
  // What needs no MTA connection is decided first; then what this one offers, and one yet to
  // be opened (proxy-v2 before TLS, after an idle release or an abandon) is opened first, and
  // the BDAT read again.
  const auto refusal = bdat_refusal(arguments, so_far);
  if (refusal.empty() && !attached()) {
    --commands_;
    return GroupEnd::attach;
  }
  if (!refusal.empty()) {
    spdlog::info("{} {} sent BDAT {}{} after {} bytes; refused: {}", id_, client_label_,
                 arguments.size, arguments.last ? " LAST" : "", so_far,
                 refusal.substr(0, refusal.size() - 2));
    // The later chunks of a message already refused are one error, not one each.
    if (bdat_message_ == BdatMessage::refused) {
      pending_.push_back({.kind = PendingReply::Kind::local_repeat, .local = refusal});
    } else {
      reply_locally(refusal);
    }
    return discard_bdat(arguments);
  }
  bdat_message_bytes_ = so_far + arguments.size;
  // The trace header goes in front of the message's first chunk that has content (or is the
  // last), which grows by it; relay_bdat_chunk() writes every BDAT command. It counts as sent
  // once the MTA accepted that chunk (on_bdat_reply).
  const bool header_due = config_.received_header && bdat_message_ != BdatMessage::open_with_header;
  chunk_ = {arguments, header_due ? ChunkFate::relay_with_header : ChunkFate::relay};
  pending_.push_back({.kind = PendingReply::Kind::mta,
                      .verb = Verb::bdat,
                      .message_end = arguments.last,
                      .carries_header = header_due});
  if (arguments.last) {
    bdat_message_ = BdatMessage::none;
  } else if (bdat_message_ == BdatMessage::none) {
    bdat_message_ = BdatMessage::open;
  }
  return GroupEnd::bdat;
}

// Why this chunk cannot go to the MTA (empty: it can, once attached).
std::string_view Session::bdat_refusal(const smtp::BdatArguments& arguments, std::uint64_t so_far) {
  const auto over = [&](std::uint64_t limit) {
    return arguments.size > limit || so_far > limit - arguments.size;
  };
  if (bdat_message_ == BdatMessage::refused) return reply::kBdatRefusedMessage;
  if (arguments.size == 0 && !arguments.last) return reply::kBdatEmpty;
  if (over(kMaxBdatMessage)) return reply::kMessageTooBig;
  if (!attached()) return {};
  // Told CHUNKING by an earlier connection, the client must not bounce its mail on a 5xx.
  if (!mta_chunking_) return chunking_shown_ ? reply::kBdatNotOfferedNow : reply::kBdatNotOffered;
  if (mta_size_limit_ != 0 && over(mta_size_limit_)) return reply::kMessageTooBig;
  return {};
}

// A BDAT refused before its size was looked at (policy, a security failure): its chunk still
// follows, and must be read and dropped.
Session::GroupEnd Session::refuse_bdat(const smtp::Command& command) {
  if (!command.bdat) {
    violation(metrics::Violation::bad_bdat);
    spdlog::info("{} {} sent BDAT without a size; closing", id_, client_label_);
    end_reason_ = "bad BDAT";
    return GroupEnd::close;
  }
  return discard_bdat(*command.bdat);
}

// A BDAT answered here: its chunk is read and dropped, and the message's later chunks are
// refused, so that none completes it with this one missing. Chunks the MTA already took are
// abandoned there (the MTA's MAIL and RCPT, when it holds no chunk, stay for a DATA).
Session::GroupEnd Session::discard_bdat(const smtp::BdatArguments& arguments) {
  const bool open =
      bdat_message_ == BdatMessage::open || bdat_message_ == BdatMessage::open_with_header;
  bdat_message_ = BdatMessage::refused;
  if (arguments.size > kMaxDiscardedChunk) {
    // Reading that much only to drop it serves nobody: the reply goes out, then the session
    // ends (the MTA's part of a message with it).
    end_reason_ = "refused BDAT chunk too large to read";
    return GroupEnd::close;
  }
  chunk_ = {arguments, ChunkFate::discard};
  if (open && abandon_bdat_message({}) == GroupEnd::close) return GroupEnd::close;
  return GroupEnd::bdat;
}

// The MTA holds chunks of a message that is to go: the MTA connection is closed after this
// group, never told RSET. (Exim 4.96 told RSET after a chunk that ended inside a header line
// reads the bytes after it as message text, and the next chunk as commands; closing abandons
// the message at any MTA.) `text`, if any, answers the command that abandons it. A session
// that cannot have its MTA session back (AUTH) ends with a 421 instead.
Session::GroupEnd Session::abandon_bdat_message(std::string_view text) {
  transaction_ = Transaction::none;
  // Each abandon costs the MTA a new connection: it counts as an error, and a few end the
  // session (a loop of MAIL, RCPT, BDAT, RSET must not make the proxy a connection churner).
  ++errors_;
  if (!can_reattach() || ++abandoned_messages_ > kMaxAbandonedMessages) {
    end_reason_ = "BDAT message abandoned";
    spdlog::info("{} BDAT message of {} abandoned; closing: {}", id_, client_label_,
                 can_reattach() ? "too many abandoned messages"
                                : "the MTA session cannot be had again (AUTH, or the greeting)");
    reply_locally(services_.replies.message_abandoned);
    return GroupEnd::close;
  }
  mta_abandon_due_ = true;
  if (!text.empty()) pending_.push_back({.kind = PendingReply::Kind::local, .local = text});
  return GroupEnd::wait_reply;
}

// The proxy's own RSET, its reply not the client's: the MTA forgets any transaction.
void Session::reset_mta() {
  transaction_ = Transaction::none;
  to_mta_ += "RSET\r\n";
  pending_.push_back({PendingReply::Kind::mta_silent, Verb::rset});
}

void Session::reply_locally(std::string_view text) {
  pending_.push_back({.kind = PendingReply::Kind::local, .local = text});
}

bool Session::refused_by_policy(Verb verb) {
  const acl::PolicyFacts facts{
      .port_requires_tls =
          std::find(config_.tls_require_ports.begin(), config_.tls_require_ports.end(),
                    identity_.local_port) != config_.tls_require_ports.end(),
      .host_requires_tls = config_.tls_require_hosts.matches(identity_.address),
      .host_requires_verified = config_.tls_require_verified_hosts.matches(identity_.address),
      .tls_active = tls_active(),
      .certificate_verified = tls_facts_ && tls_facts_->verified,
  };
  const auto refusal = acl::check_command(facts, verb);
  if (!refusal) return false;
  const auto text = refusal->reason == acl::Refusal::Reason::must_start_tls
                        ? reply::kMustStartTls
                        : reply::kNeedsCertificate;
  spdlog::info("{} {} refused by {}: {}", id_, client_label_, refusal->rule,
               text.substr(0, text.size() - 2));
  reply_locally(text);
  return true;
}

}  // namespace stp::inbound
