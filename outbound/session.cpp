// The outbound relay's session; see session.hpp. One coroutine per local client, templated on
// its stream (plain, then TLS after STARTTLS). Commands are handled in the order they came;
// MAIL, RCPT, RSET and DATA that the client pipelined go to a relay host that offers
// PIPELINING as one group (RFC 2920), and their replies leave together.
#include "outbound/session.hpp"

#include "outbound/mx_route.hpp"
#include "proxy/input_buffer.hpp"
#include "proxy/log.hpp"
#include "proxy/relay.hpp"
#include "proxy/spawn_session.hpp"
#include "smtp/data_filter.hpp"
#include "smtp/mail_path.hpp"
#include "smtp/proxy_protocol.hpp"
#include "tls/tls_context.hpp"
#include "tls/tls_stream.hpp"

#include <fmt/format.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fstream>

namespace stp::outbound {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using smtp::Verb;

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kInputSize = 16 * 1024;
constexpr auto kQuitTimeout = std::chrono::seconds(5);
// Commands sent to the relay host in one group at most (their replies must fit in its
// socket buffer while the group is still being written).
constexpr std::size_t kMaxGroup = 100;
// RFC 4954's limit for a line of an AUTH exchange, less its CRLF.
constexpr std::size_t kMaxAuthResponse = 12286;

class Session final : public Connection,
                      public Deadline::Owner,
                      public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket client, std::size_t listener_index, SessionServices& services,
          WorkerState& worker)
      : services_(services),
        config_(services.config),
        listener_(services.config.listeners[listener_index]),
        worker_(worker),
        id_(fmt::format("R{:011X}", services.next_session_id.fetch_add(1) & 0xFFFFFFFFFFFull)),
        client_(std::move(client)),
        deadline_(worker.deadlines, *this),
        client_in_(std::max<std::size_t>(kInputSize, config_.max_line_length + 2)),
        framer_(config_.max_line_length),
        filter_(config_.bare_lf),
        registration_(worker.sessions.insert(worker.sessions.end(), this)) {}

  ~Session() {
    worker_.sessions.erase(registration_);
    services_.runtime.sessions_alive.fetch_sub(1);
  }

  // Shutting down: a session between messages is told 421 at once, one inside a message when
  // it ends; terminate() cuts it short.
  void drain() override {
    stopping_ = true;
    if (!in_transaction_) cancel_client();
  }
  void terminate() override {
    stopping_ = true;
    cancel_client();
    if (link_) link_->upstream.cancel();
  }
  void cancel_client() {
    error_code ignored;
    client_.cancel(ignored);
  }

  asio::awaitable<void> run();

  // Bounds waits on the client only: a relay host's replies have limits of their own
  // (--relay-command-timeout, --relay-final-timeout), on the link's deadline.
  void on_deadline_expired() override {
    error_code ignored;
    client_.cancel(ignored);
  }

  // relay::data's and relay::chunk's view of the client.
  template <class Stream>
  struct Source {
    Session& session;
    Stream& stream;
    InputBuffer& input() { return session.client_in_; }
    asio::awaitable<bool> read_more(Clock::time_point limit) {
      const auto read = co_await session.read_client(stream, limit);
      co_return read;
    }
  };

 private:
  enum class Next { go_on, close, start_tls };

  template <class Stream>
  asio::awaitable<Next> serve(Stream& client);
  template <class Stream>
  asio::awaitable<Next> on_command(Stream& client, const smtp::Command& command);
  template <class Stream>
  asio::awaitable<Next> on_data(Stream& client, const smtp::Command& command);
  template <class Stream>
  asio::awaitable<Next> on_bdat(Stream& client, const smtp::Command& command);
  template <class Stream>
  asio::awaitable<Next> on_auth(Stream& client, const smtp::Command& command);
  template <class Stream>
  asio::awaitable<bool> read_client(Stream& client, Clock::time_point limit);
  template <class Stream>
  asio::awaitable<bool> flush(Stream& client);

  asio::awaitable<bool> ensure_link();
  // --relay-route mx: the transaction's commands the proxy answers itself.
  bool by_mx() const { return config_.relay.by_mx(); }
  Next on_mx_mail(const smtp::Command& command);
  asio::awaitable<Next> on_mx_rcpt(const smtp::Command& command);
  // The first recipient's domain routed and its MX connected, or the reply its RCPTs get.
  asio::awaitable<void> open_destination(const std::string& domain);
  // Ends the transaction and its MX connection (QUIT).
  // Ends the transaction (routing by MX); `keep_link`, after a message's verdict: its MX
  // connection is kept for the next transaction to the domain, if it may be.
  asio::awaitable<void> end_transaction(bool keep_link = false);
  asio::awaitable<std::unique_ptr<RelayLink>> kept_link_for(const std::string& domain,
                                                            const MxRoute& route);
  std::string mx_ehlo_reply() const;
  // Whether `verb` joins the group of commands for the relay host.
  bool joins_group(Verb verb) const;
  // Sends the group (after the RSET a kept connection owes) and passes the relay host's
  // replies to the client; false when the link is lost (or closing with 421), which ends the
  // session. The RSET waits for the next group, to share its write, unless `reset_now`: what
  // comes next (BDAT, AUTH) is no group.
  asio::awaitable<bool> send_group(bool reset_now = false);
  // RSET on a kept connection, with `lines` in the same write when the relay host pipelines;
  // when it fails the connection is replaced, the client none the wiser. True with `sent`
  // when `lines` went too; false when no relay host is left.
  asio::awaitable<bool> reset_kept_link(const std::string& lines, bool& sent);
  asio::awaitable<bool> read_replies(const std::vector<Verb>& verbs);
  // RSET at the relay host when it holds a transaction of this session's (the client said
  // EHLO or STARTTLS in the middle of one); false when the link is lost.
  asio::awaitable<bool> reset_relay_transaction();
  // The relay host said more than it was asked: its replies can no longer be matched to
  // commands. The client hears one 421 instead of anything from `replies_from` on.
  void out_of_step(std::size_t replies_from);
  void reply(std::string_view text) { to_client_.append(text); }
  // A reply of the relay host's, passed on; a domain's MX (not the operator's host) has its
  // reply cleaned of bytes that are not printable ASCII first.
  void relay_reply(std::string_view text) {
    if (by_mx()) {
      reply(smtp::clean_reply(text));
    } else {
      reply(text);
    }
  }
  void lost_link(std::string_view during);
  void count_message(int code);
  // The relay host's verdict on a whole message: counted and logged.
  void message_done(std::string_view verdict, int code);
  std::string ehlo_reply() const;
  bool may_relay_auth() const;
  // The relay host's AUTH may be lent to a local client at all, however it is connected.
  bool relay_auth_usable() const;
  asio::awaitable<void> finish();

  SessionServices& services_;
  const Config& config_;
  const Listener& listener_;
  WorkerState& worker_;
  std::string id_;
  tcp::socket client_;
  std::optional<tls::TlsStream> tls_;
  Deadline deadline_;
  InputBuffer client_in_;
  smtp::CommandFramer framer_;
  DataFilter filter_;
  std::string to_client_;
  std::string to_relay_;
  std::string group_;  // command lines for the relay host, not sent yet
  std::vector<Verb> group_verbs_;
  int last_code_ = 0;  // the relay host's reply to the group's last command
  std::unique_ptr<RelayLink> link_;
  std::string client_label_;
  bool advertise_tls_ = false;
  bool auth_in_clear_ = false;  // --relay-auth-clear-hosts
  bool greeted_ = false;
  bool in_transaction_ = false;
  bool chunking_offered_ = false;  // told at EHLO: the relay host's CHUNKING, passed on
  // --relay-route mx: the sender, held until the first recipient names where the transaction
  // goes; that domain; the reply its recipients get when it has nowhere to go; the MX's
  // refusal of the held MAIL, which its recipients get instead of its 503s.
  bool said_helo_ = false;
  std::string held_mail_;
  std::string destination_;
  std::string destination_refusal_;
  std::vector<RelayTarget> route_targets_;  // where destination_'s mail may go
  Clock::time_point give_up_at_{};
  std::string mail_refusal_;
  unsigned accepted_recipients_ = 0;
  unsigned errors_ = 0;
  unsigned messages_ = 0;
  std::string_view end_reason_ = "client closed";
  bool stopping_ = false;
  ConnectionList::iterator registration_;
};

