// loadgen: an SMTP load generator for benchmarking TLS fronts (smtp-tls-proxy, nginx's mail
// proxy) and plain MTAs (smtp-sink).
//
// One thread, one io_context, one C++20 coroutine per SMTP session: `--concurrency` workers
// each run sessions one after another until `--sessions` have been started. A session
// connects (optionally from `--bind`), speaks plain SMTP, STARTTLS or implicit TLS, sends
// `--msgs-per-session` messages of `--msg-size` bytes (with `--pipelining`, when the server
// offers PIPELINING, MAIL/RCPT/DATA as one group sent along with the previous message's
// content) and QUITs. `--hold N` instead opens N
// sessions past EHLO, holds them idle for `--hold-seconds` once all are open, then QUITs.
//
// Prints one JSON line on stdout: sessions ok/failed with failure reasons, rates, session and
// handshake latency percentiles and its own CPU time. Exits 1 when more than 1 % of the
// sessions failed, 2 on a usage error.
//
// Every wait is bounded: each network operation by `--io-timeout`, the whole run by
// `--time-limit`. Trusts nothing the server sends: every unexpected reply is a counted
// failure, never an exception that escapes a session.
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <iostream>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------------------------------ options

enum class Mode { plain, starttls, implicit };

struct Options {
  Mode mode = Mode::starttls;
  std::string host = "127.0.0.1";
  std::uint16_t port = 25;
  std::vector<std::uint16_t> alternate_ports;  // sessions go round-robin over port and these
  std::uint64_t sessions = 1000;
  std::uint64_t concurrency = 50;
  std::uint64_t msgs_per_session = 1;
  std::uint64_t msg_size = 1024;
  bool pipelining = false;
  std::uint64_t recipient_domains = 0;  // >0: recipients at d0.SUFFIX ... d(N-1).SUFFIX in turn
  std::string recipient_suffix = "bench.example";
  bool nagle = false;  // leave Nagle's algorithm on, as most SMTP clients do
  std::string client_cert;
  std::string client_key;
  bool tls_resume = false;
  std::uint64_t hold = 0;
  double hold_seconds = 10;
  std::string bind;
  double time_limit = 300;
  double io_timeout = 30;
  std::uint64_t seed = 1;
  std::string tls_sigalgs;  // e.g. ECDSA+SHA256 or rsa_pss_rsae_sha256: picks the server's cert
  std::string tls_verify;   // CA file; empty: no verification (self-signed servers)
  std::string ehlo_name = "loadgen.bench.example";
};

constexpr std::string_view kUsage = R"(Usage: loadgen [FLAG]...
An SMTP load generator: one event loop, one coroutine per session, one JSON line out.

  --mode plain|starttls|implicit  how TLS starts (default: starttls)
  --host ADDR                     server address or name (default: 127.0.0.1)
  --port N                        server port (default: 25)
  --alternate-port N              repeatable: sessions go round-robin over --port and these
                                  (replicas: with --tls-resume, a ticket from one is offered to
                                  the next)
  --sessions N                    SMTP sessions to run (default: 1000)
  --concurrency N                 sessions in flight at once (default: 50)
  --msgs-per-session N            messages per session, 0 for none (default: 1)
  --msg-size BYTES                size of each message, headers included (default: 1024)
  --pipelining                    when the server offers PIPELINING, send MAIL, RCPT and
                                  DATA as one group, and each message's content with the
                                  next message's MAIL, RCPT and DATA (default: one command
                                  at a time)
  --recipient-domains N           recipients' domains d0.SUFFIX to d(N-1).SUFFIX, one
                                  message after another (default: all at bench.example)
  --recipient-suffix SUFFIX       the SUFFIX of --recipient-domains (default: bench.example)
  --nagle                         leave Nagle's algorithm on, as most clients do (default:
                                  TCP_NODELAY): shows a server's delayed-ACK stalls
  --client-cert FILE              PEM client certificate (chain) to present
  --client-key FILE               its PEM private key (default: in --client-cert)
  --tls-resume                    resume TLS sessions (tickets) across sessions; the first
                                  session runs alone to obtain one
  --hold N                        open N sessions past EHLO (with --concurrency opening at
                                  once), hold them idle, then QUIT; overrides --sessions and
                                  sends no messages
  --hold-seconds S                how long to hold once all N are open (default: 10)
  --bind ADDR                     source address, e.g. 127.0.0.2 (default: the kernel's choice)
  --time-limit S                  hard bound on the whole run; sessions still open then fail
                                  (default: 300)
  --io-timeout S                  bound on each network operation (default: 30)
  --seed N                        seed of the message filler (default: 1)
  --tls-sigalgs LIST              OpenSSL signature algorithms offered, which selects the
                                  server's certificate, e.g. ECDSA+SHA256 or
                                  rsa_pss_rsae_sha256 (default: OpenSSL's)
  --tls-verify CAFILE             verify the server's certificate against CAFILE (default: no
                                  verification)
  --ehlo NAME                     EHLO argument (default: loadgen.bench.example)
  --help                          print this help and exit

Exit status: 0, or 1 when more than 1 % of the sessions failed, or 2 on a usage error.
On stderr, with --hold: "loadgen: holding N sessions" once all are open.
)";

