// An inbound session's replies: the one path every reply to the client takes (add_reply:
// counted, and a 421 ends the session), what the MTA's replies change in the session, and
// what the proxy answers itself while no MTA connection is open.
#include "inbound/session.hpp"

#include "proxy/log.hpp"

namespace stp::inbound {
using smtp::Verb;

HostReplies::HostReplies(const std::string& host)
    : greeting("220 " + host + " ESMTP\r\n"),
      helo("250 " + host + "\r\n"),
      service_unavailable("421 4.3.2 " + host +
                          " Service not available: mail server unreachable\r\n"),
      mta_refused("421 4.3.2 " + host +
                  " Service not available: mail server refused the session\r\n"),
      identity_refused("421 4.7.0 " + host +
                       " Service not available: mail server refused client identity\r\n"),
      mta_lost("421 4.4.2 " + host + " Error: lost connection to mail server\r\n"),
      timeout("421 4.4.2 " + host + " Error: timeout exceeded\r\n"),
      shutdown("421 4.3.2 " + host + " Service shutting down, try again later\r\n"),
      too_many_errors("421 4.7.0 " + host + " Error: too many errors\r\n"),
      message_abandoned("421 4.3.0 " + host +
                        " Error: message abandoned at the mail server; try again\r\n"),
      too_many_from_host_prefix("421 4.7.0 " + host + " Error: too many connections from "),
      no_client_identity("421 4.7.0 " + host +
                         " Error: no client address from the load balancer; closing\r\n") {}

void Session::add_reply(std::string_view text, PendingReply::Kind kind) {
  using Kind = PendingReply::Kind;
  const bool failure = !text.empty() && text[0] >= '4';
  if (failure && (kind == Kind::local || kind == Kind::local_repeat)) ++local_rejects_;
  if (failure && (kind == Kind::local || kind == Kind::mta)) ++errors_;
  if (text.starts_with("421")) ending_ = true;  // the client is told the session ends
  to_client_ += text;
}

// The replies being sent are the session's last, whatever they are.
void Session::end_session(std::string_view reason) {
  end_reason_ = reason;
  ending_ = true;
}

void Session::on_mta_reply(const PendingReply& pending, int code, std::string_view text) {
  if (pending.kind == PendingReply::Kind::mta_silent) {
    // The proxy's own RSET (after STARTTLS, or abandoning a BDAT message) or AUTH cancel.
    if (pending.verb == Verb::rset && code / 100 != 2) {
      spdlog::warn("{} mail server answered the proxy's RSET with \"{}\"", id_,
                   log::escape(text, 200));
    }
    // Its 421 to the proxy's own command is the client's to hear too: the session ends.
    if (code == 421) add_reply(text, PendingReply::Kind::mta);
    return;
  }
  switch (pending.verb) {
    case Verb::mail:
      if (code / 100 == 2) transaction_ = Transaction::mail;
      break;
    case Verb::rset:
      transaction_ = Transaction::none;
      break;
    case Verb::helo:
    case Verb::ehlo:
      on_ehlo_reply(pending, code, text);
      return;
    case Verb::data:
      // A refused DATA (no valid recipients) leaves the MTA's MAIL open.
      if (code == 354) transaction_ = Transaction::data;
      break;
    case Verb::auth:
      auth_continuation_ = code == 334;
      if (code == 235) authenticated_ = true;
      break;
    case Verb::quit:
      end_session("quit");
      break;
    case Verb::bdat:
      on_bdat_reply(pending, code);
      break;
    default:
      break;
  }
  add_reply(text, PendingReply::Kind::mta);
}

void Session::on_ehlo_reply(const PendingReply& pending, int code, std::string_view text) {
  transaction_ = Transaction::none;
  helo_state_ = code / 100 == 2 ? HeloState::accepted : HeloState::unknown;
  const bool extended = pending.verb == Verb::ehlo && code == 250;
  learn_mta_extensions(extended ? text : std::string_view());
  chunking_shown_ = mta_chunking_;  // the client is shown this reply
  if (!extended) {
    add_reply(text, PendingReply::Kind::mta);
    return;
  }
  if (!tls_active()) count_starttls_offer();
  add_reply(smtp::rewrite_ehlo_reply(text, {.offer_starttls = advertise_tls_ && !tls_active(),
                                            .hide_auth = !tls_active()}),
            PendingReply::Kind::mta);
}

void Session::on_bdat_reply(const PendingReply& pending, int code) {
  if (pending.message_end) {
    count_message(code);
    transaction_ = Transaction::none;
  } else if (code / 100 == 2) {
    if (pending.carries_header) bdat_message_ = BdatMessage::open_with_header;
  } else {
    // A refused chunk leaves the MTA's message in a state the proxy cannot know (Exim
    // then takes only RSET): the next group resets it, and the message is over.
    bdat_message_ = BdatMessage::refused;
    mta_reset_due_ = true;
  }
}

// CHUNKING and SIZE as the MTA offered them in an EHLO reply (none for anything else).
void Session::learn_mta_extensions(std::string_view ehlo_reply) {
  const auto capabilities = smtp::parse_ehlo_capabilities(ehlo_reply);
  mta_chunking_ = capabilities.chunking;
  mta_size_limit_ = capabilities.size_limit;
}

// Once per session: whether the first EHLO in the clear was offered STARTTLS.
void Session::count_starttls_offer() {
  if (std::exchange(starttls_counted_, true)) return;
  services_.metrics
      .starttls(advertise_tls_ ? metrics::StartTls::offered : metrics::StartTls::not_offered)
      .Increment();
}

void Session::count_message(int code) {
  if (code / 100 == 2) {
    ++messages_accepted_;
    services_.metrics.message(metrics::Message::accepted).Increment();
  } else if (code / 100 == 4) {
    ++messages_tempfailed_;
    services_.metrics.message(metrics::Message::tempfailed).Increment();
  } else {
    ++messages_rejected_;
    services_.metrics.message(metrics::Message::rejected).Increment();
  }
}

std::optional<Session::GroupEnd> Session::answer_while_detached(const smtp::Command& command) {
  const Verb verb = command.verb;
  const bool greeting = verb == Verb::ehlo || verb == Verb::helo;
  // XCLIENT (or no metadata): the client's greeting is the MTA's to answer, so it connects.
  // proxy-v2 answers it from the probe until the TLS outcome is known, and after that only
  // until the first connection: once one was given back, the MTA answers for this client.
  if (greeting && (config_.backend_metadata != BackendMetadata::proxy_v2 ||
                   (link_ == MtaLink::released && tls_active()))) {
    return std::nullopt;
  }
  switch (verb) {
    case Verb::ehlo:
      return answer_ehlo_from_probe(command);
    case Verb::helo:
      remember_greeting(command, false);
      pending_.push_back(
          {.kind = PendingReply::Kind::local, .verb = verb, .local = services_.replies.helo});
      return GroupEnd::none;
    default:
      return answer_without_mta(verb);  // or nullopt: it needs the MTA
  }
}

std::optional<Session::GroupEnd> Session::answer_without_mta(Verb verb) {
  auto answer = [&](std::string_view text) {
    pending_.push_back({.kind = PendingReply::Kind::local, .verb = verb, .local = text});
  };
  switch (verb) {
    case Verb::rset:
      bdat_message_ = BdatMessage::none;
      answer(reply::kOk);
      return GroupEnd::none;
    case Verb::noop:
      answer(reply::kOk);
      return GroupEnd::none;
    case Verb::quit:
      answer(reply::kBye);
      end_session("quit");
      return GroupEnd::quit;
    default:
      return std::nullopt;
  }
}

// proxy-v2 before the TLS outcome is known: the probe's EHLO reply, as the MTA would answer.
Session::GroupEnd Session::answer_ehlo_from_probe(const smtp::Command& command) {
  const auto cached = services_.runtime.mta_ehlo_reply.load();
  if (!cached) {  // the MTA has not answered a probe yet: it is not there
    reply_locally(services_.replies.service_unavailable);
    end_reason_ = "mail server unreachable";
    return GroupEnd::close;
  }
  remember_greeting(command, true);
  learn_mta_extensions(*cached);
  auto text = smtp::rewrite_ehlo_reply(*cached, {.offer_starttls = advertise_tls_ && !tls_active(),
                                                 .hide_auth = !tls_active(),
                                                 .hide_chunking = true});
  // The first line names the host: ours, as in our greeting.
  const auto end = text.find("\r\n");
  text.replace(4, end - 4, config_.hostname);
  count_starttls_offer();
  pending_.push_back(
      {.kind = PendingReply::Kind::local, .verb = command.verb, .text = std::move(text)});
  return GroupEnd::none;
}

// A greeting answered here: the MTA hears it when its connection opens.
void Session::remember_greeting(const smtp::Command& command, bool extended) {
  helo_name_ = std::string(command.arguments.substr(0, kMaxHeloName));
  extended_helo_ = extended;
  replay_helo_ = std::string(command.line) + "\r\n";
  helo_state_ = HeloState::accepted;
  bdat_message_ = BdatMessage::none;  // a greeting ends any message
  if (!extended) learn_mta_extensions({});
  chunking_shown_ = false;  // the probe's connection carries no chunk: CHUNKING is hidden
}

}  // namespace stp::inbound