template <class Stream>
asio::awaitable<bool> Session::read_client(Stream& client, Clock::time_point limit) {
  deadline_.arm_at(std::min(limit, Clock::now() + config_.smtp_receive_timeout));
  error_code ec;
  const auto n = co_await client.read_some(client_in_.prepare(), ec);
  if (ec) {
    end_reason_ = deadline_.expired() ? "timeout" : "client closed";
    co_return false;
  }
  client_in_.commit(n);
  co_return true;
}

template <class Stream>
asio::awaitable<bool> Session::flush(Stream& client) {
  if (to_client_.empty()) co_return true;
  deadline_.arm(config_.smtp_receive_timeout);
  error_code ec;
  co_await client.write(asio::buffer(to_client_), ec);
  to_client_.clear();
  co_return !ec;
}

asio::awaitable<void> Session::run() {
  error_code ec;
  const auto remote = client_.remote_endpoint(ec);
  if (ec) co_return;
  client_label_ = metrics::endpoint_label(remote);
  const auto& relay = config_.relay;
  if (!relay.clients.matches(remote.address())) {
    spdlog::warn("{} relay refused to {} (not in --relay-clients)", id_, client_label_);
    services_.metrics.client_refused();
    if (!listener_.implicit_tls) {
      tls::PlainStream plain(client_);
      reply("554 5.7.1 " + relay.helo + " relaying denied for [" + remote.address().to_string() +
            "]\r\n");
      co_await flush(plain);
    }
    co_return;
  }
  advertise_tls_ = config_.tls_advertise_hosts.matches(remote.address());
  auth_in_clear_ = relay.auth_clear_hosts.matches(remote.address());
  spdlog::debug("{} relay session from {}", id_, client_label_);
  Next next = Next::go_on;
  if (listener_.implicit_tls) {
    tls_.emplace(client_, services_.runtime.current_tls());
    next = Next::start_tls;
  } else {
    tls::PlainStream plain(client_);
    next = co_await serve(plain);
  }
  if (next == Next::start_tls) {
    deadline_.arm(config_.tls_handshake_timeout);
    co_await tls_->handshake(ec);
    if (!ec) co_await serve(*tls_);
  }
  co_await finish();
}

template <class Stream>
asio::awaitable<Session::Next> Session::serve(Stream& client) {
  if (!greeted_) {
    greeted_ = true;
    reply("220 " + config_.relay.helo + " ESMTP smtp-tls-proxy relay\r\n");
  }
  while (true) {
    const auto frame = framer_.next(client_in_.view());
    client_in_.consume(frame.consumed);
    if (frame.status == smtp::CommandFramer::Status::need_more) {
      if (!co_await send_group()) {
        co_await flush(client);
        co_return Next::close;
      }
      if (stopping_ && !in_transaction_) {
        reply("421 4.3.2 " + config_.relay.helo + " shutting down\r\n");
        end_reason_ = "shutdown";
        co_await flush(client);
        co_return Next::close;
      }
      if (!co_await flush(client)) co_return Next::close;
      const bool read = co_await read_client(client, Clock::time_point::max());
      if (!read && stopping_) continue;  // woken to stop: say so above
      if (!read) co_return Next::close;
      continue;
    }
    Next next = Next::go_on;
    const auto parsed = frame.status == smtp::CommandFramer::Status::line
                            ? smtp::parse_command(frame.line)
                            : smtp::ParsedCommand{};
    const bool joins = parsed.syntax == smtp::CommandSyntax::ok && joins_group(parsed.command.verb);
    if (!joins && !co_await send_group()) {  // its replies before any other
      co_await flush(client);
      co_return Next::close;
    }
    if (frame.status == smtp::CommandFramer::Status::line_too_long) {
      ++errors_;
      reply("500 5.5.2 line too long\r\n");
    } else {
      if (parsed.syntax != smtp::CommandSyntax::ok) {
        ++errors_;
        reply("500 5.5.2 malformed command\r\n");
      } else {
        next = co_await on_command(client, parsed.command);
      }
    }
    if (errors_ >= config_.max_errors) {
      reply("421 4.7.0 too many errors\r\n");
      end_reason_ = "too many errors";
      next = Next::close;
    }
    if (next != Next::go_on) {
      const bool flushed = co_await flush(client);
      co_return flushed ? next : Next::close;
    }
  }
}