class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
T parse_number(std::string_view flag, std::string_view text) {
  T value{};
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end) {
    throw UsageError(std::string(flag) + ": not a number: " + std::string(text));
  }
  return value;
}

double parse_seconds(std::string_view flag, std::string_view text) {
  // std::from_chars for double is in libstdc++ 11+; strtod would accept "inf" and spaces.
  const auto value = parse_number<double>(flag, text);
  if (!(value > 0) || value > 1e6) throw UsageError(std::string(flag) + ": out of range");
  return value;
}

Options parse_options(int argc, char** argv) {
  Options o;
  bool sessions_given = false;
  std::vector<std::string_view> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view flag = args[i];
    std::optional<std::string_view> inline_value;
    if (const auto eq = flag.find('='); flag.starts_with("--") && eq != std::string_view::npos) {
      inline_value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    }
    auto value = [&]() -> std::string_view {
      if (inline_value) return *inline_value;
      if (i + 1 >= args.size()) throw UsageError(std::string(flag) + ": needs a value");
      return args[++i];
    };
    auto no_value = [&] {
      if (inline_value) throw UsageError(std::string(flag) + ": takes no value");
    };
    auto positive = [&](std::uint64_t v) {
      if (v == 0) throw UsageError(std::string(flag) + ": must be at least 1");
      return v;
    };
    if (flag == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (flag == "--mode") {
      const auto v = value();
      if (v == "plain")
        o.mode = Mode::plain;
      else if (v == "starttls")
        o.mode = Mode::starttls;
      else if (v == "implicit")
        o.mode = Mode::implicit;
      else
        throw UsageError("--mode: plain, starttls or implicit, not " + std::string(v));
    } else if (flag == "--host") {
      o.host = value();
    } else if (flag == "--port") {
      const auto v = parse_number<std::uint32_t>(flag, value());
      if (v == 0 || v > 65535) throw UsageError("--port: out of range");
      o.port = static_cast<std::uint16_t>(v);
    } else if (flag == "--alternate-port") {
      const auto v = parse_number<std::uint32_t>(flag, value());
      if (v == 0 || v > 65535) throw UsageError("--alternate-port: out of range");
      o.alternate_ports.push_back(static_cast<std::uint16_t>(v));
    } else if (flag == "--sessions") {
      o.sessions = positive(parse_number<std::uint64_t>(flag, value()));
      sessions_given = true;
    } else if (flag == "--concurrency") {
      o.concurrency = positive(parse_number<std::uint64_t>(flag, value()));
    } else if (flag == "--msgs-per-session") {
      o.msgs_per_session = parse_number<std::uint64_t>(flag, value());
    } else if (flag == "--msg-size") {
      o.msg_size = parse_number<std::uint64_t>(flag, value());
      if (o.msg_size < 16 || o.msg_size > (1u << 30)) {
        throw UsageError("--msg-size: between 16 bytes and 1 GiB");
      }
    } else if (flag == "--pipelining") {
      no_value();
      o.pipelining = true;
    } else if (flag == "--recipient-domains") {
      o.recipient_domains = positive(parse_number<std::uint64_t>(flag, value()));
    } else if (flag == "--recipient-suffix") {
      o.recipient_suffix = value();
    } else if (flag == "--nagle") {
      no_value();
      o.nagle = true;
    } else if (flag == "--client-cert") {
      o.client_cert = value();
    } else if (flag == "--client-key") {
      o.client_key = value();
    } else if (flag == "--tls-resume") {
      no_value();
      o.tls_resume = true;
    } else if (flag == "--hold") {
      o.hold = positive(parse_number<std::uint64_t>(flag, value()));
    } else if (flag == "--hold-seconds") {
      o.hold_seconds = parse_seconds(flag, value());
    } else if (flag == "--bind") {
      o.bind = value();
    } else if (flag == "--time-limit") {
      o.time_limit = parse_seconds(flag, value());
    } else if (flag == "--io-timeout") {
      o.io_timeout = parse_seconds(flag, value());
    } else if (flag == "--seed") {
      o.seed = parse_number<std::uint64_t>(flag, value());
    } else if (flag == "--tls-sigalgs") {
      o.tls_sigalgs = value();
    } else if (flag == "--tls-verify") {
      o.tls_verify = value();
    } else if (flag == "--ehlo") {
      o.ehlo_name = value();
    } else {
      throw UsageError("unknown flag " + std::string(flag) + " (see --help)");
    }
  }
  if (o.hold > 0) {
    if (sessions_given && o.sessions != o.hold) {
      throw UsageError("--hold N runs N sessions: leave out --sessions or give the same N");
    }
    o.sessions = o.hold;
  }
  if (!o.client_key.empty() && o.client_cert.empty()) {
    throw UsageError("--client-key needs --client-cert");
  }
  if (o.mode == Mode::plain && (o.tls_resume || !o.client_cert.empty())) {
    throw UsageError("--tls-resume and --client-cert need --mode starttls or implicit");
  }
  o.concurrency = std::min(o.concurrency, o.sessions);
  return o;
}

