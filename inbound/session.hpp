// One inbound client connection, from accept to close: the client stream (plain, then TLS
// after STARTTLS; or TLS from the first byte), its link to the MTA (an Upstream), and the
// SMTP state the proxy needs to check commands and to identify the client to the MTA.
//
// The proxy greets the client itself; the MTA connection is made at the first command that
// needs the MTA (in proxy-v2 mode once the TLS outcome is known), and given back when the
// client idles outside a mail transaction (--backend-idle-timeout): it is reopened, the client
// identified again and its HELO/EHLO replayed, at the next command that needs the MTA. So idle
// and trickling clients cost the MTA nothing, before their greeting or after it.
//
// The protocol loop is written once, templated on the client stream type. Commands the client
// pipelined are taken as a group: the proxy answers what it must answer itself (STARTTLS,
// refused commands) and forwards the rest in one write; it then collects the MTA's replies and
// sends all replies back in the client's order, in one write. DATA content and BDAT chunks are
// streamed through in bounded pieces (proxy/relay.hpp). A client awaited between commands
// holds no coroutine: the session parks on a readiness wait and resumes when woken.
//
// Trusts: the configuration and the MTA's replies (size-bounded and syntax-checked). Does not
// trust anything the client sends: every line is bounded, nothing after STARTTLS in the same
// read is ever executed, a client's XCLIENT/XFORWARD never reaches the MTA, and only the MTA's
// own final reply to a message ever reaches the client.
#pragma once

#include "acl/connection_counter.hpp"
#include "inbound/replies.hpp"
#include "proxy/deadline.hpp"
#include "proxy/input_buffer.hpp"
#include "proxy/name_lookup.hpp"
#include "proxy/runtime.hpp"
#include "proxy/upstream.hpp"
#include "smtp/data_filter.hpp"
#include "smtp/smtp_parse.hpp"
#include "smtp/xclient.hpp"
#include "tls/session_facts.hpp"
#include "tls/tls_stream.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace stp::inbound {

// What all inbound sessions share; lives as long as the server.
class SessionServices : public SessionFactory {
 public:
  explicit SessionServices(Runtime& runtime);

  void start(boost::asio::ip::tcp::socket socket, std::size_t listener_index,
             WorkerState& worker) override;

  Runtime& runtime;
  const Config& config;
  metrics::Metrics& metrics;
  NameResolver resolver;
  Upstream::Target mta;  // --backend
  std::atomic<std::uint64_t> next_session_id;
  acl::ConnectionCounter sessions_per_host;  // --max-connections-per-host
  HostReplies replies;
};