template <class Stream>
asio::awaitable<Session::Next> Session::on_command(Stream& client, const smtp::Command& command) {
  if (proxy_protocol::is_header_line(command.line)) {
    ++errors_;
    spdlog::warn("{} {} sent a PROXY header to the relay port; refused", id_, client_label_);
    reply("550 5.7.1 not permitted\r\n");
    co_return Next::go_on;
  }
  switch (command.verb) {
    case Verb::ehlo:
    case Verb::helo: {
      if (by_mx()) {  // nowhere to connect yet: the first recipient decides
        co_await end_transaction();
        said_helo_ = true;
        reply(command.verb == Verb::ehlo ? mx_ehlo_reply() : "250 " + config_.relay.helo + "\r\n");
        co_return Next::go_on;
      }
      const bool linked = co_await ensure_link();
      if (!linked) co_return Next::close;
      // RFC 5321 4.1.4: EHLO resets the state, at the relay host too.
      if (!co_await reset_relay_transaction()) co_return Next::close;
      said_helo_ = true;
      chunking_offered_ = command.verb == Verb::ehlo && link_->capabilities.chunking;
      reply(command.verb == Verb::ehlo ? ehlo_reply() : "250 " + config_.relay.helo + "\r\n");
      co_return Next::go_on;
    }
    case Verb::starttls:
      if (tls_ || !advertise_tls_ || listener_.implicit_tls) {
        reply("454 4.7.0 TLS not available\r\n");
        co_return Next::go_on;
      }
      // RFC 3207: what was said in the clear is forgotten, at the relay host too.
      if (by_mx()) {
        co_await end_transaction();
      } else if (!co_await reset_relay_transaction()) {
        co_return Next::close;
      }
      said_helo_ = false;
      reply("220 2.0.0 Ready to start TLS\r\n");
      client_in_.clear();  // nothing sent in the clear after STARTTLS is read (RFC 3207)
      framer_.reset();
      tls_.emplace(client_, services_.runtime.current_tls());
      co_return Next::start_tls;
    case Verb::quit:
      reply("221 2.0.0 " + config_.relay.helo + " closing connection\r\n");
      end_reason_ = "quit";
      co_return Next::close;
    case Verb::auth:
      if (may_relay_auth()) co_return co_await on_auth(client, command);
      if (relay_auth_usable() && !tls_) {  // offered once this connection is encrypted
        ++errors_;
        reply("538 5.7.11 encryption required for authentication\r\n");
        co_return Next::go_on;
      }
      [[fallthrough]];
    case Verb::xclient:
    case Verb::xforward:
    case Verb::turn:
      ++errors_;
      reply("502 5.5.1 not offered here\r\n");
      co_return Next::go_on;
    case Verb::noop:
      reply("250 2.0.0 OK\r\n");
      co_return Next::go_on;
    default:
      break;
  }
  if (!said_helo_) {
    ++errors_;
    reply("503 5.5.1 EHLO first\r\n");
    co_return Next::go_on;
  }
  if (by_mx()) {
    switch (command.verb) {
      case Verb::mail:
        co_return on_mx_mail(command);
      case Verb::rcpt: {
        const Next next = co_await on_mx_rcpt(command);
        co_return next;
      }
      case Verb::rset:
        co_await end_transaction();
        reply("250 2.0.0 Ok\r\n");
        co_return Next::go_on;
      case Verb::data:
        // The recipients' replies first: whether any was accepted decides.
        if (!co_await send_group()) co_return Next::close;
        if (!link_ || accepted_recipients_ == 0) {
          reply("554 5.5.1 no valid recipients\r\n");
          co_return Next::go_on;
        }
        break;
      case Verb::bdat:
        break;  // CHUNKING is not offered: on_bdat refuses it
      default:
        ++errors_;
        reply("502 5.5.1 not offered here\r\n");
        co_return Next::go_on;
    }
  }
  if (!link_ && !(by_mx() && command.verb == Verb::bdat)) {
    ++errors_;
    reply("503 5.5.1 EHLO first\r\n");
    co_return Next::go_on;
  }
  if (command.verb == Verb::data) co_return co_await on_data(client, command);
  if (command.verb == Verb::bdat) co_return co_await on_bdat(client, command);
  group_.append(command.line).append("\r\n");
  group_verbs_.push_back(command.verb);
  // Held while the client's next command is already here and may join it.
  const bool more = client_in_.view().find('\n') != std::string_view::npos;
  if (link_->capabilities.pipelining && more && group_verbs_.size() < kMaxGroup)
    co_return Next::go_on;
  const bool sent = co_await send_group();
  co_return sent ? Next::go_on : Next::close;
}