// ------------------------------------------------------------------------------ small helpers

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string json_string(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c >= 0x7f) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.6g", v);
  return buffer;
}

// Nearest-rank percentiles in milliseconds of microsecond samples; "null" when none.
std::string percentiles_json(std::vector<std::uint32_t> samples) {
  if (samples.empty()) return "null";
  std::sort(samples.begin(), samples.end());
  auto at = [&](double p) {
    auto rank =
        static_cast<std::size_t>(p / 100.0 * static_cast<double>(samples.size()) + 0.999999);
    rank = std::clamp<std::size_t>(rank, 1, samples.size());
    return json_number(samples[rank - 1] / 1000.0);
  };
  return "{\"p50\":" + at(50) + ",\"p90\":" + at(90) + ",\"p99\":" + at(99) +
         ",\"max\":" + json_number(samples.back() / 1000.0) + "}";
}

std::uint32_t micros(Clock::duration d) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return static_cast<std::uint32_t>(std::clamp<long long>(us, 0, UINT32_MAX));
}

std::string openssl_errors() {
  std::string out;
  while (const auto e = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof buffer);
    if (!out.empty()) out += "; ";
    out += buffer;
  }
  return out;
}

// The message: headers, then lines of seeded filler (never starting with '.', so no dot
// stuffing), exactly `size` bytes, CRLF-terminated; then the end-of-data line.
std::string make_message(std::uint64_t size, std::uint64_t seed) {
  std::string m =
      "From: <loadgen@bench.example>\r\n"
      "To: <sink@bench.example>\r\n"
      "Subject: loadgen test message\r\n"
      "Message-ID: <loadgen." +
      std::to_string(seed) +
      "@bench.example>\r\n"
      "\r\n";
  if (m.size() + 3 > size) m.clear();  // too small for headers: filler only
  std::mt19937_64 random(seed);
  static constexpr char kAlphabet[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
  m.reserve(size + 3);
  // Each step leaves 0 or at least 2 bytes of room, so the last line ends exactly at `size`.
  while (m.size() < size) {
    const std::size_t room = size - m.size();
    if (room == 2) {
      m += "\r\n";
      continue;
    }
    std::size_t line = std::min<std::size_t>(76, room - 2);
    if (room - line - 2 == 1) --line;
    for (std::size_t i = 0; i < line; ++i) {
      // A letter first on each line: never a '.', so no dot stuffing.
      const auto n = i == 0 ? 52 : sizeof kAlphabet - 1;
      m += kAlphabet[random() % n];
    }
    m += "\r\n";
  }
  return m + ".\r\n";
}

// ------------------------------------------------------------------------------------ the run

struct SslSessionFree {
  void operator()(SSL_SESSION* s) const { SSL_SESSION_free(s); }
};
using SslSessionPtr = std::unique_ptr<SSL_SESSION, SslSessionFree>;

// A session's failure: `reason` is low-cardinality (phase and error kind), counted by value.
struct Failure {
  std::string reason;
};

class Session;

struct Stats {
  std::uint64_t ok = 0;
  std::uint64_t failed = 0;
  std::map<std::string, std::uint64_t> failures;
  std::uint64_t messages = 0;
  std::uint64_t message_bytes = 0;
  std::vector<std::uint32_t> session_us;
  std::vector<std::uint32_t> handshake_us;
  std::uint64_t tls_resumed = 0;
  std::uint64_t tls_full = 0;
  std::uint64_t pipelining_offered = 0;
  std::string tls_version, tls_cipher, tls_group, tls_server_key;
};

class Runner {
 public:
  explicit Runner(Options options);
  int run();

  const Options& options() const { return options_; }
  asio::io_context& io() { return io_; }
  ssl::context& tls() { return tls_; }
  // The server for the next session: --port and --alternate-port in turn.
  const tcp::endpoint& next_target() { return targets_[next_target_++ % targets_.size()]; }
  const std::optional<asio::ip::address>& source() const { return source_; }
  const std::string& message() const { return message_; }
  // The next message's MAIL, RCPT and DATA, its recipient's domain the next in turn.
  std::string next_group() {
    std::string domain = options_.recipient_suffix;
    if (options_.recipient_domains > 0) {
      domain = "d" + std::to_string(next_domain_++ % options_.recipient_domains) + "." + domain;
    }
    return "MAIL FROM:<loadgen@bench.example>\r\nRCPT TO:<sink@" + domain + ">\r\nDATA\r\n";
  }
  Stats& stats() { return stats_; }
  bool stopping() const { return stopping_; }

  std::list<Session*>::iterator enroll(Session* s) { return live_.insert(live_.end(), s); }
  void leave(std::list<Session*>::iterator it) { live_.erase(it); }

  void record_success(Clock::duration session, std::optional<Clock::duration> handshake);
  void record_failure(const std::string& reason);
  void note_tls(SSL* ssl);

  // --tls-resume: a ticket to offer (single use while there are spare ones), or null.
  SSL_SESSION* take_ticket();
  static int on_new_ticket(SSL* ssl, SSL_SESSION* session);
  static int runner_index();

  // --hold: every held session waits here until released.
  void opened_for_hold();
  bool released() const { return released_; }
  awaitable<void> wait_release();

 private:
  awaitable<void> worker();
  awaitable<void> run_session();
  awaitable<void> watchdog();
  awaitable<void> hold_for_a_while();
  void session_done();
  void finish_if_done();
  std::string result_json(double elapsed, double cpu_user, double cpu_sys) const;

  // Everything a session or a pending handler refers to is declared before io_, so that it
  // outlives the coroutine frames io_ destroys if run() ends by an exception.
  Options options_;
  ssl::context tls_{ssl::context::tls_client};
  std::vector<tcp::endpoint> targets_;
  std::size_t next_target_ = 0;
  std::uint64_t next_domain_ = 0;
  std::optional<asio::ip::address> source_;
  std::string message_;
  Stats stats_;

  std::uint64_t next_index_ = 0;
  std::uint64_t done_ = 0;
  bool stopping_ = false;  // time limit reached: abort what is open, start nothing new
  bool time_limit_hit_ = false;
  std::list<Session*> live_;

  std::deque<SslSessionPtr> tickets_;  // unused tickets, oldest first
  SslSessionPtr last_ticket_;          // reused when none is unused

  std::uint64_t opened_ = 0;  // --hold: sessions past EHLO (or failed before)
  bool released_ = false;

  asio::io_context io_{1};
  asio::steady_timer limit_timer_{io_};
  asio::steady_timer watchdog_timer_{io_};
  asio::steady_timer hold_gate_{io_};
  asio::steady_timer hold_timer_{io_};
};

// One SMTP session. Owns its socket and TLS state; the runner's watchdog closes the socket
// when an operation takes longer than --io-timeout or the time limit is reached.
class Session {
 public:
  explicit Session(Runner& runner)
      : runner_(runner),
        options_(runner.options()),
        socket_(runner.io()),
        registration_(runner.enroll(this)) {}
  ~Session() { runner_.leave(registration_); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Connect, greeting, EHLO, STARTTLS or implicit TLS, EHLO again: ready for mail.
  awaitable<void> open();
  // The messages (none when holding), QUIT, then a clean close. Records the outcome.
  awaitable<void> finish();
  // Records a failure from open() or finish().
  void fail(std::string_view phase, const std::exception_ptr& error);

  // Watchdog: close the connection if stuck (or on stop); holding sessions are idle on purpose.
  void check(Clock::time_point now) {
    if (holding_ || aborted_) return;
    if (runner_.stopping())
      abort("time limit");
    else if (now - last_progress_ > std::chrono::duration<double>(options_.io_timeout))
      abort("timeout");
  }
  void abort(const char* why) {
    if (aborted_) return;
    aborted_ = why;
    error_code ignored;
    socket_.close(ignored);
  }
  void set_holding(bool h) {
    holding_ = h;
    last_progress_ = Clock::now();
  }

 private:
  template <class Stream>
  awaitable<void> greeting_and_ehlo(Stream& stream, bool greeting);
  template <class Stream>
  awaitable<void> transact(Stream& stream);
  template <class Stream>
  awaitable<void> quit(Stream& stream);
  awaitable<void> connect();
  awaitable<void> handshake();

  struct Reply {
    int code = 0;
    std::string_view text;  // all lines, valid until the next read
  };
  template <class Stream>
  awaitable<Reply> read_reply(Stream& stream);
  template <class Stream>
  awaitable<void> write(Stream& stream, std::string_view bytes);
  template <class Stream>
  awaitable<void> expect(Stream& stream, int code);

  Runner& runner_;
  const Options& options_;
  tcp::socket socket_;
  std::optional<ssl::stream<tcp::socket&>> tls_;
  std::list<Session*>::iterator registration_;

  const char* phase_ = "connect";
  const char* aborted_ = nullptr;
  bool holding_ = false;
  Clock::time_point started_ = Clock::now();
  Clock::time_point last_progress_ = started_;
  Clock::duration open_time_{};
  std::optional<Clock::duration> handshake_time_;
  bool pipelining_ = false;  // offered by the server (in the last EHLO)
  bool starttls_ = false;
  std::uint64_t messages_ = 0;

  std::string in_;  // bytes read, not yet consumed
  std::size_t consumed_ = 0;
  char read_buffer_[4096];
};

// ------------------------------------------------------------------------- session, protocol

template <class Stream>
awaitable<Session::Reply> Session::read_reply(Stream& stream) {
  // Drop what the previous reply used.
  in_.erase(0, consumed_);
  consumed_ = 0;
  for (;;) {
    // A reply is complete at a line "ddd " or "ddd" (the last of a multi-line reply).
    std::size_t line_start = 0;
    for (;;) {
      const auto eol = in_.find('\n', line_start);
      if (eol == std::string::npos) break;
      const std::string_view line(in_.data() + line_start, eol - line_start);
      if (line.size() < 3 || !std::all_of(line.begin(), line.begin() + 3,
                                          [](char c) { return c >= '0' && c <= '9'; })) {
        throw Failure{std::string(phase_) + ": malformed reply"};
      }
      if (line.size() == 3 || line[3] == ' ' || line[3] == '\r') {
        consumed_ = eol + 1;
        co_return Reply{(line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'),
                        std::string_view(in_.data(), consumed_)};
      }
      if (line[3] != '-') throw Failure{std::string(phase_) + ": malformed reply"};
      line_start = eol + 1;
    }
    if (in_.size() > 64 * 1024) throw Failure{std::string(phase_) + ": reply too long"};
    const auto n = co_await stream.async_read_some(asio::buffer(read_buffer_), use_awaitable);
    last_progress_ = Clock::now();
    in_.append(read_buffer_, n);
  }
}

template <class Stream>
awaitable<void> Session::write(Stream& stream, std::string_view bytes) {
  co_await asio::async_write(stream, asio::buffer(bytes), use_awaitable);
  last_progress_ = Clock::now();
}

template <class Stream>
awaitable<void> Session::expect(Stream& stream, int code) {
  const auto reply = co_await read_reply(stream);
  if (reply.code != code) {
    throw Failure{std::string(phase_) + ": reply " + std::to_string(reply.code)};
  }
}

bool has_keyword(std::string_view ehlo_reply, std::string_view keyword) {
  // Lines "250-KEYWORD params" / "250 KEYWORD"; the first line is the greeting name.
  std::size_t pos = ehlo_reply.find('\n');
  while (pos != std::string_view::npos && pos + 1 < ehlo_reply.size()) {
    const auto start = pos + 1;
    const auto end = ehlo_reply.find('\n', start);
    auto line = ehlo_reply.substr(start, end == std::string_view::npos ? end : end - start);
    if (line.size() > 4) {
      line.remove_prefix(4);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
      const auto word = line.substr(0, line.find(' '));
      if (word.size() == keyword.size() &&
          std::equal(word.begin(), word.end(), keyword.begin(), [](char a, char b) {
            return std::toupper(static_cast<unsigned char>(a)) == b;
          })) {
        return true;
      }
    }
    pos = end;
  }
  return false;
}

template <class Stream>
awaitable<void> Session::greeting_and_ehlo(Stream& stream, bool greeting) {
  if (greeting) {
    phase_ = "greeting";
    co_await expect(stream, 220);
  }
  phase_ = "ehlo";
  co_await write(stream, "EHLO " + options_.ehlo_name + "\r\n");
  const auto reply = co_await read_reply(stream);
  if (reply.code != 250) throw Failure{"ehlo: reply " + std::to_string(reply.code)};
  pipelining_ = has_keyword(reply.text, "PIPELINING");
  starttls_ = has_keyword(reply.text, "STARTTLS");
}

awaitable<void> Session::connect() {
  phase_ = "connect";
  const auto& target = runner_.next_target();
  socket_.open(target.protocol());
  if (!runner_.options().nagle) socket_.set_option(tcp::no_delay(true));
  if (const auto& source = runner_.source()) {
    // Let connect() pick the port for the 4-tuple, so many sessions share one source address.
    const int one = 1;
    ::setsockopt(socket_.native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    socket_.bind(tcp::endpoint(*source, 0));
  }
  co_await socket_.async_connect(target, use_awaitable);
  last_progress_ = Clock::now();
}

awaitable<void> Session::handshake() {
  phase_ = "tls handshake";
  tls_.emplace(socket_, runner_.tls());
  SSL* ssl = tls_->native_handle();
  if (options_.tls_resume) {
    if (SSL_SESSION* ticket = runner_.take_ticket()) SSL_set_session(ssl, ticket);
  }
  const auto start = Clock::now();
  co_await tls_->async_handshake(ssl::stream_base::client, use_awaitable);
  handshake_time_ = Clock::now() - start;
  last_progress_ = Clock::now();
  runner_.note_tls(ssl);
}

awaitable<void> Session::open() {
  co_await connect();
  if (options_.mode == Mode::implicit) {
    co_await handshake();
    co_await greeting_and_ehlo(*tls_, true);
  } else {
    co_await greeting_and_ehlo(socket_, true);
    if (options_.mode == Mode::starttls) {
      phase_ = "starttls";
      if (!starttls_) throw Failure{"starttls: not offered"};
      co_await write(socket_, "STARTTLS\r\n");
      co_await expect(socket_, 220);
      if (consumed_ != in_.size()) throw Failure{"starttls: bytes after 220"};
      in_.clear();
      consumed_ = 0;
      co_await handshake();
      co_await greeting_and_ehlo(*tls_, false);
    }
  }
  open_time_ = Clock::now() - started_;
}

template <class Stream>
awaitable<void> Session::transact(Stream& stream) {
  const std::uint64_t n = options_.msgs_per_session;
  if (n == 0) co_return;
  if (options_.pipelining && pipelining_) {
    // RFC 2920 3.1: message content may start a group, DATA must end one. So the first
    // group is MAIL RCPT DATA, and each later one is the previous message's content, its
    // end-of-data line and the next MAIL RCPT DATA: one write and one wait per message.
    const std::string first = runner_.next_group();
    phase_ = "mail group";
    co_await write(stream, first);
    for (std::uint64_t m = 0; m < n; ++m) {
      phase_ = "mail";
      co_await expect(stream, 250);
      phase_ = "rcpt";
      co_await expect(stream, 250);
      phase_ = "data";
      co_await expect(stream, 354);
      phase_ = "message";
      const bool last = m + 1 == n;
      const std::string content =
          last ? runner_.message() : runner_.message() + runner_.next_group();
      co_await write(stream, content);
      co_await expect(stream, 250);
      ++messages_;
    }
    co_return;
  }
  for (std::uint64_t m = 0; m < n; ++m) {
    const std::string group = runner_.next_group();
    const auto rcpt = group.find("RCPT");
    const auto data = group.find("DATA");
    phase_ = "mail";
    co_await write(stream, std::string_view(group).substr(0, rcpt));
    co_await expect(stream, 250);
    phase_ = "rcpt";
    co_await write(stream, std::string_view(group).substr(rcpt, data - rcpt));
    co_await expect(stream, 250);
    phase_ = "data";
    co_await write(stream, std::string_view(group).substr(data));
    co_await expect(stream, 354);
    phase_ = "message";
    co_await write(stream, runner_.message());
    co_await expect(stream, 250);
    ++messages_;
  }
}

template <class Stream>
awaitable<void> Session::quit(Stream& stream) {
  phase_ = "quit";
  co_await write(stream, "QUIT\r\n");
  co_await expect(stream, 221);
}

awaitable<void> Session::finish() {
  const auto resumed = Clock::now();
  if (tls_) {
    if (options_.hold == 0) co_await transact(*tls_);
    co_await quit(*tls_);
  } else {
    if (options_.hold == 0) co_await transact(socket_);
    co_await quit(socket_);
  }
  runner_.record_success(open_time_ + (Clock::now() - resumed), handshake_time_);
  auto& stats = runner_.stats();
  stats.messages += messages_;
  stats.message_bytes += messages_ * options_.msg_size;
  if (pipelining_) ++stats.pipelining_offered;

  // Close cleanly and let the server close first (its side keeps TIME_WAIT, and no RST):
  // close_notify for TLS, then wait for the server's end of stream. Not timed, not a failure.
  phase_ = "close";
  error_code ec;
  if (tls_) {
    co_await tls_->async_shutdown(asio::redirect_error(use_awaitable, ec));
  } else {
    char byte;
    co_await socket_.async_read_some(asio::buffer(&byte, 1),
                                     asio::redirect_error(use_awaitable, ec));
  }
  socket_.close(ec);
}

void Session::fail(std::string_view phase_hint, const std::exception_ptr& error) {
  std::string reason;
  try {
    std::rethrow_exception(error);
  } catch (const Failure& f) {
    reason = f.reason;
  } catch (const boost::system::system_error& e) {
    const auto& ec = e.code();
    if (aborted_) {
      reason = std::string(phase_) + ": " + aborted_;
    } else if (ec == asio::error::eof) {
      reason = std::string(phase_) + ": connection closed by server";
    } else {
      reason = std::string(phase_) + ": " + ec.message();
    }
  } catch (const std::exception& e) {
    reason = std::string(phase_hint) + ": " + e.what();
  }
  runner_.record_failure(reason);
}

// ------------------------------------------------------------------------------------ runner

Runner::Runner(Options options) : options_(std::move(options)) {
  tcp::resolver resolver(io_);
  const auto results = resolver.resolve(options_.host, std::to_string(options_.port));
  if (results.empty()) throw UsageError("--host: no address for " + options_.host);
  targets_.push_back(results.begin()->endpoint());
  for (const auto port : options_.alternate_ports) {
    targets_.emplace_back(targets_.front().address(), port);
  }
  if (!options_.bind.empty()) {
    error_code ec;
    source_ = asio::ip::make_address(options_.bind, ec);
    if (ec) throw UsageError("--bind: not an address: " + options_.bind);
  }
  message_ = make_message(options_.msg_size, options_.seed);

  SSL_CTX* ctx = tls_.native_handle();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (options_.tls_verify.empty()) {
    tls_.set_verify_mode(ssl::verify_none);
  } else {
    tls_.load_verify_file(options_.tls_verify);
    tls_.set_verify_mode(ssl::verify_peer);
  }
  if (!options_.tls_sigalgs.empty() &&
      SSL_CTX_set1_sigalgs_list(ctx, options_.tls_sigalgs.c_str()) != 1) {
    throw UsageError("--tls-sigalgs: OpenSSL rejects " + options_.tls_sigalgs + ": " +
                     openssl_errors());
  }
  if (!options_.client_cert.empty()) {
    tls_.use_certificate_chain_file(options_.client_cert);
    tls_.use_private_key_file(
        options_.client_key.empty() ? options_.client_cert : options_.client_key,
        ssl::context::pem);
  }
  if (options_.tls_resume) {
    // Not SSL_CTX_set_app_data: asio::ssl::context keeps its own callbacks there.
    SSL_CTX_set_ex_data(ctx, runner_index(), this);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, &Runner::on_new_ticket);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);  // TLS 1.2: do not ask; TLS 1.3: tickets ignored
  }
  stats_.session_us.reserve(options_.sessions);
  stats_.handshake_us.reserve(options_.mode == Mode::plain ? 0 : options_.sessions);
}

int Runner::runner_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int Runner::on_new_ticket(SSL* ssl, SSL_SESSION* session) {
  auto* self = static_cast<Runner*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), runner_index()));
  if (!SSL_SESSION_is_resumable(session)) return 0;
  if (self->tickets_.size() >= 4096) self->tickets_.pop_front();
  self->tickets_.emplace_back(session);  // we take the reference OpenSSL handed us
  return 1;
}

