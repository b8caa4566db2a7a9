// One client connection, from accept to close: the client stream (plain, then TLS after
// STARTTLS; or TLS from the first byte), the connection to the MTA, their buffers, the SMTP
// state the proxy needs, and the timer that bounds every wait.
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
// streamed through in bounded pieces.
//
// Trusts: the configuration and the MTA's replies (size-bounded and syntax-checked). Does not
// trust anything the client sends: every line is bounded, nothing after STARTTLS in the same
// read is ever executed, a client's XCLIENT/XFORWARD never reaches the MTA, and only the MTA's
// own final reply to a message ever reaches the client.
#pragma once

#include "acl/connection_counter.hpp"
#include "metrics/metrics.hpp"
#include "proxy/config.hpp"
#include "proxy/input_buffer.hpp"
#include "proxy/name_lookup.hpp"
#include "smtp/data_filter.hpp"
#include "smtp/smtp_parse.hpp"
#include "smtp/xclient.hpp"
#include "tls/session_facts.hpp"
#include "tls/tls_context.hpp"
#include "tls/tls_stream.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace stp {

class Session;

// The sessions of one worker thread; touched only on that thread.
using SessionList = std::list<Session*>;

// What all sessions share; lives as long as the server.
struct SessionServices {
  SessionServices(const Config& config, std::shared_ptr<const tls::ServerContext> tls,
                  metrics::Metrics& metrics);

  std::shared_ptr<const tls::ServerContext> current_tls() const { return tls.load(); }

  const Config& config;
  metrics::Metrics& metrics;
  std::atomic<std::shared_ptr<const tls::ServerContext>> tls;
  NameResolver resolver;
  std::optional<boost::asio::ip::tcp::endpoint> backend_endpoint;  // when --backend is an address
  std::atomic<std::uint64_t> next_session_id;
  // Connections accepted and not yet closed: counted by the acceptor (for --max-connections)
  // before the session exists, and uncounted when it is destroyed.
  std::atomic<std::size_t> sessions_alive{0};
  acl::ConnectionCounter sessions_per_host;  // --max-connections-per-host
  // The MTA's EHLO reply to the probe (proxy-v2 mode); null until one arrived.
  std::atomic<std::shared_ptr<const std::string>> mta_ehlo_reply;
  std::atomic<bool> mta_probed{false};  // the first probe has finished

  // Replies that name this host, formatted once.
  std::string reply_service_unavailable;   // 421 4.3.2: the MTA cannot be reached
  std::string reply_mta_refused;           // 421 4.3.2: the MTA refused the session
  std::string reply_identity_refused;      // 421 4.7.0: the MTA would not take XCLIENT
  std::string reply_mta_lost;              // 421 4.4.2: the MTA went away
  std::string reply_timeout;               // 421 4.4.2: the client went silent
  std::string reply_shutdown;              // 421 4.3.2: the proxy is stopping
  std::string reply_greeting;              // 220: the proxy's own (proxy-v2 mode)
  std::string reply_too_many_connections;  // 421 4.7.0: --max-connections
  std::string reply_too_many_errors;       // 421 4.7.0: --max-errors
  std::string reply_message_abandoned;     // 421 4.3.0: a BDAT message abandoned, no way back
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  // Registers itself in `sessions` until it ends. The acceptor has already counted it in
  // services.sessions_alive; the session uncounts itself when destroyed.
  Session(boost::asio::ip::tcp::socket client, std::size_t listener_index,
          SessionServices& services, SessionList& sessions);

  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  boost::asio::awaitable<void> run();

  // Shutdown, called on the session's own thread. drain(): a session with no mail
  // transaction open is told 421 and closed at once, the others when their transaction ends.
  // terminate(): every session is told 421 and closed now; an unfinished message is abandoned.
  void drain();
  void terminate();

 private:
  enum class Outcome { start_tls, close };
  // Why a group of pipelined commands stops where it does.
  // `attach`: the command was not taken; it is read again once the MTA connection is open.
  enum class GroupEnd { none, wait_reply, data, bdat, attach, start_tls, quit, close };