template <class Stream>
asio::awaitable<Session::Next> Session::on_data(Stream& client, const smtp::Command& command) {
  group_.append(command.line).append("\r\n");
  group_verbs_.push_back(command.verb);
  if (!co_await send_group()) co_return Next::close;
  if (last_code_ != 354) co_return Next::go_on;
  Upstream& up = link_->upstream;  // (send_group may have replaced the link)
  if (!co_await flush(client)) co_return Next::close;
  Source<Stream> source{*this, client};
  const auto content = co_await relay::data(source, up, filter_, {}, config_.bare_lf,
                                            config_.smtp_receive_timeout, to_relay_);
  if (content.status == relay::ContentResult::Status::source_ended) {
    link_.reset();  // its message half sent: never for another session
    co_return Next::close;
  }
  if (content.status == relay::ContentResult::Status::bare_line_ending) {
    // relay::data abandoned the relay host's connection, and the message's end cannot be
    // told: Postfix's smtpd_forbid_bare_newline=reject, a reply and the end.
    reply("550 5.6.2 bare CR or LF in the message: refused\r\n");
    spdlog::info("{} {} sent a bare CR or LF in a message; refused", id_, client_label_);
    end_reason_ = "bare line ending";
    link_.reset();
    co_return Next::close;
  }
  up.set_timeout(config_.relay.final_timeout);
  const auto verdict = co_await up.read_reply();
  up.set_timeout(config_.relay.command_timeout);
  // More than the verdict (a reply it sent early, before the content ended): which one is
  // the verdict cannot be told, so the message is the client's to try again.
  const bool unasked =
      verdict.status == smtp::ReplyScan::Status::complete && up.buffered().size() > verdict.length;
  if (verdict.status != smtp::ReplyScan::Status::complete || unasked) {
    // RFC 1047: the relay host may have taken the message; it may then arrive twice.
    reply("451 4.4.2 relay host lost after the message was sent; it may be delivered twice\r\n");
    count_message(0);
    end_reason_ = "relay host lost";
    if (unasked) {
      spdlog::error("{} relay host {} sent more than its reply to a message: \"{}\"", id_,
                    link_->label, log::escape(up.buffered(), 200));
    } else {
      spdlog::warn("{} relay host {} lost before its reply to a message", id_, link_->label);
    }
    link_.reset();
    co_return Next::close;
  }
  relay_reply(up.reply(verdict));
  message_done(up.reply(verdict), verdict.code);
  up.consume(verdict);
  in_transaction_ = false;
  if (verdict.code == 421) {  // the relay host is closing: so is this session
    end_reason_ = "relay host closed (421)";
    link_.reset();
    co_return Next::close;
  }
  if (by_mx()) {  // the verdict first, then the connection kept or the MX's QUIT
    if (!co_await flush(client)) co_return Next::close;
    co_await end_transaction(true);
  }
  co_return Next::go_on;
}

template <class Stream>
asio::awaitable<Session::Next> Session::on_bdat(Stream& client, const smtp::Command& command) {
  if (!command.bdat || !chunking_offered_) {
    ++errors_;
    reply("501 5.5.4 BDAT not available\r\n");
    co_return Next::close;  // its chunk follows: the stream cannot be read as commands
  }
  if (!co_await send_group(true)) co_return Next::close;  // a kept connection's RSET
  if (!link_->capabilities.chunking) {  // the connection was replaced by one without it
    reply("421 4.3.0 " + config_.relay.helo + " the relay host does not take BDAT now\r\n");
    end_reason_ = "relay host without CHUNKING";
    co_return Next::close;
  }
  Upstream& up = link_->upstream;
  to_relay_.assign(command.line);
  to_relay_ += "\r\n";
  Source<Stream> source{*this, client};
  const bool whole = co_await relay::chunk(source, up, command.bdat->size, true,
                                           config_.smtp_receive_timeout, to_relay_);
  if (!whole) {
    link_.reset();  // inside a chunk: never for another session
    co_return Next::close;
  }
  up.set_timeout(command.bdat->last ? config_.relay.final_timeout : config_.relay.command_timeout);
  const auto verdict = co_await up.read_reply();
  up.set_timeout(config_.relay.command_timeout);
  const bool unasked =
      verdict.status == smtp::ReplyScan::Status::complete && up.buffered().size() > verdict.length;
  if (verdict.status != smtp::ReplyScan::Status::complete || unasked) {
    reply(
        "451 4.4.2 relay host lost during BDAT; a message it completed may be delivered "
        "twice\r\n");
    count_message(0);
    if (unasked) {
      spdlog::error("{} relay host {} sent more than its reply to a chunk: \"{}\"", id_,
                    link_->label, log::escape(up.buffered(), 200));
    } else {
      spdlog::warn("{} relay host {} lost before its reply to a chunk", id_, link_->label);
    }
    end_reason_ = "relay host lost";
    link_.reset();
    co_return Next::close;
  }
  reply(up.reply(verdict));
  if (command.bdat->last) {
    in_transaction_ = false;
    message_done(up.reply(verdict), verdict.code);
  }
  up.consume(verdict);
  if (verdict.code == 421) {
    end_reason_ = "relay host closed (421)";
    link_.reset();
    co_return Next::close;
  }
  co_return Next::go_on;
}

// The local client's own AUTH, relayed line by line to the relay host: its 334 challenges to
// the client, the client's responses to it, until a reply other than 334. The connection is
// the client's from here on, whatever the outcome: it is never kept for another session.
template <class Stream>
asio::awaitable<Session::Next> Session::on_auth(Stream& client, const smtp::Command& command) {
  if (!co_await send_group(true)) co_return Next::close;  // a kept connection's RSET
  if (!may_relay_auth()) {  // the connection was replaced by one that must not carry it
    reply("454 4.7.0 authentication not available now\r\n");
    co_return Next::go_on;
  }
  Upstream& up = link_->upstream;
  link_->client_authenticated = true;
  std::string line(command.line);
  line += "\r\n";
  auto scan = co_await up.command(line);
  while (scan.status == smtp::ReplyScan::Status::complete && scan.code == 334) {
    reply(up.reply(scan));
    up.consume(scan);
    if (!co_await flush(client)) co_return Next::close;
    auto frame = framer_.next(client_in_.view());
    while (frame.status == smtp::CommandFramer::Status::need_more) {
      if (!co_await read_client(client, Clock::time_point::max())) co_return Next::close;
      frame = framer_.next(client_in_.view());
    }
    client_in_.consume(frame.consumed);
    std::string_view refused;
    if (frame.status == smtp::CommandFramer::Status::line_too_long ||
        frame.line.size() > kMaxAuthResponse) {
      refused = "500 5.5.6 authentication exchange line is too long\r\n";
    } else if (smtp::has_control_character(frame.line)) {
      refused = "501 5.5.2 bad character in an authentication response\r\n";
    }
    if (!refused.empty()) {
      // "*" ends the exchange (RFC 4954); the relay host's 501 to it is not the client's.
      ++errors_;
      const auto cancelled = co_await up.command("*\r\n");
      if (cancelled.status != smtp::ReplyScan::Status::complete) {
        lost_link("AUTH");
        co_return Next::close;
      }
      up.consume(cancelled);
      reply(refused);
      co_return Next::go_on;
    }
    line.assign(frame.line);
    line += "\r\n";
    scan = co_await up.command(line);
  }
  if (scan.status != smtp::ReplyScan::Status::complete) {
    lost_link("AUTH");
    co_return Next::close;
  }
  const int code = scan.code;
  reply(up.reply(scan));
  up.consume(scan);
  const auto mechanism = command.arguments.substr(0, command.arguments.find(' '));
  spdlog::info("{} AUTH {} from {} relayed to {}: {}", id_, log::escape(mechanism, 20),
               client_label_, link_->label, code);
  services_.metrics.auth(link_->metrics_label, code / 100 == 2 ? "client_ok" : "client_refused");
  if (code == 421) {
    end_reason_ = "relay host closed (421)";
    link_.reset();
    co_return Next::close;
  }
  co_return Next::go_on;
}