SSL_SESSION* Runner::take_ticket() {
  // RFC 8446 asks clients to use a ticket once; when none is spare, the last one again.
  if (!tickets_.empty()) {
    last_ticket_ = std::move(tickets_.front());
    tickets_.pop_front();
  }
  return last_ticket_.get();  // SSL_set_session takes its own reference
}

void Runner::note_tls(SSL* ssl) {
  if (SSL_session_reused(ssl))
    ++stats_.tls_resumed;
  else
    ++stats_.tls_full;
  if (!stats_.tls_version.empty()) return;
  stats_.tls_version = SSL_get_version(ssl);
  stats_.tls_cipher = SSL_get_cipher_name(ssl);
  if (const char* group = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl))) {
    stats_.tls_group = group;
  }
  if (X509* cert = SSL_get0_peer_certificate(ssl)) {
    if (EVP_PKEY* key = X509_get0_pubkey(cert)) {
      const int id = EVP_PKEY_get_base_id(key);
      stats_.tls_server_key = std::string(id == EVP_PKEY_EC    ? "EC"
                                          : id == EVP_PKEY_RSA ? "RSA"
                                                               : OBJ_nid2sn(id)) +
                              "-" + std::to_string(EVP_PKEY_get_bits(key));
    }
  }
}

void Runner::record_success(Clock::duration session, std::optional<Clock::duration> handshake) {
  ++stats_.ok;
  stats_.session_us.push_back(micros(session));
  if (handshake) stats_.handshake_us.push_back(micros(*handshake));
}