class Session final : public Connection,
                      public std::enable_shared_from_this<Session>,
                      private Deadline::Owner {
 public:
  // Registers itself in worker.sessions until it ends. The acceptor has already counted it in
  // runtime.sessions_alive; the session uncounts itself when destroyed.
  Session(boost::asio::ip::tcp::socket client, std::size_t listener_index,
          SessionServices& services, WorkerState& worker);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs the session on its own (its completion handler only logs an internal error).
  static void start(std::shared_ptr<Session> session);

  void drain() override;
  void terminate() override;

 private:
  using Clock = std::chrono::steady_clock;
  // Longest HELO/EHLO name kept (a domain is at most 255 bytes); a longer one is cut, and then
  // cannot be replayed to a reopened MTA connection as the client sent it.
  static constexpr std::size_t kMaxHeloName = 255;
  // A client silent this long between commands parks the session (see park()).
  static constexpr auto kParkAfter = std::chrono::milliseconds(250);
  enum class Outcome : std::uint8_t { park, start_tls, close };
  // Why a group of pipelined commands stops where it does.
  // `attach`: the command was not taken; it is read again once the MTA connection is open.
  enum class GroupEnd : std::uint8_t {
    none,
    wait_reply,
    data,
    bdat,
    attach,
    start_tls,
    quit,
    close
  };
  enum class Read : std::uint8_t { ok, ended, park };
  // Where the session stands with the client's stream.
  enum class Stage : std::uint8_t { plain, tls };
  // The connection to the MTA. `released`: given back while the client idled (or to abandon a
  // BDAT message); the next one resumes the client's session there.
  enum class MtaLink : std::uint8_t { none, attached, released };
  // The MTA's mail transaction, as its replies showed it.
  enum class Transaction : std::uint8_t {
    none,
    mail,  // it accepted MAIL and has not finished the message
    data,  // it answered DATA with 354: the content follows
  };
  // Where the MTA stands in a BDAT message (RFC 3030). Open: it accepted chunks of one (the
  // trace header among them, or not yet), and takes only BDAT, RSET, NOOP and QUIT until the
  // LAST (Exim reads anything else as the end of chunking, and the next chunk as commands).
  // Refused: a chunk was refused, here or by the MTA; the MTA was told RSET, and every BDAT is
  // refused here until RSET, MAIL or a greeting, so no later chunk completes the message.
  enum class BdatMessage : std::uint8_t { none, open, open_with_header, refused };
  // What becomes of the chunk after a BDAT command.
  enum class ChunkFate : std::uint8_t { relay, relay_with_header, discard };
  enum class HeloState : std::uint8_t { none, accepted, unknown };
  enum class Stop : std::uint8_t { no, drain, terminate };

  struct PendingReply {
    // local_repeat: a refusal that is not another error (a refused message's later chunks).
    enum class Kind : std::uint8_t { local, local_repeat, mta, mta_silent } kind;
    smtp::Verb verb = smtp::Verb::other;
    bool message_end = false;     // BDAT LAST: the MTA's verdict on a message
    bool carries_header = false;  // BDAT: the chunk that carries the trace header
    std::string_view local = {};  // Kind::local: a reply with static storage...
    std::string text = {};        // ...or one made for this command
  };
  struct Chunk {
    smtp::BdatArguments size;
    ChunkFate fate = ChunkFate::relay;
  };
  // Reads more of the client's bytes for a relay (proxy/relay.hpp's Source).
  template <class Stream>
  struct ContentSource;

  // Life (session.cpp).
  boost::asio::awaitable<void> run();
  boost::asio::awaitable<void> proceed();
  void park();
  bool admit_host();
  void learn_client(const boost::asio::ip::tcp::endpoint& remote,
                    const boost::asio::ip::tcp::endpoint& local);
  boost::asio::awaitable<bool> read_proxy_header();
  void finish();
  void start_client_name_lookup();
  boost::asio::awaitable<void> wait_for_client_name();
  boost::asio::awaitable<void> wait_for_first_probe();
  void wake();
  bool stopping() const { return stop_ != Stop::no; }
  bool should_stop_before_command() const;
  void violation(metrics::Violation kind);
  void on_deadline_expired() override;
  void on_wake_point() override;

  // TLS (session_tls.cpp).
  void start_tls_stream();
  boost::asio::awaitable<bool> handshake();
  void record_handshake_failure(const boost::system::error_code& ec);
  void record_tls_session();
  void forget_plaintext_state();

  // The MTA link (mta_link.cpp).
  struct Attach {
    // Why the MTA connection could not be had; `none`: it is attached.
    enum class Failure : std::uint8_t { none, unreachable, lost, refused, greeting, identity };
    Failure failure = Failure::none;
    std::string greeting;  // the MTA's greeting, or its refusal when it greeted with one
    static Attach failed(Failure why) { return Attach{why, {}}; }
  };
  boost::asio::awaitable<Attach> connect_and_identify(bool keep_greeting);
  boost::asio::awaitable<Attach> identify_with_xclient(bool keep_greeting);
  boost::asio::awaitable<Attach> replay_greeting();
  bool backend_releasable() const;
  boost::asio::awaitable<void> release_backend();
  boost::asio::awaitable<void> close_backend();  // QUIT and close (release_backend's part)
  void detach_backend();
  bool can_reattach() const;
  std::string proxy_v2_header() const;
  std::string received_header();
  bool attached() const { return link_ == MtaLink::attached; }
  bool tls_active() const { return stage_ == Stage::tls; }

  // Commands (commands.cpp).
  GroupEnd on_line(std::string_view line);
  GroupEnd on_line_too_long();
  GroupEnd on_command(const smtp::Command& command);
  static GroupEnd group_end_after(smtp::Verb verb);
  GroupEnd on_starttls(const smtp::Command& command);
  GroupEnd on_greeting(const smtp::Command& command);
  GroupEnd on_bdat(const smtp::Command& command);
  std::string_view bdat_refusal(const smtp::BdatArguments& arguments, std::uint64_t so_far);
  GroupEnd discard_bdat(const smtp::BdatArguments& arguments);
  GroupEnd refuse_bdat(const smtp::Command& command);
  GroupEnd abandon_bdat_message(std::string_view reply);
  GroupEnd cancel_auth(std::string_view reply);
  std::optional<GroupEnd> answer_while_detached(const smtp::Command& command);
  GroupEnd on_health_check(const smtp::Command& command);
  // RSET, NOOP and QUIT, answered here; nullopt for any other verb.
  std::optional<GroupEnd> answer_without_mta(smtp::Verb verb);
  GroupEnd answer_ehlo_from_probe(const smtp::Command& command);
  void remember_greeting(const smtp::Command& command, bool extended);
  bool refused_by_policy(smtp::Verb verb);
  void forward(const smtp::Command& command);
  void reset_mta();
  void reply_locally(std::string_view reply);
  void on_mta_reply(const PendingReply& pending, int code, std::string_view reply);
  void on_ehlo_reply(const PendingReply& pending, int code, std::string_view reply);
  void on_bdat_reply(const PendingReply& pending, int code);
  void learn_mta_extensions(std::string_view ehlo_reply);
  void count_starttls_offer();
  void count_message(int code);

  // The client: the protocol loop, replies, content (client_io.cpp).
  template <class Stream>
  boost::asio::awaitable<Outcome> serve(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> take_group(Stream& client, GroupEnd& end);
  template <class Stream>
  boost::asio::awaitable<bool> open_backend(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> attach_backend(Stream& client, bool greet_client);
  template <class Stream>
  boost::asio::awaitable<bool> flush_group(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> relay_data(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> relay_bdat_chunk(Stream& client);
  // `deadline`: the latest the read may end, besides the receive timeout. With `idle`, the
  // session may park instead (Read::park) when the stream allows it.
  template <class Stream>
  boost::asio::awaitable<Read> read_client(Stream& client, bool idle,
                                           Clock::time_point deadline = Clock::time_point::max());
  template <class Stream>
  boost::asio::awaitable<bool> wait_idle(Stream& client, boost::system::error_code& ec);
  template <class Stream>
  boost::asio::awaitable<void> end_read(Stream& client, const boost::system::error_code& ec);
  // The one way out to the client: every reply is added here (counted, and a 421 ends the
  // session), then sent by send_replies(); say() is both for a reply outside a group.
  void add_reply(std::string_view text, PendingReply::Kind kind);
  void end_session(std::string_view reason);
  template <class Stream>
  boost::asio::awaitable<bool> send_replies(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> say(Stream& client, std::string_view text);
  template <class Stream>
  boost::asio::awaitable<bool> write_client(Stream& client, std::string_view bytes, bool last);

  SessionServices& services_;
  const Config& config_;
  const Listener& listener_;
  const metrics::Metrics::ListenerMetrics& listener_metrics_;
  WorkerState& worker_;
  ConnectionList::iterator registration_;
  std::string id_;
  Clock::time_point started_;

  boost::asio::ip::tcp::socket client_;
  std::optional<tls::TlsStream> tls_;
  Deadline deadline_;
  Upstream mta_;
  ClientIdentity identity_;
  std::string client_label_;  // "[addr]:port" for logs

  InputBuffer client_in_;
  std::string to_mta_;
  std::string to_client_;
  std::vector<PendingReply> pending_;
  smtp::CommandFramer framer_;
  DataFilter data_filter_;
  // The result of the wait the session was parked on, for the read that resumes it.
  std::optional<boost::system::error_code> parked_wait_;

  struct NameLookup;
  std::shared_ptr<NameLookup> name_lookup_;

  // Session state.
  Stage stage_ = Stage::plain;
  Stop stop_ = Stop::no;
  MtaLink link_ = MtaLink::none;
  Transaction transaction_ = Transaction::none;
  BdatMessage bdat_message_ = BdatMessage::none;
  HeloState helo_state_ = HeloState::none;
  bool advertise_tls_ = false;
  bool security_failure_ = false;   // STARTTLS could not be offered after all: only QUIT
  bool auth_continuation_ = false;  // the MTA sent 334: the next line is an AUTH response
  bool authenticated_ = false;      // the MTA accepted AUTH
  bool mta_reset_due_ = false;      // the next group starts with the proxy's own RSET
  bool greeting_due_ = false;       // after STARTTLS, until the client greets again
  bool health_check_ = false;       // a load balancer's header named no client: no MTA
  bool mta_abandon_due_ = false;    // after this group the MTA connection is closed
  bool ending_ = false;             // the replies being sent are the session's last
  bool waiting_for_command_ = false;
  bool starttls_counted_ = false;
  bool extended_helo_ = false;  // the client's last greeting was EHLO
  // What the MTA's last EHLO reply offered this client (none after HELO, or before EHLO), and
  // whether the client was told CHUNKING (not when its EHLO was answered from the probe).
  bool mta_chunking_ = false;
  bool chunking_shown_ = false;
  bool counted_for_host_ = false;  // holds a place in sessions_per_host
  unsigned abandoned_messages_ = 0;
  std::uint64_t mta_size_limit_ = 0;      // 0: no SIZE limit given
  std::uint64_t bdat_message_bytes_ = 0;  // the client's chunk sizes so far, for the MTA's SIZE
  Chunk chunk_;
  // The client's HELO/EHLO line, for an MTA connection that did not hear it (proxy-v2 before
  // TLS; a reopened connection: made again from helo_name_).
  std::string replay_helo_;
  std::string helo_name_;
  tls::ClientCertificateRequest certificate_request_ = tls::ClientCertificateRequest::none;
  std::optional<tls::SessionFacts> tls_facts_;

  // For the session's log line.
  std::string_view end_reason_ = "client closed";
  unsigned commands_ = 0;
  unsigned local_rejects_ = 0;
  unsigned messages_accepted_ = 0;
  unsigned messages_rejected_ = 0;
  unsigned messages_tempfailed_ = 0;
  unsigned errors_ = 0;  // 4xx/5xx replies, the proxy's and the MTA's
  std::uint64_t bytes_from_client_ = 0;
  std::uint64_t bytes_to_client_ = 0;
};

}  // namespace stp::inbound