asio::awaitable<bool> Session::ensure_link() {
  if (link_) co_return true;
  if (by_mx()) {  // a kept MX connection did not answer RSET: a new one to the destination
    auto connected = co_await connect_targets(services_.policy, route_targets_, "mx", give_up_at_,
                                              worker_.deadlines, id_ + " (" + client_label_ + ")");
    if (!connected.link) {
      reply("421 " + connected.failure.enhanced_code + " " + config_.relay.helo +
            " cannot deliver to " + destination_ + " now: " + reply_safe(connected.failure.text) +
            "\r\n");
      end_reason_ = "MX lost";
      co_return false;
    }
    link_ = std::move(connected.link);
    co_return true;
  }
  link_ = services_.pool_for(worker_).take();
  if (link_) {  // reused once it answers RSET
    link_->set_log_id(id_ + " (" + client_label_ + ")");
    co_return true;
  }
  auto connected =
      co_await connect_relay(services_.policy, worker_.deadlines, id_ + " (" + client_label_ + ")");
  if (!connected.link) {
    reply("421 " + connected.failure.enhanced_code + " " + config_.relay.helo +
          " cannot relay now: " + connected.failure.text + "\r\n");
    end_reason_ = "no relay host";
    co_return false;
  }
  link_ = std::move(connected.link);
  co_return true;
}

bool Session::joins_group(Verb verb) const {
  // Routing by MX, MAIL and RSET are answered here: whatever is waiting goes first.
  return link_ && (verb == Verb::rcpt || verb == Verb::data ||
                   (!by_mx() && (verb == Verb::mail || verb == Verb::rset)));
}

Session::Next Session::on_mx_mail(const smtp::Command& command) {
  if (!held_mail_.empty()) {
    ++errors_;
    reply("503 5.5.1 sender already given\r\n");
    return Next::go_on;
  }
  // Answered now; the MX hears it with the first recipient, and if it refuses it, each
  // recipient gets its refusal.
  held_mail_.assign(command.line);
  in_transaction_ = true;
  reply("250 2.1.0 Ok\r\n");
  return Next::go_on;
}

asio::awaitable<Session::Next> Session::on_mx_rcpt(const smtp::Command& command) {
  const auto domain = smtp::recipient_domain(command.arguments);
  std::string_view answer;  // a reply the proxy gives itself
  if (held_mail_.empty()) {
    ++errors_;
    answer = "503 5.5.1 MAIL first\r\n";
  } else if (!domain) {
    ++errors_;
    answer = "501 5.1.3 a recipient with a domain name is needed here\r\n";
  } else if (!destination_.empty() && *domain != destination_) {
    // RFC 5321 4.5.3.1.10: the local MTA sends these recipients again in a transaction of
    // their own.
    answer = "452 4.5.3 one destination domain per transaction\r\n";
  }
  if (!answer.empty()) {
    // After the replies to the recipients still on their way to the MX: in order.
    if (!co_await send_group()) co_return Next::close;
    reply(answer);
    co_return Next::go_on;
  }
  if (destination_.empty()) co_await open_destination(*domain);
  if (!destination_refusal_.empty()) {
    reply(destination_refusal_);
    co_return Next::go_on;
  }
  group_.append(command.line).append("\r\n");
  group_verbs_.push_back(Verb::rcpt);
  const bool more = client_in_.view().find('\n') != std::string_view::npos;
  if (link_->capabilities.pipelining && more && group_verbs_.size() < kMaxGroup)
    co_return Next::go_on;
  const bool sent = co_await send_group();
  co_return sent ? Next::go_on : Next::close;
}

namespace {

// A destination's lookups, made apart from the session that waits for them (up to
// --relay-mx-timeout): a resolver or policy host that takes longer cannot hold the local
// client past it. The session's wait ends when `done` is cancelled, or at its expiry.
struct RouteWait {
  explicit RouteWait(const asio::any_io_executor& executor) : done(executor) {}
  asio::steady_timer done;
  std::optional<MxRoute> route;
};

// MTA-STS over the route of `domain` (mx_route.hpp apply_sts), and its fetch's failure
// counted.
asio::awaitable<void> apply_mta_sts(SessionServices& services, const std::string& domain,
                                    const std::string& log_id, MxRoute& route) {
  const StsAnswer sts = co_await services.sts->lookup(domain);
  if (!sts.failure.empty()) {
    services.metrics.tls_policy_result("sts", sts.failure);
    if (services.reports) {
      services.reports->record({.policy_domain = domain,
                                .policy = ReportPolicy::sts,
                                .policy_strings = nullptr,
                                .mx_host = {},
                                .receiving_ip = {},
                                .sending_ip = {},
                                .result = sts.failure});
    }
  }
  if (sts.bogus) {
    spdlog::warn("{} MTA-STS of {}: {}; deferred", log_id, domain, sts.why);
    route.targets.clear();
    route.code = 451;
    route.enhanced_code = "4.7.5";
    route.text = "cannot deliver to " + domain + " now: its MTA-STS record is bogus (DNSSEC)";
    co_return;
  }
  if (!sts.policy || sts.policy->mode == StsMode::none) co_return;
  const auto left_out = apply_sts(route, *sts.policy);
  std::string outside;
  for (const auto& host : left_out) outside += (outside.empty() ? "" : ", ") + host;
  spdlog::info("{} MTA-STS policy of {}: mode={} id={}{}{}", log_id, domain,
               to_string(sts.policy->mode), sts.id, sts.from_cache ? " (kept)" : "",
               outside.empty() ? "" : "; MX hosts it does not name, not tried: " + outside);
}

asio::awaitable<void> find_route(std::shared_ptr<RouteWait> wait, SessionServices& services,
                                 std::string domain, std::string log_id) {
  const RelayConfig& relay = services.config.relay;
  auto route = co_await route_by_mx(*services.resolver, domain, relay.mx_port, relay.dane,
                                    relay.mx_refuse_addresses);
  if (!route.targets.empty() && services.sts) {
    co_await apply_mta_sts(services, domain, log_id, route);
  }
  wait->route = std::move(route);
  wait->done.cancel();
}

}  // namespace