void Runner::record_failure(const std::string& reason) {
  ++stats_.failed;
  ++stats_.failures[reason];
}

void Runner::session_done() {
  ++done_;
  finish_if_done();
}

void Runner::finish_if_done() {
  if (done_ < options_.sessions) return;
  // Everything is accounted for: let io_context::run() return.
  limit_timer_.cancel();
  watchdog_timer_.cancel();
  hold_timer_.cancel();
  hold_gate_.cancel();
}

void Runner::opened_for_hold() {
  if (++opened_ < options_.sessions) return;
  std::cerr << "loadgen: holding " << (opened_ - stats_.failed) << " sessions" << std::endl;
  asio::co_spawn(io_, hold_for_a_while(), asio::detached);
}

awaitable<void> Runner::hold_for_a_while() {
  error_code ec;
  hold_timer_.expires_after(std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.hold_seconds)));
  co_await hold_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
  released_ = true;
  hold_gate_.cancel();
}

awaitable<void> Runner::wait_release() {
  while (!released_ && !stopping_) {
    error_code ec;
    co_await hold_gate_.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

awaitable<void> Runner::run_session() {
  auto session = std::make_shared<Session>(*this);
  bool opened = false;
  std::exception_ptr error;
  try {
    co_await session->open();
    opened = true;
  } catch (...) {
    error = std::current_exception();
  }
  if (options_.hold > 0) {
    if (error) session->fail("open", error);
    opened_for_hold();
    if (error) {
      session_done();
      co_return;
    }
    // Hold in a coroutine of its own, so this worker opens the next session.
    asio::co_spawn(
        io_,
        [this, session]() -> awaitable<void> {
          session->set_holding(true);
          co_await wait_release();
          session->set_holding(false);
          std::exception_ptr e;
          try {
            if (stopping_) throw Failure{"hold: time limit"};
            co_await session->finish();
          } catch (...) {
            e = std::current_exception();
          }
          if (e) session->fail("finish", e);
          session_done();
        },
        [](std::exception_ptr e) {
          if (e) std::rethrow_exception(e);
        });
    co_return;
  }
  if (opened) {
    try {
      co_await session->finish();
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (error) session->fail("session", error);
  session_done();
}

awaitable<void> Runner::worker() {
  while (!stopping_ && next_index_ < options_.sessions) {
    ++next_index_;
    co_await run_session();
  }
}

awaitable<void> Runner::watchdog() {
  for (;;) {
    error_code ec;
    watchdog_timer_.expires_after(std::chrono::milliseconds(250));
    co_await watchdog_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (done_ >= options_.sessions || (stopping_ && live_.empty())) co_return;
    const auto now = Clock::now();
    // check() may close a socket; the session leaves the list only when its coroutine ends.
    for (Session* s : live_) s->check(now);
  }
}

int Runner::run() {
  const auto start = Clock::now();
  auto rethrow = [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  };
  limit_timer_.expires_after(std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.time_limit)));
  limit_timer_.async_wait([this](error_code ec) {
    if (ec) return;
    time_limit_hit_ = true;
    stopping_ = true;
    hold_gate_.cancel();
    hold_timer_.cancel();
    for (Session* s : live_) s->abort("time limit");
  });
  asio::co_spawn(io_, watchdog(), rethrow);
  asio::co_spawn(
      io_,
      [this]() -> awaitable<void> {
        if (options_.tls_resume && next_index_ < options_.sessions && options_.hold == 0) {
          ++next_index_;
          co_await run_session();  // alone, to obtain the first ticket
        }
        for (std::uint64_t w = 0; w < options_.concurrency; ++w) {
          asio::co_spawn(io_, worker(), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
          });
        }
      },
      rethrow);
  io_.run();
  const double elapsed = seconds_since(start);

  // Sessions never started (time limit) count as failed.
  const auto accounted = stats_.ok + stats_.failed;
  if (accounted < options_.sessions) {
    const auto missing = options_.sessions - accounted;
    stats_.failed += missing;
    stats_.failures["not started: time limit"] += missing;
  }

  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  std::cout << result_json(elapsed, tv(usage.ru_utime), tv(usage.ru_stime)) << std::endl;
  if (stats_.failed * 100 <= options_.sessions) return 0;
  // Loudly: the JSON line alone is easy to overlook in a script's output.
  std::cerr << "loadgen: FAILED: " << stats_.failed << " of " << options_.sessions
            << " sessions failed (more than 1 %)";
  for (const auto& [reason, count] : stats_.failures) {
    std::cerr << "; " << count << "x " << reason;
  }
  std::cerr << std::endl;
  return 1;
}

std::string Runner::result_json(double elapsed, double cpu_user, double cpu_sys) const {
  const auto& s = stats_;
  const char* mode = options_.mode == Mode::plain      ? "plain"
                     : options_.mode == Mode::starttls ? "starttls"
                                                       : "implicit";
  std::ostringstream j;
  j << "{\"mode\":\"" << mode << "\",\"host\":" << json_string(options_.host)
    << ",\"port\":" << options_.port << ",\"alternate_ports\":" << options_.alternate_ports.size()
    << ",\"bind\":" << json_string(options_.bind) << ",\"sessions\":" << options_.sessions
    << ",\"concurrency\":" << options_.concurrency
    << ",\"msgs_per_session\":" << (options_.hold ? 0 : options_.msgs_per_session)
    << ",\"msg_size\":" << options_.msg_size
    << ",\"pipelining\":" << (options_.pipelining ? "true" : "false")
    << ",\"pipelining_offered\":" << s.pipelining_offered
    << ",\"tls_resume\":" << (options_.tls_resume ? "true" : "false")
    << ",\"client_cert\":" << (options_.client_cert.empty() ? "false" : "true")
    << ",\"hold\":" << options_.hold
    << ",\"hold_seconds\":" << (options_.hold ? json_number(options_.hold_seconds) : "0")
    << ",\"sessions_ok\":" << s.ok << ",\"sessions_failed\":" << s.failed << ",\"failures\":{";
  bool first = true;
  for (const auto& [reason, count] : s.failures) {
    j << (first ? "" : ",") << json_string(reason) << ":" << count;
    first = false;
  }
  const double mb = static_cast<double>(s.message_bytes) / 1e6;
  j << "},\"time_limit_hit\":" << (time_limit_hit_ ? "true" : "false")
    << ",\"messages_ok\":" << s.messages << ",\"message_bytes\":" << s.message_bytes
    << ",\"elapsed_s\":" << json_number(elapsed)
    << ",\"sessions_per_s\":" << json_number(static_cast<double>(s.ok) / elapsed)
    << ",\"messages_per_s\":" << json_number(static_cast<double>(s.messages) / elapsed)
    << ",\"mb_per_s\":" << json_number(mb / elapsed)
    << ",\"session_ms\":" << percentiles_json(s.session_us)
    << ",\"handshake_ms\":" << percentiles_json(s.handshake_us)
    << ",\"tls\":{\"full\":" << s.tls_full << ",\"resumed\":" << s.tls_resumed
    << ",\"version\":" << json_string(s.tls_version) << ",\"cipher\":" << json_string(s.tls_cipher)
    << ",\"group\":" << json_string(s.tls_group)
    << ",\"server_key\":" << json_string(s.tls_server_key) << "}"
    << ",\"cpu_s\":" << json_number(cpu_user + cpu_sys)
    << ",\"cpu_user_s\":" << json_number(cpu_user) << ",\"cpu_sys_s\":" << json_number(cpu_sys)
    << "}";
  return j.str();
}

void raise_file_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  raise_file_limit();
  try {
    Runner runner(parse_options(argc, argv));
    return runner.run();
  } catch (const UsageError& e) {
    std::cerr << "loadgen: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "loadgen: " << e.what() << "\n";
    return 2;
  }
}