  struct PendingReply {
    enum class Kind : std::uint8_t { local, mta, mta_silent } kind;
    smtp::Verb verb = smtp::Verb::other;
    bool message_end = false;     // BDAT LAST: the MTA's verdict on a message
    bool carries_header = false;  // BDAT: the chunk that carries the trace header
    std::string_view local = {};  // Kind::local: a reply with static storage...
    std::string text = {};        // ...or one made for this command
  };

  template <class Stream>
  boost::asio::awaitable<bool> open_backend(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> attach_backend(Stream& client, bool greet_client);
  template <class Stream>
  boost::asio::awaitable<Outcome> serve(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> flush_group(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> relay_data(Stream& client);
  template <class Stream>
  boost::asio::awaitable<bool> relay_bdat_chunk(Stream& client);
  template <class Stream>
  // `deadline`: the latest the read may end, besides the receive timeout.
  boost::asio::awaitable<bool> read_client(Stream& client, bool idle,
                                           std::chrono::steady_clock::time_point deadline =
                                               std::chrono::steady_clock::time_point::max());
  // `last`: the session closes after these bytes (with TLS, close_notify goes with them).
  template <class Stream>
  boost::asio::awaitable<bool> write_client(Stream& client, std::string_view bytes,
                                            bool last = false);

  boost::asio::awaitable<bool> read_proxy_header();
  boost::asio::awaitable<bool> admit();
  void learn_client(const boost::asio::ip::tcp::endpoint& remote,
                    const boost::asio::ip::tcp::endpoint& local);
  boost::asio::awaitable<bool> handshake();
  boost::asio::awaitable<bool> connect_backend();
  bool backend_releasable() const;
  boost::asio::awaitable<void> release_backend();
  boost::asio::awaitable<smtp::ReplyScan> read_mta_reply();
  boost::asio::awaitable<bool> write_mta(std::string_view bytes);
  boost::asio::awaitable<void> wait_for_client_name();
  boost::asio::awaitable<void> wait_for_first_probe();

  GroupEnd on_line(std::string_view line);
  GroupEnd on_line_too_long();
  GroupEnd on_command(const smtp::Command& command);
  GroupEnd on_bdat(const smtp::Command& command);
  GroupEnd discard_bdat(const smtp::BdatArguments& arguments);
  GroupEnd refuse_bdat(const smtp::Command& command);
  GroupEnd abandon_bdat_message(std::string_view reply);
  bool can_reattach() const;
  void detach_backend();
  void reset_mta();
  GroupEnd cancel_auth(std::string_view reply);
  void forward(const smtp::Command& command);
  void learn_mta_extensions(std::string_view ehlo_reply);
  void reply_locally(std::string_view reply);
  void on_mta_reply(const PendingReply& pending, int code, std::string_view reply);
  void count_message(int code);
  void start_tls_stream();
  void record_handshake_failure(const boost::system::error_code& ec);
  void record_tls_session();
  std::string received_header();
  bool refused_by_policy(smtp::Verb verb);
  std::string proxy_v2_header() const;
  std::optional<GroupEnd> answer_while_detached(const smtp::Command& command);
  void violation(metrics::Violation kind);
  bool should_stop_before_command() const;
  void wake();

  void start_client_name_lookup();
  void arm(std::chrono::steady_clock::duration timeout);
  void arm_at(std::chrono::steady_clock::time_point deadline);
  void arm_release(std::chrono::steady_clock::time_point when);
  void start_watchdog();
  void on_deadline();
  void finish();

  SessionServices& services_;
  const Config& config_;
  const Listener& listener_;
  const metrics::Metrics::ListenerMetrics& listener_metrics_;
  SessionList& sessions_;
  SessionList::iterator registration_;
  std::string id_;
  std::chrono::steady_clock::time_point started_;

  boost::asio::ip::tcp::socket client_;
  boost::asio::ip::tcp::socket backend_;
  std::optional<tls::TlsStream> tls_;
  ClientIdentity identity_;
  std::string client_label_;  // "[addr]:port" for logs

  InputBuffer client_in_;
  InputBuffer backend_in_;
  std::string to_mta_;
  std::string to_client_;
  std::vector<PendingReply> pending_;
  smtp::CommandFramer framer_;
  DataFilter data_filter_;

  // Deadline for whatever the session waits on; the watchdog cancels both sockets at it.
  boost::asio::steady_timer watchdog_;
  std::chrono::steady_clock::time_point deadline_;
  bool watchdog_pending_ = false;
  bool timed_out_ = false;
  // While the client is idle: when the MTA connection is given back (the watchdog wakes the
  // wait for the client at it), and whether it woke it for that.
  std::chrono::steady_clock::time_point release_at_ = std::chrono::steady_clock::time_point::max();
  bool release_due_ = false;

  struct NameLookup;
  std::shared_ptr<NameLookup> name_lookup_;

  // SMTP state.
  bool advertise_tls_ = false;
  bool tls_active_ = false;
  bool security_failure_ = false;   // STARTTLS could not be offered after all: only QUIT
  bool auth_continuation_ = false;  // the MTA sent 334: the next line is an AUTH response
  bool data_accepted_ = false;      // the MTA answered DATA with 354
  bool mta_reset_due_ = false;      // the next group starts with the proxy's own RSET
  bool mta_abandon_due_ = false;    // after this group the MTA connection is closed
  unsigned abandoned_messages_ = 0;
  bool mta_lost_ = false;
  bool closing_ = false;
  bool in_transaction_ = false;  // the MTA accepted MAIL and has not finished the message
  bool waiting_for_command_ = false;
  bool draining_ = false;
  bool terminating_ = false;
  bool starttls_counted_ = false;
  bool extended_helo_ = false;     // the client's last greeting was EHLO
  bool backend_attached_ = false;  // connected to the MTA (deferred, or given back idle)
  bool reattaching_ = false;       // the MTA connection was given back: the next one resumes
  // The client's HELO/EHLO line, for an MTA connection that did not hear it (proxy-v2 before
  // TLS; a reopened connection: made again from helo_name_), and what the MTA made of the last.
  std::string replay_helo_;
  enum class HeloState : std::uint8_t { none, accepted, unknown } helo_state_ = HeloState::none;
  bool authenticated_ = false;  // the MTA accepted AUTH
  // What the MTA's last EHLO reply offered this client (none after HELO, or before EHLO), and
  // whether the client was told CHUNKING (not when its EHLO was answered from the probe).
  bool mta_chunking_ = false;
  bool chunking_shown_ = false;
  std::uint64_t mta_size_limit_ = 0;  // 0: no SIZE limit given
  // Where the MTA stands in a BDAT message (RFC 3030). Open: it accepted chunks of one (the
  // trace header among them, or not yet), and takes only BDAT, RSET, NOOP and QUIT until the
  // LAST (Exim reads anything else as the end of chunking, and the next chunk as commands).
  // Refused: a chunk was refused, here or by the MTA; the MTA was told RSET, and every BDAT is
  // refused here until RSET, MAIL or a greeting, so no later chunk completes the message.
  enum class BdatMessage : std::uint8_t { none, open, open_with_header, refused };
  BdatMessage bdat_message_ = BdatMessage::none;
  std::uint64_t bdat_message_bytes_ = 0;  // the client's chunk sizes so far, for the MTA's SIZE
  bool bdat_header_due_ = false;     // this BDAT chunk carries the header: command not yet sent
  bool discard_bdat_chunk_ = false;  // the BDAT was refused here: swallow its chunk
  tls::ClientCertificateRequest certificate_request_ = tls::ClientCertificateRequest::none;
  std::optional<tls::SessionFacts> tls_facts_;
  smtp::BdatArguments bdat_;
  std::string helo_name_;

  // For the session's log line.
  std::string_view end_reason_ = "client closed";
  unsigned commands_ = 0;
  unsigned local_rejects_ = 0;
  unsigned messages_accepted_ = 0;
  unsigned messages_rejected_ = 0;
  unsigned messages_tempfailed_ = 0;
  std::uint64_t bytes_from_client_ = 0;
  std::uint64_t bytes_to_client_ = 0;
  bool stuffed_bare_line_ending_ = false;
  unsigned errors_ = 0;            // 4xx/5xx replies, the proxy's and the MTA's
  bool counted_for_host_ = false;  // holds a place in sessions_per_host
};

}  // namespace stp