asio::awaitable<void> Session::open_destination(const std::string& domain) {
  destination_ = domain;
  const auto give_up_at = Clock::now() + config_.relay.mx_timeout;
  const auto executor = co_await asio::this_coro::executor;
  auto wait = std::make_shared<RouteWait>(executor);
  wait->done.expires_at(give_up_at);
  // co_spawn starts find_route at once, here: answered from the kept answers, it is done
  // before there is anything to wait for.
  asio::co_spawn(executor, find_route(wait, services_, domain, id_), asio::detached);
  if (!wait->route) {
    boost::system::error_code ignored;
    co_await wait->done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (!wait->route) {
    spdlog::warn("{} lookups for {} took longer than --relay-mx-timeout ({}s)", id_,
                 log::escape(domain, 255), config_.relay.mx_timeout.count());
    destination_refusal_ =
        "451 4.4.3 cannot deliver to " + domain + " now: DNS or MTA-STS lookups took too long\r\n";
    co_return;
  }
  MxRoute route = std::move(*wait->route);
  if (route.targets.empty()) {
    spdlog::info("{} mail from {} for {} goes nowhere: {}", id_, client_label_,
                 log::escape(domain, 255), route.text);
    destination_refusal_ =
        std::to_string(route.code) + " " + route.enhanced_code + " " + route.text + "\r\n";
    co_return;
  }
  route_targets_ = route.targets;  // for a new connection if a kept one fails its RSET
  give_up_at_ = give_up_at;
  link_ = co_await kept_link_for(domain, route);
  if (!link_) {
    std::string log_id = id_ + " (" + client_label_ + ")";
    std::string metrics_label = "mx";
    auto connected = co_await connect_targets(services_.policy, std::move(route.targets),
                                              std::move(metrics_label), give_up_at,
                                              worker_.deadlines, std::move(log_id));
    if (!connected.link) {
      destination_refusal_ = "451 " + connected.failure.enhanced_code + " cannot deliver to " +
                             domain + " now: " + reply_safe(connected.failure.text) + "\r\n";
      co_return;
    }
    link_ = std::move(connected.link);
  }
  // The held sender goes first, in the same group as the recipient (when the MX pipelines).
  if (!link_->capabilities.eight_bit_mime) held_mail_ = smtp::without_body_8bitmime(held_mail_);
  group_.append(held_mail_).append("\r\n");
  group_verbs_.push_back(Verb::mail);
}

// A connection kept from an earlier transaction to `domain` is used when the route still
// gives its terms (the same MX host and address, TLS policy and TLSA records); its RSET goes with
// the first commands, and if it is not answered a new connection is made (ensure_link).
asio::awaitable<std::unique_ptr<RelayLink>> Session::kept_link_for(const std::string& domain,
                                                                   const MxRoute& route) {
  auto kept = services_.pool_for(worker_).take(domain);
  if (!kept) co_return nullptr;
  const bool same_terms =
      std::any_of(route.targets.begin(), route.targets.end(),
                  [&](const RelayTarget& target) { return made_under_terms_of(*kept, target); });
  if (same_terms) {
    kept->set_log_id(id_ + " (" + client_label_ + ")");
    co_return kept;
  }
  if (!kept->upstream.lost()) co_await kept->upstream.quit(kQuitTimeout);
  co_return nullptr;
}

asio::awaitable<void> Session::end_transaction(bool keep_link) {
  if (link_ && keep_link && !stopping_) {  // for the next transaction to the same domain
    link_->destination = destination_;
    link_ = services_.pool_for(worker_).put(std::move(link_));
  }
  if (link_ && !link_->upstream.lost()) co_await link_->upstream.quit(kQuitTimeout);
  link_.reset();
  group_.clear();
  group_verbs_.clear();
  held_mail_.clear();
  destination_.clear();
  destination_refusal_.clear();
  route_targets_.clear();
  mail_refusal_.clear();
  accepted_recipients_ = 0;
  in_transaction_ = false;
}

// Routing by MX the proxy answers EHLO itself, before it knows where mail goes: what it can
// promise of any MX (no CHUNKING, no AUTH; the MX's own limits come back as its replies).
std::string Session::mx_ehlo_reply() const {
  std::string ehlo = "250-" + config_.relay.helo + "\r\n250-PIPELINING\r\n250-8BITMIME\r\n";
  if (advertise_tls_ && !tls_ && !listener_.implicit_tls) ehlo += "250-STARTTLS\r\n";
  return ehlo + "250 ENHANCEDSTATUSCODES\r\n";
}

asio::awaitable<bool> Session::send_group(bool reset_now) {
  if (!link_ || (group_verbs_.empty() && !(reset_now && link_->reset_pending))) co_return true;
  std::string lines = std::exchange(group_, {});
  const auto verbs = std::exchange(group_verbs_, {});
  bool sent = false;
  if (link_->reset_pending && !co_await reset_kept_link(lines, sent)) co_return false;
  if (sent) co_return co_await read_replies(verbs);
  if (by_mx() && !verbs.empty() && verbs.front() == Verb::mail &&
      !link_->capabilities.eight_bit_mime) {
    // The held sender was written for a kept connection, and a new one took its place.
    const auto end = lines.find("\r\n");
    lines = smtp::without_body_8bitmime(lines.substr(0, end)) + lines.substr(end);
  }
  if (verbs.size() > 1 && !link_->capabilities.pipelining) {
    // A replacement connection without PIPELINING: one command at a time after all.
    std::size_t begin = 0;
    for (const Verb verb : verbs) {
      const auto end = lines.find("\r\n", begin) + 2;
      if (!co_await link_->upstream.write(std::string_view(lines).substr(begin, end - begin))) {
        lost_link("a command");
        co_return false;
      }
      const std::vector<Verb> one{verb};  // (GCC 12: no braced list in a co_await)
      if (!co_await read_replies(one)) co_return false;
      begin = end;
    }
    co_return true;
  }
  if (verbs.empty()) co_return true;
  if (!co_await link_->upstream.write(lines)) {
    lost_link("a command");
    co_return false;
  }
  co_return co_await read_replies(verbs);
}

asio::awaitable<bool> Session::reset_kept_link(const std::string& lines, bool& sent) {
  while (link_->reset_pending) {
    link_->reset_pending = false;
    Upstream& up = link_->upstream;
    sent = link_->capabilities.pipelining && !lines.empty();
    std::string reset_lines = "RSET\r\n";
    if (sent) reset_lines += lines;
    const bool written = co_await up.write(reset_lines);
    auto reset = smtp::ReplyScan{smtp::ReplyScan::Status::malformed};
    if (written) reset = co_await up.read_reply();
    if (reset.status == smtp::ReplyScan::Status::complete && reset.code == 250) {
      up.consume(reset);
      link_->kept = true;
      services_.metrics.reused(link_->metrics_label);
      co_return true;
    }
    spdlog::debug("{} relay connection H={} not reused: no 250 to RSET", id_, link_->label);
    link_.reset();
    sent = false;
    if (!co_await ensure_link()) co_return false;  // another kept one, or a new one
  }
  co_return true;
}

asio::awaitable<bool> Session::read_replies(const std::vector<Verb>& verbs) {
  Upstream& up = link_->upstream;
  const std::size_t replies_from = to_client_.size();
  for (const Verb verb : verbs) {
    const auto scan = co_await up.read_reply();
    if (scan.status != smtp::ReplyScan::Status::complete) {
      lost_link("a command");
      co_return false;
    }
    const bool refused_mail = !mail_refusal_.empty() && scan.code != 421;
    if (by_mx() && verb == Verb::mail && scan.code != 421) {
      // The held MAIL: the client had its 250; a refusal is its recipients' answer.
      if (scan.code / 100 != 2) mail_refusal_ = smtp::clean_reply(up.reply(scan));
    } else if (by_mx() && verb == Verb::rcpt && refused_mail) {
      reply(mail_refusal_);
    } else {
      relay_reply(up.reply(scan));
      if (verb == Verb::rcpt && scan.code / 100 == 2) ++accepted_recipients_;
    }
    last_code_ = scan.code;
    up.consume(scan);
    if (last_code_ == 421) {  // the relay host is closing: so is this session, with its words
      end_reason_ = "relay host closed (421)";
      link_.reset();
      co_return false;
    }
    if (verb == Verb::mail && last_code_ / 100 == 2) in_transaction_ = true;
    if (verb == Verb::rset) in_transaction_ = false;
  }
  if (up.has_input()) {
    out_of_step(replies_from);
    co_return false;
  }
  co_return true;
}

void Session::out_of_step(std::size_t replies_from) {
  spdlog::error("{} relay host {} sent replies it was not asked for: \"{}\"; connection dropped",
                id_, link_->label, log::escape(link_->upstream.buffered(), 200));
  to_client_.resize(replies_from);
  reply("421 4.4.2 " + config_.relay.helo + " the relay host's replies are out of step\r\n");
  end_reason_ = "relay host out of step";
  link_.reset();
}

asio::awaitable<bool> Session::reset_relay_transaction() {
  if (!link_ || !in_transaction_) co_return true;
  in_transaction_ = false;
  Upstream& up = link_->upstream;
  const std::size_t replies_from = to_client_.size();
  const auto reset = co_await up.command("RSET\r\n");
  if (reset.status != smtp::ReplyScan::Status::complete || reset.code != 250) {
    lost_link("RSET");
    co_return false;
  }
  up.consume(reset);
  if (up.has_input()) {
    out_of_step(replies_from);
    co_return false;
  }
  co_return true;
}

// The relay host's verdict on a message, for the metrics (0: it gave none).
void Session::count_message(int code) {
  const std::string_view verdict = code == 0         ? "lost"
                                   : code / 100 == 2 ? "accepted"
                                   : code / 100 == 4 ? "tempfailed"
                                                     : "rejected";
  services_.metrics.message(link_->metrics_label, verdict);
}

void Session::message_done(std::string_view verdict, int code) {
  count_message(code);
  const unsigned before = link_->messages;
  if (code / 100 == 2) {
    ++link_->messages;
    ++messages_;
  }
  // One line per message; a kept connection's reuse is told here rather than in a line of
  // its own (the connection's own line was written when it was made).
  while (!verdict.empty() && (verdict.back() == '\n' || verdict.back() == '\r'))
    verdict.remove_suffix(1);
  if (link_->kept) {
    spdlog::info("{} message from {} to {} over a kept connection (after {} messages): \"{}\"", id_,
                 client_label_, link_->label, before, log::escape(verdict, 200));
  } else {
    spdlog::info("{} message from {} to {} over a new connection: \"{}\"", id_, client_label_,
                 link_->label, log::escape(verdict, 200));
  }
}

void Session::lost_link(std::string_view during) {
  reply("421 4.4.2 " + config_.relay.helo + " lost the relay host connection\r\n");
  spdlog::warn("{} relay host {} lost during {}", id_, link_ ? link_->label : "", during);
  end_reason_ = "relay host lost";
  link_.reset();
}

// The relay host's EHLO reply, as the local client may use it: STARTTLS only for our own
// TLS, AUTH only as may_relay_auth() says, CHUNKING when the relay has it.
std::string Session::ehlo_reply() const {
  smtp::EhloRewrite rewrite;
  rewrite.offer_starttls = advertise_tls_ && !tls_ && !listener_.implicit_tls;
  rewrite.hide_auth = !may_relay_auth();
  return smtp::rewrite_ehlo_reply(link_->ehlo_reply, rewrite);
}

// A local client may use the relay host's AUTH itself when the proxy has no credentials of
// its own for that host, the connection to it is encrypted, and so is the client's own unless
// --relay-auth-clear-hosts names it: a password never crosses a network in the clear that the
// operator did not choose, and the proxy never lends its own login.
bool Session::may_relay_auth() const {
  return relay_auth_usable() && (tls_ || auth_in_clear_);
}

bool Session::relay_auth_usable() const {
  return !by_mx() && link_ && link_->capabilities.auth && link_->tls_facts &&
         link_->auth_user.empty() &&
         !services_.credentials.find(link_->host.name, link_->host.port);
}

asio::awaitable<void> Session::finish() {
  // Kept for the next session unless a stop is under way or a transaction is still open
  // there (an RSET mid-BDAT is read differently by some MTAs).
  if (link_ && !stopping_ && !in_transaction_ && !by_mx())
    link_ = services_.pool_for(worker_).put(std::move(link_));
  if (link_ && !link_->upstream.lost()) co_await link_->upstream.quit(kQuitTimeout);
  link_.reset();
  deadline_.cancel();
  if (tls_) tls_->shutdown();
  error_code ignored;
  client_.shutdown(tcp::socket::shutdown_both, ignored);
  client_.close(ignored);
  spdlog::info("{} relay session client={} messages={} end=\"{}\"", id_, client_label_, messages_,
               end_reason_);
}

}  // namespace

SessionServices::SessionServices(Runtime& runtime_in)
    : runtime(runtime_in),
      config(runtime_in.config),
      credentials(config.relay.auth_file.empty() ? Credentials()
                                                 : Credentials::load(config.relay.auth_file)),
      metrics(runtime_in.metrics.registry()),
      reports(config.relay.tls_rpt_dir.empty()
                  ? nullptr
                  : std::make_unique<TlsReports>(config.relay.tls_rpt_dir, config.hostname)),
      policy{config, tls::ClientContext::create(relay_tls_options(config)), credentials, &metrics,
             reports.get()} {}

void SessionServices::start_serving(asio::io_context& io) {
  if (config.relay.by_mx()) {
    resolver = dns::Resolver::create(io.get_executor(),
                                     {.trust_anchor_file = config.relay.dns_trust_anchor,
                                      .forwarders = config.relay.dns_forwarders});
    if (config.relay.mta_sts) {
      sts = StsPolicies::create(io.get_executor(), resolver, policy.tls,
                                {.cache_dir = config.relay.mta_sts_cache,
                                 .refused = config.relay.mx_refuse_addresses,
                                 .fetch_timeout = std::chrono::seconds(30),
                                 .port = 443});
    }
    validation_timer_ = std::make_unique<asio::steady_timer>(io);
    asio::co_spawn(io, watch_validation(), [](std::exception_ptr e) {
      try {
        if (e) std::rethrow_exception(e);
      } catch (const std::exception& error) {
        spdlog::error("DNSSEC validation check stopped: {}", error.what());
      }
    });
    if (reports) {
      report_timer_ = std::make_unique<asio::steady_timer>(io);
      asio::co_spawn(io, write_reports(), asio::detached);
    }
    return;
  }
  probe_ = std::make_unique<RelayProbe>(io, config);
  probe_->start();
}

void SessionServices::stop_serving() {
  stopping_ = true;
  if (probe_) probe_->stop();
  if (sts) sts->stop();
  if (resolver) resolver->stop();
  if (validation_timer_) {
    asio::post(validation_timer_->get_executor(), [this] { validation_timer_->cancel(); });
  }
  if (report_timer_) {
    asio::post(report_timer_->get_executor(), [this] { report_timer_->cancel(); });
  }
  if (reports) reports->write();
}

SessionServices::~SessionServices() {
  if (reports) reports->write();  // with what the sessions that drained added
}

asio::awaitable<void> SessionServices::write_reports() {
  while (!stopping_) {
    report_timer_->expires_after(std::chrono::minutes(5));
    boost::system::error_code ec;
    co_await report_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) reports->write();
  }
}

namespace {

// The owner name of the first record in a trust anchor file ("." in Debian's root.key).
std::string first_anchor_name(const std::string& file) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    const auto start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == ';' || line[start] == '#') continue;
    return line.substr(start, line.find_first_of(" \t", start) - start);
  }
  return {};
}

}  // namespace

asio::awaitable<void> SessionServices::watch_validation() {
  const std::string anchor = first_anchor_name(config.relay.dns_trust_anchor);
  if (anchor.empty()) {
    spdlog::error(
        "--dns-trust-anchor {} holds no trust anchor: nothing is DNSSEC-validated, DANE is "
        "unavailable and every delivery by MX is opportunistic",
        log::escape(config.relay.dns_trust_anchor, 200));
    validating_ = true;  // ready: there is nothing to wait for
    metrics.dns_validating(false);
    co_return;
  }
  asio::steady_timer& timer = *validation_timer_;
  bool first = true;
  while (!stopping_) {
    const auto answer = co_await resolver->lookup(anchor, dns::RecordType::dnskey);
    const bool validating =
        answer.status == dns::Answer::Status::records && answer.security == dns::Security::secure;
    if (first || validating != validating_) {
      if (validating) {
        spdlog::info("DNSSEC validation works (the keys of {} are secure): routing by MX ready",
                     log::escape(anchor, 255));
      } else {
        spdlog::error(
            "DNSSEC validation does not work (the keys of trust anchor {}: {}{}): DANE is "
            "unavailable and deliveries by MX defer until it does",
            log::escape(anchor, 255), dns::to_string(answer.security),
            answer.why.empty() ? "" : ", " + log::escape(answer.why, 200));
      }
    }
    first = false;
    validating_ = validating;
    metrics.dns_validating(validating);
    if (stopping_) break;
    timer.expires_after(config.backend_probe_interval);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

LinkPool& SessionServices::pool_for(const WorkerState& worker) {
  std::lock_guard lock(pools_mutex_);
  auto& pool = pools_[&worker];
  if (!pool) pool = std::make_unique<LinkPool>(config.relay);
  return *pool;
}

void SessionServices::start(tcp::socket socket, std::size_t listener_index, WorkerState& worker) {
  const auto executor = socket.get_executor();
  auto session = std::make_shared<Session>(std::move(socket), listener_index, *this, worker);
  spawn_session(session, session->run(), executor, worker.memory);
}

}  // namespace stp::outbound
