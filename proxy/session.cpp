// One client connection; see session.hpp for the design.
#include "proxy/session.hpp"
#include "smtp/address.hpp"

#include "acl/policy.hpp"
#include "proxy/backend_probe.hpp"
#include "proxy/log.hpp"
#include "smtp/proxy_protocol.hpp"
#include "smtp/received_header.hpp"
#include "tls/verify_cache.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <random>

namespace stp {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using smtp::Verb;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kBackendConnectTimeout = std::chrono::seconds(30);
constexpr auto kNameLookupTimeout = std::chrono::seconds(5);
constexpr auto kFinalWriteTimeout = std::chrono::seconds(10);
// QUIT to an idle client's MTA connection and its reply: the client's next command waits.
constexpr auto kBackendReleaseTimeout = std::chrono::seconds(2);
constexpr std::size_t kMaxReplyLength = 16 * 1024;
// Longest HELO/EHLO name kept (a domain is at most 255 bytes); a longer one is cut, and then
// cannot be replayed to a reopened MTA connection as the client sent it.
constexpr std::size_t kMaxHeloName = 255;
constexpr std::size_t kDataChunk = 16 * 1024;
// Exim reads an AUTH response with its CR into 16384 bytes: one byte less than a command.
constexpr std::size_t kMaxAuthResponse = 16382;
// BDAT messages abandoned at the MTA (each costs it a new connection) before the session ends.
constexpr unsigned kMaxAbandonedMessages = 3;
// A refused BDAT chunk larger than this is not read to its end: the session closes instead.
constexpr std::uint64_t kMaxDiscardedChunk = 64 * 1024 * 1024;
// The largest BDAT message sent on: Exim reads a chunk's size into 32 bits (and never offers
// SIZE above 2^31 - 1), with room below that for the trace header.
constexpr std::uint64_t kMaxBdatMessage = 0x7fffffff - 64 * 1024;
// PROXY v1 is at most 107 bytes with its CRLF; v2 is 16 bytes and what its length says (we
// accept no more TLVs than a load balancer sends: addresses and a few small TLVs).
constexpr std::size_t kProxyV1MaxLength = 107;
constexpr std::size_t kProxyV2FixedLength = 16;
constexpr std::size_t kProxyV2MaxLength = 16 + 1024;

constexpr std::string_view kReplyStartTls = "220 2.0.0 Ready to start TLS\r\n";
constexpr std::string_view kReplyTlsActive = "554 5.5.1 Error: TLS already active\r\n";
constexpr std::string_view kReplyNotImplemented = "502 5.5.1 Error: command not implemented\r\n";
constexpr std::string_view kReplyStartTlsNotOffered =
    "503 5.5.1 Error: STARTTLS not offered to this client\r\n";
constexpr std::string_view kReplyStartTlsSyntax = "501 5.5.4 Syntax: STARTTLS\r\n";
constexpr std::string_view kReplyTlsUnavailable =
    "454 4.7.0 TLS not available due to local problem\r\n";
constexpr std::string_view kReplySecurityFailure = "554 5.7.0 Security failure\r\n";
constexpr std::string_view kReplyNotPermitted = "550 5.7.0 Error: command not permitted\r\n";
constexpr std::string_view kReplyAuthNeedsTls =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
constexpr std::string_view kReplyLineTooLong = "500 5.5.2 Error: line too long\r\n";
constexpr std::string_view kReplyBadCharacter = "500 5.5.2 Error: bad character in command\r\n";
constexpr std::string_view kReplyLeadingSpace =
    "500 5.5.2 Error: white space before the command\r\n";
constexpr std::string_view kReplyBdatNotOffered =
    "502 5.5.1 Error: BDAT not offered by the mail server\r\n";
constexpr std::string_view kReplyBdatNotOfferedNow =
    "451 4.3.0 Error: the mail server does not offer BDAT now; try again\r\n";
constexpr std::string_view kReplyOk = "250 2.0.0 Ok\r\n";
constexpr std::string_view kReplyMessageTooBig =
    "552 5.3.4 Error: message exceeds the mail server's size limit\r\n";
constexpr std::string_view kReplyOnlyBdat =
    "503 5.5.1 Error: only BDAT, RSET, NOOP or QUIT within a BDAT message\r\n";
constexpr std::string_view kReplyBdatRefusedMessage =
    "503 5.5.1 Error: a chunk of this message was refused; send RSET\r\n";
constexpr std::string_view kReplyBdatEmpty =
    "501 5.5.4 Error: an empty BDAT chunk must be the LAST\r\n";
constexpr std::string_view kReplyBdatSyntax = "501 5.5.4 Syntax: BDAT count [LAST]\r\n";
constexpr std::string_view kReplyBadSyntax = "500 5.5.2 Error: bad syntax\r\n";
constexpr std::string_view kReplyBareLineEnding =
    "550 5.5.2 Error: bare <CR> or <LF> in message content\r\n";

std::string address_text(const asio::ip::address& address) {
  return unmapped(address).to_string();
}

std::string endpoint_label(const asio::ip::address& address, std::uint16_t port) {
  return "[" + address_text(address) + "]:" + std::to_string(port);
}

// "PROXY" alone or followed by a space: a load balancer's v1 header sent as a command.
bool is_proxy_header_line(std::string_view line) {
  constexpr std::string_view kProxy = "PROXY";
  if (line.size() < kProxy.size() || (line.size() > kProxy.size() && line[5] != ' ')) return false;
  return std::equal(kProxy.begin(), kProxy.end(), line.begin(), [](char a, char b) {
    return a == std::toupper(static_cast<unsigned char>(b));
  });
}

std::string session_id(std::uint64_t n) {
  // Twelve hex digits: unique within a process, short enough to grep for.
  return fmt::format("{:012X}", n & 0xFFFFFFFFFFFFull);
}

// Whether the client's chain was judged afresh or its verdict reused (tls/verify_cache.hpp).
void count_verification(metrics::Metrics& metrics, const SSL* ssl) {
  switch (tls::VerifyCache::outcome(ssl)) {
    case tls::VerifyCache::Outcome::hit:
      metrics.verify_cache(metrics::VerifyCache::hit).Increment();
      break;
    case tls::VerifyCache::Outcome::miss:
      metrics.verify_cache(metrics::VerifyCache::miss).Increment();
      break;
    case tls::VerifyCache::Outcome::none:
      break;
  }
}

}  // namespace

SessionServices::SessionServices(const Config& config_in,
                                 std::shared_ptr<const tls::ServerContext> tls_in,
                                 metrics::Metrics& metrics_in)
    : config(config_in),
      metrics(metrics_in),
      tls(std::move(tls_in)),
      sessions_per_host(config_in.max_connections_per_host) {
  error_code ec;
  const auto address = asio::ip::make_address(config.backend_host, ec);
  if (!ec) backend_endpoint.emplace(address, config.backend_port);
  // Session ids start at a random point so that ids of consecutive runs do not collide.
  next_session_id = (static_cast<std::uint64_t>(std::random_device{}()) << 20);
  const auto& host = config.hostname;
  reply_service_unavailable =
      "421 4.3.2 " + host + " Service not available: mail server unreachable\r\n";
  reply_mta_refused =
      "421 4.3.2 " + host + " Service not available: mail server refused the session\r\n";
  reply_identity_refused =
      "421 4.7.0 " + host + " Service not available: mail server refused client identity\r\n";
  reply_mta_lost = "421 4.4.2 " + host + " Error: lost connection to mail server\r\n";
  reply_timeout = "421 4.4.2 " + host + " Error: timeout exceeded\r\n";
  reply_shutdown = "421 4.3.2 " + host + " Service shutting down, try again later\r\n";
  reply_greeting = "220 " + host + " ESMTP\r\n";
  reply_too_many_connections = "421 4.7.0 " + host + " Error: too many connections\r\n";
  reply_too_many_errors = "421 4.7.0 " + host + " Error: too many errors\r\n";
  reply_message_abandoned =
      "421 4.3.0 " + host + " Error: message abandoned at the mail server; try again\r\n";
}

struct Session::NameLookup {
  explicit NameLookup(const asio::any_io_executor& executor) : ready(executor) {}
  std::optional<ClientName> result;
  asio::steady_timer ready;  // cancelled when the result arrives
};

Session::Session(tcp::socket client, std::size_t listener_index, SessionServices& services,
                 SessionList& sessions)
    : services_(services),
      config_(services.config),
      listener_(services.config.listeners[listener_index]),
      listener_metrics_(services.metrics.listener(listener_index)),
      sessions_(sessions),
      registration_(sessions.insert(sessions.end(), this)),
      id_(session_id(services.next_session_id.fetch_add(1, std::memory_order_relaxed))),
      started_(Clock::now()),
      client_(std::move(client)),
      backend_(client_.get_executor()),
      client_in_(std::max<std::size_t>(kDataChunk, config_.max_line_length + 2)),
      backend_in_(kMaxReplyLength),
      framer_(config_.max_line_length),
      data_filter_(config_.bare_lf),
      watchdog_(client_.get_executor()) {
  listener_metrics_.connections->Increment();
  listener_metrics_.sessions_active->Increment();
}

Session::~Session() {
  if (counted_for_host_) services_.sessions_per_host.release(identity_.address);
  sessions_.erase(registration_);
  listener_metrics_.sessions_active->Decrement();
  services_.sessions_alive.fetch_sub(1);
}

void Session::drain() {
  draining_ = true;
  if (waiting_for_command_ && !in_transaction_) wake();
}

void Session::terminate() {
  terminating_ = true;
  wake();
  error_code ignored;
  backend_.cancel(ignored);
}

void Session::wake() {
  error_code ignored;
  client_.cancel(ignored);
}

bool Session::should_stop_before_command() const {
  return terminating_ || (draining_ && !in_transaction_);
}

void Session::violation(metrics::Violation kind) {
  services_.metrics.violation(kind).Increment();
}

// ---------------------------------------------------------------------------------------------
// The session from start to end.

asio::awaitable<void> Session::run() {
  error_code remote_ec, local_ec;
  const auto remote = client_.remote_endpoint(remote_ec);
  const auto local = client_.local_endpoint(local_ec);
  if (remote_ec || local_ec) co_return;  // gone before we looked
  error_code ignored;
  client_.set_option(tcp::no_delay(true), ignored);
  learn_client(remote, local);
  if (config_.proxy_protocol_hosts.matches(remote.address()) && !co_await read_proxy_header()) {
    finish();
    co_return;
  }
  if (!co_await admit()) {
    finish();
    co_return;
  }
  start_client_name_lookup();
  spdlog::debug("{} connect from {} to {}", id_, client_label_,
                endpoint_label(identity_.local_address, identity_.local_port));

  if (listener_.implicit_tls) {
    start_tls_stream();
    if (co_await handshake() && co_await open_backend(*tls_)) co_await serve(*tls_);
  } else {
    tls::PlainStream plain(client_);
    if (co_await open_backend(plain) && co_await serve(plain) == Outcome::start_tls &&
        co_await handshake()) {
      if (backend_attached_) {
        // The MTA saw the plaintext part of the session: make it forget any transaction.
        mta_reset_due_ = true;
        co_await serve(*tls_);
      } else if (config_.backend_metadata != BackendMetadata::proxy_v2) {
        co_await serve(*tls_);  // connects at the first command that needs the MTA
      } else if (co_await attach_backend(*tls_, false)) {  // proxy-v2: now the header can tell
        co_await serve(*tls_);
      }
    }
  }
  finish();
}

// Everything the session decides from the client's address: set from the connection, and
// again from a trusted load balancer's PROXY header.
void Session::learn_client(const tcp::endpoint& remote, const tcp::endpoint& local) {
  identity_.address = remote.address();
  identity_.port = remote.port();
  identity_.local_address = local.address();
  identity_.local_port = local.port();
  client_label_ = endpoint_label(remote.address(), remote.port());
  advertise_tls_ = config_.tls_advertise_hosts.matches(identity_.address);
  certificate_request_ = tls::ClientCertificateRequest::none;
  if (config_.tls_verify_hosts.matches(identity_.address)) {
    certificate_request_ = tls::ClientCertificateRequest::verify;
  } else if (config_.tls_try_verify_hosts.matches(identity_.address) ||
             config_.tls_require_verified_hosts.matches(identity_.address)) {
    certificate_request_ = tls::ClientCertificateRequest::try_verify;
  }
}

// A trusted load balancer speaks first: a PROXY v1 or v2 header, read exactly (never a byte
// of what follows, which may be a TLS ClientHello read by OpenSSL from the socket itself).
asio::awaitable<bool> Session::read_proxy_header() {
  arm(config_.tls_handshake_timeout);
  std::string header;
  error_code ec;
  auto read_exactly = [&](std::size_t n) -> asio::awaitable<bool> {
    const auto old_size = header.size();
    header.resize(old_size + n);
    co_await asio::async_read(client_, asio::buffer(header.data() + old_size, n),
                              asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  };
  auto fail = [&](std::string_view why) {
    services_.metrics.rejected(metrics::Rejection::proxy_header).Increment();
    end_reason_ = "bad PROXY header";
    spdlog::warn(
        "{} load balancer {}: {}; closing", id_, client_label_,
        timed_out_ ? std::string("timeout waiting for the PROXY header") : std::string(why));
    timed_out_ = false;
    return false;
  };
  // "PROXY " (v1) or the first 6 bytes of the v2 signature.
  if (!co_await read_exactly(6)) co_return fail(ec.message());
  if (header == "PROXY ") {
    // The line ends at CRLF: peek, then take exactly up to it.
    std::array<char, kProxyV1MaxLength> peeked{};
    while (true) {
      const auto room = kProxyV1MaxLength - header.size();
      if (room == 0) co_return fail("PROXY v1 line too long");
      const auto n = co_await client_.async_receive(asio::buffer(peeked.data(), room),
                                                    tcp::socket::message_peek,
                                                    asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return fail(ec.message());
      if (n == 0) co_return fail("connection closed");
      const std::string_view fresh(peeked.data(), n);
      std::size_t take = n;
      if (header.back() == '\r' && fresh.front() == '\n') {
        take = 1;
      } else if (const auto crlf = fresh.find("\r\n"); crlf != std::string_view::npos) {
        take = crlf + 2;
      }
      if (!co_await read_exactly(take)) co_return fail(ec.message());
      if (header.ends_with("\r\n")) break;
    }
  } else {
    if (!co_await read_exactly(kProxyV2FixedLength - header.size())) co_return fail(ec.message());
    const auto length = (static_cast<std::size_t>(static_cast<unsigned char>(header[14])) << 8) |
                        static_cast<unsigned char>(header[15]);
    if (kProxyV2FixedLength + length > kProxyV2MaxLength)
      co_return fail("PROXY v2 header too long");
    if (length > 0 && !co_await read_exactly(length)) co_return fail(ec.message());
  }
  const auto decoded = proxy_protocol::decode(header);
  if (decoded.status != proxy_protocol::Decoded::Status::complete ||
      decoded.length != header.size()) {
    co_return fail("malformed PROXY header \"" + log::escape(header, 120) + "\"");
  }
  if (!decoded.local) {
    const auto balancer = client_label_;
    learn_client(decoded.source, decoded.destination);
    spdlog::debug("{} load balancer {} relays {}", id_, balancer, client_label_);
  }
  co_return true;
}

// --max-connections-per-host, counted for the client's real address.
asio::awaitable<bool> Session::admit() {
  if (services_.sessions_per_host.acquire(identity_.address)) {
    counted_for_host_ = true;
    co_return true;
  }
  services_.metrics.rejected(metrics::Rejection::max_connections_per_host).Increment();
  end_reason_ = "too many connections from host";
  spdlog::info("{} {} has {} sessions open already (--max-connections-per-host); refused", id_,
               client_label_, config_.max_connections_per_host);
  if (!listener_.implicit_tls) {
    // A TLS port is closed without a word: a reply would cost a handshake.
    tls::PlainStream plain(client_);
    co_await write_client(plain, "421 4.7.0 " + config_.hostname +
                                     " Error: too many connections from " +
                                     address_text(identity_.address) + "\r\n");
  }
  co_return false;
}

void Session::finish() {
  watchdog_.cancel();
  if (name_lookup_) name_lookup_->ready.cancel();
  if (tls_ && tls_active_) tls_->shutdown();
  error_code ignored;
  client_.shutdown(tcp::socket::shutdown_both, ignored);
  client_.close(ignored);
  backend_.close(ignored);  // mid-transaction, this is what abandons it at the MTA

  const auto elapsed = std::chrono::duration<double>(Clock::now() - started_).count();
  services_.metrics.session_duration().Observe(elapsed);
  // Exim's fields for TLS: X= protocol:cipher:bits, CV= certificate verified, DN=, SNI=.
  std::string tls_fields = "X=none";
  if (tls_facts_) {
    const auto& t = *tls_facts_;
    tls_fields = "X=" + t.exim_cipher_field() + " CV=" + (t.verified ? "yes" : "no");
    if (t.peer) tls_fields += " DN=\"" + log::escape(t.peer->subject, 200) + "\"";
    if (!t.sni.empty()) tls_fields += " SNI=\"" + log::escape(t.sni, 255) + "\"";
  }
  spdlog::info(
      "{} session client={} listener={} {} helo=\"{}\" commands={} rejected={} "
      "messages={}/{}/{} bytes_in={} bytes_out={} duration={:.3f}s end=\"{}\"",
      id_, client_label_, listener_.implicit_tls ? "implicit" : "starttls", tls_fields,
      log::escape(helo_name_, 64), commands_, local_rejects_, messages_accepted_,
      messages_rejected_, messages_tempfailed_, bytes_from_client_, bytes_to_client_, elapsed,
      end_reason_);
}

void Session::start_tls_stream() {
  tls_.emplace(client_, services_.current_tls());
  if (tls_->native_handle()) {
    tls::request_client_certificate(tls_->native_handle(), certificate_request_);
  }
}

asio::awaitable<bool> Session::handshake() {
  arm(config_.tls_handshake_timeout);
  const auto start = Clock::now();
  error_code ec;
  co_await tls_->handshake(ec);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  SSL* ssl = tls_->native_handle();
  if (ssl && certificate_request_ != tls::ClientCertificateRequest::none) {
    count_verification(services_.metrics, ssl);  // whatever became of the handshake
  }
  if (!ec && certificate_request_ == tls::ClientCertificateRequest::verify &&
      (!SSL_get0_peer_certificate(ssl) || SSL_get_verify_result(ssl) != X509_V_OK)) {
    // OpenSSL enforces this on a full handshake, and a resumed session can only come from one
    // made under the same policy (tls::request_client_certificate): a second lock on the door.
    ec = make_error_code(boost::system::errc::permission_denied);
  }
  if (ec) {
    services_.metrics.handshake(metrics::Handshake::failed, "none", seconds);
    record_handshake_failure(ec);
    co_return false;
  }
  services_.metrics.handshake(metrics::Handshake::ok, SSL_get_version(ssl), seconds);
  tls_active_ = true;
  record_tls_session();
  // RFC 3207: everything learned from the client before TLS is forgotten.
  helo_name_.clear();
  replay_helo_.clear();
  helo_state_ = HeloState::none;
  extended_helo_ = false;
  learn_mta_extensions({});
  chunking_shown_ = false;
  framer_.reset();
  co_return true;
}

void Session::record_handshake_failure(const error_code& ec) {
  end_reason_ = timed_out_ ? "tls handshake timeout" : "tls handshake failed";
  if (timed_out_) violation(metrics::Violation::timeout);
  std::string certificate;
  if (certificate_request_ == tls::ClientCertificateRequest::verify && tls_->native_handle()) {
    // A client that must verify: say why it did not. When verification fails OpenSSL keeps
    // no peer certificate, but the verify result tells that one was presented.
    SSL* ssl = tls_->native_handle();
    const long result = SSL_get_verify_result(ssl);
    const bool presented = result != X509_V_OK || SSL_get0_peer_certificate(ssl) != nullptr;
    services_.metrics.client_certificate(metrics::ClientCertificate::rejected).Increment();
    if (result != X509_V_OK) services_.metrics.verify_failure(tls::verify_reason_label(result));
    certificate = !presented            ? "; client certificate: none presented"
                  : result == X509_V_OK ? "; client certificate: ok"
                                        : "; client certificate: " +
                                              std::string(X509_verify_cert_error_string(result));
  }
  spdlog::info("{} TLS handshake with {} failed: {}{}", id_, client_label_,
               timed_out_ ? std::string("timeout") : log::escape(ec.message(), 200), certificate);
}

void Session::record_tls_session() {
  SSL* ssl = tls_->native_handle();
  tls_facts_ = tls::gather_session_facts(ssl, certificate_request_, config_.tls_peerdn_format);
  const auto& t = *tls_facts_;
  services_.metrics.tls_session(t.protocol, t.cipher, t.resumed);
  if (t.request != tls::ClientCertificateRequest::none) {
    if (!t.peer) {
      services_.metrics.client_certificate(metrics::ClientCertificate::absent).Increment();
    } else if (t.verified) {
      services_.metrics.client_certificate(metrics::ClientCertificate::verified).Increment();
    } else {
      services_.metrics.client_certificate(metrics::ClientCertificate::unverified).Increment();
      services_.metrics.verify_failure(t.verify_reason);
    }
  }
  // Postfix's summary line, byte for byte, so that existing log exporters read it.
  std::string details;
  if (!t.key_exchange.empty()) details += " key-exchange " + t.key_exchange;
  if (!t.server_signature.empty()) details += " server-signature " + t.server_signature;
  if (!t.server_digest.empty()) details += " server-digest " + t.server_digest;
  const std::string name = identity_.name.status == ClientName::Status::found
                               ? log::escape(identity_.name.name, 255)
                               : std::string("unknown");
  spdlog::info("{} TLS connection {} from {}[{}]{}: {} with cipher {} ({}/{} bits){} id={}",
               !t.peer ? "Anonymous" : (t.verified ? "Trusted" : "Untrusted"),
               t.resumed ? "reused" : "established", name, address_text(identity_.address),
               t.sni.empty() ? std::string() : " to " + log::escape(t.sni, 100), t.protocol,
               t.cipher, t.cipher_bits, t.cipher_algorithm_bits, details, id_);
  if (!t.refused_sni.empty()) {
    spdlog::info("{} {} asked for SNI \"{}\", not a host name; taken as no SNI", id_, client_label_,
                 log::escape(t.refused_sni, 100));
  }
  if (t.peer && t.peer->common_name_refused) {
    spdlog::info(
        "{} client certificate of {} has several CNs, or a CN with a NUL or over 255 bytes: no "
        "CN reported",
        id_, client_label_);
  }
  if (t.peer) {
    spdlog::info(
        "{} client certificate subject=\"{}\" issuer=\"{}\" serial={} sha256={} "
        "not_after=\"{}\" verify={}",
        id_, log::escape(t.peer->subject, 300), log::escape(t.peer->issuer, 300), t.peer->serial,
        t.peer->sha256, t.peer->not_after,
        t.verified ? "ok" : "\"" + log::escape(t.verify_error, 100) + "\"");
  }
}

// ---------------------------------------------------------------------------------------------
// The MTA side: connecting, identifying the client, replies.

asio::awaitable<bool> Session::connect_backend() {
  arm(kBackendConnectTimeout);
  const auto start = Clock::now();
  error_code ec;
  if (services_.backend_endpoint) {
    co_await backend_.async_connect(*services_.backend_endpoint,
                                    asio::redirect_error(asio::use_awaitable, ec));
  } else {
    tcp::resolver resolver(backend_.get_executor());
    const auto endpoints =
        co_await resolver.async_resolve(config_.backend_host, std::to_string(config_.backend_port),
                                        asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) {
      co_await asio::async_connect(backend_, endpoints,
                                   asio::redirect_error(asio::use_awaitable, ec));
    }
  }
  services_.metrics.backend_connect_duration().Observe(
      std::chrono::duration<double>(Clock::now() - start).count());
  if (ec) {
    services_.metrics.backend_connect_failures().Increment();
    spdlog::warn("{} cannot connect to mail server {}:{}: {}", id_, config_.backend_host,
                 config_.backend_port, timed_out_ ? "timeout" : ec.message());
    timed_out_ = false;
    co_return false;
  }
  error_code ignored;
  backend_.set_option(tcp::no_delay(true), ignored);
  co_return true;
}

template <class Stream>
asio::awaitable<bool> Session::open_backend(Stream& client) {
  if (config_.backend_metadata == BackendMetadata::proxy_v2 && tls_active_) {
    // Implicit TLS: the PROXY header can tell everything now, and Exim wants it promptly.
    co_return co_await attach_backend(client, true);
  }
  // The proxy greets the client itself and connects to the MTA at the first command that
  // needs it (flush_group): a client that connects and then trickles, or says nothing, costs
  // the MTA no connection (no smtpd process), only this session's own small state. In
  // proxy-v2 mode the PROXY header must also say whether the client uses TLS, which is not
  // known yet.
  co_return co_await write_client(client, services_.reply_greeting);
}

template <class Stream>
asio::awaitable<bool> Session::attach_backend(Stream& client, bool greet_client) {
  // `refused`: the MTA answered, and said no (its words are in the log).
  auto refuse = [&](std::string_view reason, metrics::Rejection why,
                    bool refused = false) -> asio::awaitable<bool> {
    end_reason_ = reason;
    services_.metrics.rejected(why).Increment();
    const bool identity = why == metrics::Rejection::identity_refused;
    if (identity) services_.metrics.backend_xclient_failures().Increment();
    const std::string& reply = identity  ? services_.reply_identity_refused
                               : refused ? services_.reply_mta_refused
                                         : services_.reply_service_unavailable;
    co_await write_client(client, reply, true);
    co_return false;
  };
  constexpr auto unavailable = metrics::Rejection::mta_unavailable;
  if (!co_await connect_backend()) {
    co_return co_await refuse("mail server unreachable", unavailable);
  }
  backend_attached_ = true;
  if (std::exchange(reattaching_, false)) {
    spdlog::debug("{} mail server connection reopened for {}", id_, client_label_);
  }
  const bool proxy_v2 = config_.backend_metadata == BackendMetadata::proxy_v2;
  if (proxy_v2 && !co_await write_mta(proxy_v2_header())) {
    co_return co_await refuse("mail server lost", unavailable);
  }
  auto greeting = co_await read_mta_reply();
  if (greeting.status != smtp::ReplyScan::Status::complete) {
    co_return co_await refuse("mail server unreachable", unavailable);
  }
  if (greeting.code / 100 != 2) {
    spdlog::warn("{} mail server greeted {} with \"{}\"", id_, client_label_,
                 log::escape(backend_in_.view().substr(0, greeting.length), 200));
    // A client the proxy greeted itself hears a 421: the MTA's refusal as the reply to its
    // EHLO or MAIL could bounce its mail, while the same words as a greeting only defer it.
    if (!greet_client) {
      co_return co_await refuse("mail server refused connection", unavailable, true);
    }
    end_reason_ = "mail server refused connection";
    co_await write_client(client, backend_in_.view().substr(0, greeting.length), true);
    co_return false;
  }
  // What the client is greeted with, when it is greeted here (proxy-v2 with implicit TLS):
  // the MTA's own greeting.
  std::string client_greeting;
  if (greet_client) client_greeting = backend_in_.view().substr(0, greeting.length);
  backend_in_.consume(greeting.length);

  if (config_.backend_metadata == BackendMetadata::xclient) {
    // Identify the client with XCLIENT, or refuse it: an MTA that took its mail as coming
    // from the proxy's own address may relay for anyone.
    // (to_mta_ may hold the client's first commands, which go once the MTA knows the client.)
    const std::string ehlo_command = "EHLO " + config_.hostname + "\r\n";
    if (!co_await write_mta(ehlo_command)) {
      co_return co_await refuse("mail server lost", unavailable);
    }
    const auto ehlo = co_await read_mta_reply();
    if (ehlo.status != smtp::ReplyScan::Status::complete) {
      co_return co_await refuse("mail server lost", unavailable);
    }
    const auto capabilities =
        smtp::parse_ehlo_capabilities(backend_in_.view().substr(0, ehlo.length));
    backend_in_.consume(ehlo.length);
    if (ehlo.code != 250 || !capabilities.xclient || !capabilities.advertises("ADDR")) {
      spdlog::error(
          "{} mail server does not offer XCLIENT with ADDR to this proxy; refusing {} "
          "(authorise the proxy, e.g. Postfix smtpd_authorized_xclient_hosts, or set "
          "--backend-metadata none)",
          id_, client_label_);
      co_return co_await refuse("mail server refused client identity",
                                metrics::Rejection::identity_refused);
    }
    if (capabilities.advertises("NAME") || capabilities.advertises("REVERSE_NAME")) {
      co_await wait_for_client_name();
    }
    if (!co_await write_mta(build_xclient_command(capabilities, identity_))) {
      co_return co_await refuse("mail server lost", unavailable);
    }
    const auto accepted = co_await read_mta_reply();
    if (accepted.status != smtp::ReplyScan::Status::complete) {
      co_return co_await refuse("mail server lost", unavailable);
    }
    const auto reply = backend_in_.view().substr(0, accepted.length);
    if (accepted.code / 100 != 2) {
      spdlog::error("{} mail server refused XCLIENT for {}: \"{}\"", id_, client_label_,
                    log::escape(reply, 200));
      co_return co_await refuse("mail server refused client identity",
                                metrics::Rejection::identity_refused);
    }
    // After XCLIENT the MTA greets anew (220); the client was greeted by the proxy already.
    if (greet_client) client_greeting = accepted.code == 220 ? std::string(reply) : std::string();
    backend_in_.consume(accepted.length);
  }

  // The client's greeting, for an MTA that has not heard it (proxy-v2 before TLS, or a
  // connection reopened after an idle release), so its session is the one the client believes
  // it has. In proxy-v2 mode this first command also shows whether the MTA took the header: one
  // not told to expect it reads it as SMTP lines (its signature even holds a QUIT) and answers
  // those first. Without a greeting to replay, a NOOP serves for that.
  if (!replay_helo_.empty() || proxy_v2) {
    const std::string_view command =
        replay_helo_.empty() ? std::string_view("NOOP\r\n") : std::string_view(replay_helo_);
    if (!co_await write_mta(command)) co_return co_await refuse("mail server lost", unavailable);
    const auto reply = co_await read_mta_reply();
    const bool complete = reply.status == smtp::ReplyScan::Status::complete;
    if (!complete || reply.code / 100 != 2) {
      const auto said = log::escape(backend_in_.view().substr(0, reply.length), 200);
      if (proxy_v2) {
        spdlog::error(
            "{} mail server answered \"{}\" right after the PROXY header: it does not take the "
            "header from this proxy (Exim hosts_proxy, Postfix smtpd_upstream_proxy_protocol) "
            "or refused {}; refusing {}",
            id_, said, replay_helo_.empty() ? "NOOP" : "the client's greeting", client_label_);
        co_return co_await refuse("mail server refused client identity",
                                  metrics::Rejection::identity_refused);
      }
      if (!complete) co_return co_await refuse("mail server lost", unavailable);
      spdlog::warn("{} mail server answered the replayed \"{}\" with \"{}\"", id_,
                   log::escape(command.substr(0, command.size() - 2), 100), said);
      co_return co_await refuse("mail server refused the client's greeting", unavailable, true);
    }
    // The MTA may offer this connection less than the client was told (the probe's reply, or
    // an earlier connection's): what it offers now is what the session may use.
    if (!replay_helo_.empty()) {
      learn_mta_extensions(extended_helo_ ? backend_in_.view().substr(0, reply.length)
                                          : std::string_view());
    }
    backend_in_.consume(reply.length);
    replay_helo_.clear();
  }
  // (No co_await inside || or ?: here: GCC 12 miscompiles it in coroutines.)
  if (!greet_client) co_return true;
  if (client_greeting.empty()) client_greeting = services_.reply_greeting;
  co_return co_await write_client(client, client_greeting);
}

// Whether the MTA connection holds nothing that reopening it would not restore: no mail
// transaction or AUTH state, no command or reply in flight, a greeting the MTA accepted (or
// none). The MTA then costs an idle client nothing (a Postfix has 100 smtpd processes).
bool Session::backend_releasable() const {
  return config_.backend_idle_timeout.count() > 0 && backend_attached_ && !mta_lost_ && !closing_ &&
         !in_transaction_ && !data_accepted_ && bdat_message_ == BdatMessage::none &&
         !authenticated_ && !auth_continuation_ && helo_state_ != HeloState::unknown &&
         helo_name_.size() < kMaxHeloName && pending_.empty() && to_mta_.empty() &&
         backend_in_.empty() && Clock::now() + config_.backend_idle_timeout < deadline_;
}

// QUIT, the MTA's reply (unread: it only lets the MTA close first), and close; bounded, and
// leaves the client's own deadline where it was.
asio::awaitable<void> Session::release_backend() {
  const auto client_deadline = deadline_;
  arm(kBackendReleaseTimeout);
  error_code ec;
  co_await asio::async_write(backend_, asio::buffer(std::string_view("QUIT\r\n")),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (!ec) {
    co_await backend_.async_read_some(backend_in_.prepare(),
                                      asio::redirect_error(asio::use_awaitable, ec));
  }
  detach_backend();
  timed_out_ = false;
  arm_at(client_deadline);
  services_.metrics.backend_idle_releases().Increment();
  spdlog::debug("{} mail server connection given back while {} is idle", id_, client_label_);
}

// Closes the MTA connection; the next command that needs the MTA opens another, identifies the
// client again and replays its greeting (which can_reattach() says it can).
void Session::detach_backend() {
  error_code ignored;
  backend_.close(ignored);
  backend_in_.clear();
  backend_in_.release_if_empty();
  backend_attached_ = false;
  mta_lost_ = false;
  reattaching_ = true;
  mta_reset_due_ = false;                    // the next MTA session starts clean
  if (helo_state_ == HeloState::accepted) {  // the MTA hears it again when reopened
    replay_helo_ = (extended_helo_ ? "EHLO " : "HELO ") + helo_name_ + "\r\n";
  }
}

// A new MTA connection would be the session the client believes it has: no AUTH to redo, and
// a greeting the MTA accepted and the proxy kept whole (or none).
bool Session::can_reattach() const {
  return !authenticated_ && helo_state_ != HeloState::unknown && helo_name_.size() < kMaxHeloName;
}

asio::awaitable<smtp::ReplyScan> Session::read_mta_reply() {
  while (true) {
    const auto scan = smtp::scan_reply(backend_in_.view(), kMaxReplyLength);
    if (scan.status == smtp::ReplyScan::Status::complete) co_return scan;
    if (mta_lost_) co_return smtp::ReplyScan{smtp::ReplyScan::Status::malformed};
    if (scan.status == smtp::ReplyScan::Status::malformed) {
      spdlog::error("{} malformed reply from mail server: \"{}\"", id_,
                    log::escape(backend_in_.view(), 200));
      mta_lost_ = true;
      co_return scan;
    }
    arm(config_.smtp_receive_timeout);
    error_code ec;
    const auto n = co_await backend_.async_read_some(backend_in_.prepare(),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      spdlog::warn("{} mail server connection lost while waiting for a reply: {}", id_,
                   timed_out_ ? "timeout" : ec.message());
      timed_out_ = false;
      mta_lost_ = true;
      co_return smtp::ReplyScan{smtp::ReplyScan::Status::malformed};
    }
    backend_in_.commit(n);
  }
}

asio::awaitable<bool> Session::write_mta(std::string_view bytes) {
  if (mta_lost_) co_return false;
  arm(config_.smtp_receive_timeout);
  error_code ec;
  co_await asio::async_write(backend_, asio::buffer(bytes),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    spdlog::warn("{} mail server connection lost while sending: {}", id_,
                 timed_out_ ? "timeout" : ec.message());
    timed_out_ = false;
    mta_lost_ = true;
    co_return false;
  }
  co_return true;
}

// ---------------------------------------------------------------------------------------------
// The client side.

template <class Stream>
asio::awaitable<bool> Session::read_client(Stream& client, bool idle, Clock::time_point deadline) {
  error_code ec;
  arm_at(std::min(Clock::now() + config_.smtp_receive_timeout, deadline));
  waiting_for_command_ = idle;
  if (idle && client_in_.empty()) {
    // Between commands a session holds no buffer of its own: wait, then read. (The MTA's
    // reply buffer too: every reply has been read by now, and an idle session touched a page
    // of it for the EHLO reply.)
    client_in_.release_if_empty();
    backend_in_.release_if_empty();
    while (true) {
      // Only the bare wait is woken for a release: a send inside it is never cut short.
      if (backend_releasable() && !client.has_unsent()) {
        arm_release(Clock::now() + config_.backend_idle_timeout);
      }
      co_await client.wait_readable(ec);
      release_at_ = Clock::time_point::max();
      if (!std::exchange(release_due_, false) || ec != asio::error::operation_aborted ||
          terminating_ || draining_) {
        break;
      }
      co_await release_backend();
      if (terminating_ || draining_) break;  // stopped meanwhile: ec says aborted
      ec = {};
    }
  }
  std::size_t n = 0;
  if (!ec) n = co_await client.read_some(client_in_.prepare(), ec);
  waiting_for_command_ = false;
  if (!ec) {
    client_in_.commit(n);
    bytes_from_client_ += n;
    services_.metrics.bytes_from_client().Increment(static_cast<double>(n));
    co_return true;
  }
  if (terminating_ || (draining_ && ec == asio::error::operation_aborted)) {
    end_reason_ = "shutdown";
    timed_out_ = false;
    arm(kFinalWriteTimeout);
    co_await write_client(client, services_.reply_shutdown, true);
  } else if (timed_out_) {
    timed_out_ = false;
    violation(metrics::Violation::timeout);
    end_reason_ = "timeout";
    spdlog::info("{} client {} timed out", id_, client_label_);
    arm(kFinalWriteTimeout);
    co_await write_client(client, services_.reply_timeout, true);
  } else if (ec == asio::error::eof) {
    end_reason_ = "client closed";
  } else {
    end_reason_ = "client connection error";
    spdlog::debug("{} read from client failed: {}", id_, ec.message());
  }
  co_return false;
}

template <class Stream>
asio::awaitable<bool> Session::write_client(Stream& client, std::string_view bytes, bool last) {
  if (timed_out_) co_return false;
  arm(std::max<Clock::duration>(config_.smtp_receive_timeout, kFinalWriteTimeout));
  error_code ec;
  co_await client.write(asio::buffer(bytes), ec, last);
  if (ec) {
    end_reason_ = timed_out_ ? "timeout writing to client" : "client connection error";
    timed_out_ = false;
    co_return false;
  }
  bytes_to_client_ += bytes.size();
  services_.metrics.bytes_to_client().Increment(static_cast<double>(bytes.size()));
  co_return true;
}

// ---------------------------------------------------------------------------------------------
// Commands.

template <class Stream>
asio::awaitable<Session::Outcome> Session::serve(Stream& client) {
  using Status = smtp::CommandFramer::Status;
  while (true) {
    if (should_stop_before_command()) {
      end_reason_ = "shutdown";
      co_await write_client(client, services_.reply_shutdown, true);
      co_return Outcome::close;
    }
    if (errors_ >= config_.max_errors) {
      violation(metrics::Violation::too_many_errors);
      end_reason_ = "too many errors";
      spdlog::info("{} {} reached {} errors (--max-errors); closing", id_, client_label_, errors_);
      co_await write_client(client, services_.reply_too_many_errors, true);
      co_return Outcome::close;
    }
    auto frame = framer_.next(client_in_.view());
    while (frame.status == Status::need_more) {
      client_in_.consume(frame.consumed);
      if (!co_await read_client(client, true)) co_return Outcome::close;
      frame = framer_.next(client_in_.view());
    }

    if (!backend_attached_ && config_.backend_metadata == BackendMetadata::proxy_v2 &&
        !services_.mta_probed.load(std::memory_order_acquire)) {
      co_await wait_for_first_probe();
    }
    if (std::exchange(mta_reset_due_, false)) reset_mta();
    // Take every command that is already here, up to the group's bound.
    GroupEnd end = GroupEnd::none;
    std::size_t taken = 0;
    while (true) {
      if (frame.status == Status::line_too_long) {
        end = on_line_too_long();
      } else {
        end = on_line(frame.line);
      }
      if (end == GroupEnd::attach) break;  // the line stays, to be read again
      client_in_.consume(frame.consumed);
      // --max-pipelined-commands: the rest waits, unread past the buffer, until these are
      // answered.
      if (end != GroupEnd::none || ++taken >= config_.max_pipelined_commands) break;
      frame = framer_.next(client_in_.view());
      if (frame.status == Status::need_more) {
        client_in_.consume(frame.consumed);
        break;
      }
    }

    if (end == GroupEnd::bdat && !co_await relay_bdat_chunk(client)) co_return Outcome::close;
    if (!co_await flush_group(client)) co_return Outcome::close;
    if (std::exchange(mta_abandon_due_, false)) {
      detach_backend();
      spdlog::info("{} BDAT message of {} abandoned: mail server connection closed", id_,
                   client_label_);
    }
    if (end == GroupEnd::attach && !backend_attached_) {
      const bool attached = co_await attach_backend(client, false);  // (GCC 12: not in the if)
      if (!attached) co_return Outcome::close;
    }

    switch (end) {
      case GroupEnd::data:
        if (data_accepted_ && !co_await relay_data(client)) co_return Outcome::close;
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
        in_transaction_ = false;
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

Session::GroupEnd Session::on_line_too_long() {
  ++commands_;
  violation(metrics::Violation::line_too_long);
  spdlog::info("{} line too long from {}", id_, client_label_);
  // An AUTH response the MTA waits for: cancel the exchange there, or the client's next
  // command would be read by the MTA as the response.
  if (std::exchange(auth_continuation_, false)) return cancel_auth(kReplyLineTooLong);
  reply_locally(kReplyLineTooLong);
  return GroupEnd::none;
}

Session::GroupEnd Session::on_line(std::string_view line) {
  ++commands_;
  if (std::exchange(auth_continuation_, false)) {  // a SASL response: the MTA asked for it
    if (line.size() > kMaxAuthResponse) {
      violation(metrics::Violation::line_too_long);
      return cancel_auth(kReplyLineTooLong);
    }
    if (smtp::has_control_character(line)) {
      violation(metrics::Violation::bad_command_character);
      return cancel_auth(kReplyBadCharacter);
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
      reply_locally(kReplyBadSyntax);
      break;
    case smtp::CommandSyntax::leading_space:
      violation(metrics::Violation::bad_command_character);
      reply_locally(kReplyLeadingSpace);
      break;
    case smtp::CommandSyntax::control_character:
      violation(metrics::Violation::bad_command_character);
      reply_locally(kReplyBadCharacter);
      break;
  }
  spdlog::info("{} {} sent a malformed command \"{}\"; refused", id_, client_label_,
               log::escape(line, 60));
  return GroupEnd::none;
}

// "*" ends an AUTH exchange (RFC 4954); the MTA's 501 to it is not the client's to hear.
Session::GroupEnd Session::cancel_auth(std::string_view reply) {
  to_mta_ += "*\r\n";
  pending_.push_back({PendingReply::Kind::mta_silent, Verb::auth});
  reply_locally(reply);
  return GroupEnd::wait_reply;
}

Session::GroupEnd Session::on_command(const smtp::Command& command) {
  const Verb verb = command.verb;
  if (is_proxy_header_line(command.line)) {
    // Only a trusted load balancer may say who the client is, and only before anything else.
    violation(metrics::Violation::client_proxy_header);
    spdlog::warn("{} {} sent a PROXY header but is not in --proxy-protocol-hosts; refused", id_,
                 client_label_);
    reply_locally(kReplyNotPermitted);
    return GroupEnd::none;
  }
  if (security_failure_ && verb != Verb::quit) {
    reply_locally(kReplySecurityFailure);
    return verb == Verb::bdat ? refuse_bdat(command) : GroupEnd::none;
  }
  if (refused_by_policy(verb)) {
    return verb == Verb::bdat ? refuse_bdat(command) : GroupEnd::none;
  }
  const bool bdat_open =
      bdat_message_ == BdatMessage::open || bdat_message_ == BdatMessage::open_with_header;
  if (bdat_open && verb == Verb::rset) {
    bdat_message_ = BdatMessage::none;
    return abandon_bdat_message(kReplyOk);
  }
  if (bdat_open && verb != Verb::bdat && verb != Verb::noop && verb != Verb::quit) {
    reply_locally(kReplyOnlyBdat);
    return GroupEnd::none;
  }
  // Detached, the proxy answers what needs no MTA; but once a command of this group is bound
  // for the MTA, the rest follow it there, in order (an RSET must reset that MAIL).
  if (!backend_attached_ && to_mta_.empty() &&
      (smtp::command_flags(verb) & smtp::command_flag::answered_while_detached) != 0) {
    if (const auto end = answer_while_detached(command)) return *end;
  }
  switch (verb) {
    case Verb::starttls:
      if (tls_active_ || !advertise_tls_ || !command.arguments.empty()) {
        services_.metrics.starttls(metrics::StartTls::refused).Increment();
      }
      if (tls_active_) {
        reply_locally(kReplyTlsActive);
        return GroupEnd::none;
      }
      if (!advertise_tls_) {
        reply_locally(kReplyStartTlsNotOffered);
        return GroupEnd::none;
      }
      if (!command.arguments.empty()) {
        reply_locally(kReplyStartTlsSyntax);
        return GroupEnd::none;
      }
      start_tls_stream();
      if (!tls_->native_handle()) {
        spdlog::error("{} cannot start TLS: {}", id_, tls::take_openssl_errors());
        tls_.reset();
        security_failure_ = true;
        services_.metrics.starttls(metrics::StartTls::refused).Increment();
        reply_locally(kReplyTlsUnavailable);
        return GroupEnd::none;
      }
      reply_locally(kReplyStartTls);
      return GroupEnd::start_tls;
    case Verb::turn:
      // The MTA would turn into the client on this connection, which the proxy cannot follow.
      spdlog::info("{} {} sent TURN/ATRN; refused", id_, client_label_);
      reply_locally(kReplyNotImplemented);
      return GroupEnd::none;
    case Verb::xclient:
    case Verb::xforward:
      violation(metrics::Violation::client_xclient);
      spdlog::warn("{} {} sent {}; refused", id_, client_label_,
                   verb == Verb::xclient ? "XCLIENT" : "XFORWARD");
      reply_locally(kReplyNotPermitted);
      return GroupEnd::none;
    case Verb::auth:
      if (!tls_active_) {
        violation(metrics::Violation::auth_before_tls);
        reply_locally(kReplyAuthNeedsTls);
        return GroupEnd::none;
      }
      forward(command);
      return GroupEnd::wait_reply;
    case Verb::data:
      forward(command);
      return GroupEnd::data;
    case Verb::bdat:
      return on_bdat(command);
    case Verb::quit:
      forward(command);
      return GroupEnd::quit;
    case Verb::mail:
    case Verb::rset:
      // A new message starts here, whenever the MTA's reply comes: the next BDAT chunk is
      // the first of it, even when it is pipelined behind this command.
      bdat_message_ = BdatMessage::none;
      forward(command);
      return GroupEnd::none;
    case Verb::helo:
    case Verb::ehlo:
      helo_name_ = std::string(command.arguments.substr(0, kMaxHeloName));
      extended_helo_ = verb == Verb::ehlo;
      if (to_mta_.empty()) replay_helo_.clear();  // the MTA hears this one instead
      bdat_message_ = BdatMessage::none;
      forward(command);
      // What the MTA offers (CHUNKING, SIZE) decides how the commands after this one are
      // handled: they wait for its reply (a client pipelines past EHLO only with Exim's
      // PIPECONNECT, and then gains nothing from the group going on).
      return GroupEnd::wait_reply;
    default:
      forward(command);
      return GroupEnd::none;
  }
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
  const auto arguments = smtp::parse_bdat_arguments(command.arguments);
  if (!arguments) {
    // Without a size the chunk cannot be told from the commands after it: end here.
    violation(metrics::Violation::bad_bdat);
    reply_locally(kReplyBdatSyntax);
    end_reason_ = "bad BDAT";
    return GroupEnd::close;
  }
  const std::uint64_t so_far = bdat_message_ == BdatMessage::none ? 0 : bdat_message_bytes_;
  const auto over = [&](std::uint64_t limit) {
    return arguments->size > limit || so_far > limit - arguments->size;
  };
  // First what needs no MTA connection; then what this one offers decides, and one yet to be
  // opened (proxy-v2 before TLS, after an idle release or an abandon) is opened first, and the
  // BDAT read again.
  std::string_view refusal;
  if (bdat_message_ == BdatMessage::refused) {
    refusal = kReplyBdatRefusedMessage;
  } else if (arguments->size == 0 && !arguments->last) {
    refusal = kReplyBdatEmpty;
  } else if (over(kMaxBdatMessage)) {
    refusal = kReplyMessageTooBig;
  } else if (!backend_attached_) {
    --commands_;
    return GroupEnd::attach;
  } else if (!mta_chunking_) {
    // Told CHUNKING by an earlier connection, the client must not bounce its mail on a 5xx.
    refusal = chunking_shown_ ? kReplyBdatNotOfferedNow : kReplyBdatNotOffered;
  } else if (mta_size_limit_ != 0 && over(mta_size_limit_)) {
    refusal = kReplyMessageTooBig;
  }
  if (!refusal.empty()) {
    spdlog::info("{} {} sent BDAT {}{} after {} bytes; refused: {}", id_, client_label_,
                 arguments->size, arguments->last ? " LAST" : "", so_far,
                 refusal.substr(0, refusal.size() - 2));
    // The later chunks of a message already refused are one error, not one each.
    if (bdat_message_ == BdatMessage::refused) {
      ++local_rejects_;
      pending_.push_back({.kind = PendingReply::Kind::local, .local = refusal});
    } else {
      reply_locally(refusal);
    }
    return discard_bdat(*arguments);
  }
  bdat_ = *arguments;
  discard_bdat_chunk_ = false;
  bdat_message_bytes_ = so_far + bdat_.size;
  // The trace header goes in front of the message's first chunk that has content (or is the
  // last), which grows by it; relay_bdat_chunk() writes every BDAT command. It counts as sent
  // once the MTA accepted that chunk (on_mta_reply).
  bdat_header_due_ = config_.received_header && bdat_message_ != BdatMessage::open_with_header;
  pending_.push_back({.kind = PendingReply::Kind::mta,
                      .verb = Verb::bdat,
                      .message_end = bdat_.last,
                      .carries_header = bdat_header_due_});
  if (bdat_.last) {
    bdat_message_ = BdatMessage::none;
  } else if (bdat_message_ == BdatMessage::none) {
    bdat_message_ = BdatMessage::open;
  }
  return GroupEnd::bdat;
}

// A BDAT refused before its size was looked at (policy, a security failure): its chunk still
// follows, and must be read and dropped.
Session::GroupEnd Session::refuse_bdat(const smtp::Command& command) {
  const auto arguments = smtp::parse_bdat_arguments(command.arguments);
  if (!arguments) {
    violation(metrics::Violation::bad_bdat);
    spdlog::info("{} {} sent BDAT without a size; closing", id_, client_label_);
    end_reason_ = "bad BDAT";
    return GroupEnd::close;
  }
  return discard_bdat(*arguments);
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
  bdat_ = arguments;
  discard_bdat_chunk_ = true;
  if (open && abandon_bdat_message({}) == GroupEnd::close) return GroupEnd::close;
  return GroupEnd::bdat;
}

// The MTA holds chunks of a message that is to go: the MTA connection is closed after this
// group, never told RSET. (Exim 4.96 told RSET after a chunk that ended inside a header line
// reads the bytes after it as message text, and the next chunk as commands; closing abandons
// the message at any MTA.) `reply`, if any, answers the command that abandons it. A session
// that cannot have its MTA session back (AUTH) ends with a 421 instead.
Session::GroupEnd Session::abandon_bdat_message(std::string_view reply) {
  in_transaction_ = false;
  // Each abandon costs the MTA a new connection: it counts as an error, and a few end the
  // session (a loop of MAIL, RCPT, BDAT, RSET must not make the proxy a connection churner).
  ++errors_;
  if (!can_reattach() || ++abandoned_messages_ > kMaxAbandonedMessages) {
    end_reason_ = "BDAT message abandoned";
    spdlog::info("{} BDAT message of {} abandoned; closing: {}", id_, client_label_,
                 can_reattach() ? "too many abandoned messages"
                                : "the MTA session cannot be had again (AUTH, or the greeting)");
    reply_locally(services_.reply_message_abandoned);
    return GroupEnd::close;
  }
  mta_abandon_due_ = true;
  if (!reply.empty()) pending_.push_back({.kind = PendingReply::Kind::local, .local = reply});
  return GroupEnd::wait_reply;
}

// The proxy's own RSET, its reply not the client's: the MTA forgets any transaction.
void Session::reset_mta() {
  in_transaction_ = false;
  to_mta_ += "RSET\r\n";
  pending_.push_back({PendingReply::Kind::mta_silent, Verb::rset});
}

void Session::reply_locally(std::string_view reply) {
  if (reply[0] >= '4') {
    ++local_rejects_;
    ++errors_;
  }
  pending_.push_back({.kind = PendingReply::Kind::local, .local = reply});
}

template <class Stream>
asio::awaitable<bool> Session::flush_group(Stream& client) {
  if (!backend_attached_ && !to_mta_.empty() && !co_await attach_backend(client, false)) {
    // proxy-v2: the client went on without TLS, and the MTA cannot be reached.
    pending_.clear();
    to_mta_.clear();
    co_return false;
  }
  if (!to_mta_.empty()) {
    co_await write_mta(to_mta_);
    to_mta_.clear();
  }
  to_client_.clear();
  for (const auto& pending : pending_) {
    if (pending.kind == PendingReply::Kind::local) {
      to_client_ += pending.text.empty() ? pending.local : std::string_view(pending.text);
      continue;
    }
    const auto scan = co_await read_mta_reply();
    if (scan.status != smtp::ReplyScan::Status::complete) {
      // Never leave a command unanswered, and never let it look accepted.
      to_client_ += terminating_ ? services_.reply_shutdown : services_.reply_mta_lost;
      end_reason_ = terminating_ ? "shutdown" : "mail server lost";
      closing_ = true;
      break;
    }
    const auto reply = backend_in_.view().substr(0, scan.length);
    on_mta_reply(pending, scan.code, reply);
    // Its 421 to the proxy's own command is the client's to hear too: the session ends.
    if (scan.code == 421 && pending.kind == PendingReply::Kind::mta_silent) to_client_ += reply;
    backend_in_.consume(scan.length);
    if (scan.code == 421) {  // the MTA is closing: nothing more will come
      end_reason_ = "mail server closed (421)";
      closing_ = true;
      break;
    }
  }
  pending_.clear();
  if (!to_client_.empty()) {
    const bool written = co_await write_client(client, to_client_, closing_);
    if (!written) co_return false;
  }
  co_return !closing_;
}

void Session::on_mta_reply(const PendingReply& pending, int code, std::string_view reply) {
  if (code >= 400 && pending.kind == PendingReply::Kind::mta) ++errors_;
  if (pending.kind == PendingReply::Kind::mta_silent) {
    // The proxy's own RSET (after STARTTLS, or abandoning a BDAT message) or AUTH cancel.
    if (pending.verb == Verb::rset && code / 100 != 2) {
      spdlog::warn("{} mail server answered the proxy's RSET with \"{}\"", id_,
                   log::escape(reply, 200));
    }
    return;
  }
  switch (pending.verb) {
    case Verb::mail:
      if (code / 100 == 2) in_transaction_ = true;
      break;
    case Verb::rset:
      in_transaction_ = false;
      break;
    case Verb::helo:
    case Verb::ehlo:
      in_transaction_ = false;
      helo_state_ = code / 100 == 2 ? HeloState::accepted : HeloState::unknown;
      learn_mta_extensions(pending.verb == Verb::ehlo && code == 250 ? reply : std::string_view());
      chunking_shown_ = mta_chunking_;  // the client is shown this reply
      if (pending.verb == Verb::helo) break;
      if (code == 250 && !tls_active_ && !starttls_counted_) {
        starttls_counted_ = true;
        services_.metrics
            .starttls(advertise_tls_ ? metrics::StartTls::offered : metrics::StartTls::not_offered)
            .Increment();
      }
      if (code == 250) {
        to_client_ += smtp::rewrite_ehlo_reply(
            reply, {.offer_starttls = advertise_tls_ && !tls_active_, .hide_auth = !tls_active_});
        return;
      }
      break;
    case Verb::data:
      data_accepted_ = code == 354;
      // A refused DATA (no valid recipients) leaves the MTA's MAIL open: in_transaction_ stays.
      break;
    case Verb::auth:
      auth_continuation_ = code == 334;
      if (code == 235) authenticated_ = true;
      break;
    case Verb::quit:
      end_reason_ = "quit";
      closing_ = true;
      break;
    case Verb::bdat:
      if (pending.message_end) {
        count_message(code);
        in_transaction_ = false;
      } else if (code / 100 == 2) {
        if (pending.carries_header) bdat_message_ = BdatMessage::open_with_header;
      } else {
        // A refused chunk leaves the MTA's message in a state the proxy cannot know (Exim
        // then takes only RSET): the next group resets it, and the message is over.
        bdat_message_ = BdatMessage::refused;
        mta_reset_due_ = true;
      }
      break;
    default:
      break;
  }
  to_client_ += reply;
}

// CHUNKING and SIZE as the MTA offered them in an EHLO reply (none for anything else).
void Session::learn_mta_extensions(std::string_view ehlo_reply) {
  const auto capabilities = smtp::parse_ehlo_capabilities(ehlo_reply);
  mta_chunking_ = capabilities.chunking;
  mta_size_limit_ = capabilities.size_limit;
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

// ---------------------------------------------------------------------------------------------
// Message content.

template <class Stream>
asio::awaitable<bool> Session::relay_data(Stream& client) {
  data_accepted_ = false;
  data_filter_.reset();
  data_filter_.set_policy(config_.bare_lf);
  bool rejected = false;
  std::string& out = to_mta_;
  // The trace header leads the first piece of content sent.
  std::string header = config_.received_header ? received_header() : std::string();
  // Once nothing goes to the MTA any more, the rest of the message must arrive within one
  // receive timeout in all: a trickle cannot hold the session.
  auto deadline = Clock::time_point::max();
  while (true) {
    if ((rejected || mta_lost_) && deadline == Clock::time_point::max()) {
      deadline = Clock::now() + config_.smtp_receive_timeout;
    }
    const auto continuation =
        header.empty() ? std::optional(false) : starts_with_continuation(client_in_.view(), true);
    if ((client_in_.empty() || !continuation) && !co_await read_client(client, false, deadline)) {
      co_return false;  // the MTA never sees an end: finish() abandons its transaction
    }
    if (!continuation) continue;
    out.clear();
    if (!header.empty()) {
      if (*continuation) header += "\r\n";
      out.swap(header);
      header.clear();
    }
    const auto result = data_filter_.feed(client_in_.view(), out);
    client_in_.consume(result.consumed);
    if (result.bare_line_ending) {
      if (config_.bare_lf == BareLfPolicy::reject && !rejected) {
        // Abandon the MTA's transaction by closing its connection; keep reading only to find
        // the end of the client's message, so the reply is heard.
        rejected = true;
        violation(metrics::Violation::bare_lf);
        spdlog::info("{} bare <CR> or <LF> in message from {}; rejected", id_, client_label_);
        error_code ignored;
        backend_.close(ignored);
        mta_lost_ = true;
        data_filter_.set_policy(BareLfPolicy::normalize);
        continue;
      }
      stuffed_bare_line_ending_ = true;
    }
    if (!out.empty() && !mta_lost_) co_await write_mta(out);
    if (result.end_of_data) break;
  }
  out.clear();
  in_transaction_ = false;
  if (rejected) {
    ++messages_rejected_;
    services_.metrics.message(metrics::Message::rejected).Increment();
    end_reason_ = "bare line ending";
    co_await write_client(client, kReplyBareLineEnding, true);
    co_return false;
  }
  if (stuffed_bare_line_ending_) {
    violation(metrics::Violation::bare_lf);
    spdlog::info("{} bare <CR> or <LF> in message from {}; normalised", id_, client_label_);
    stuffed_bare_line_ending_ = false;
  }
  smtp::ReplyScan scan{smtp::ReplyScan::Status::malformed};
  if (!mta_lost_) scan = co_await read_mta_reply();  // (no co_await inside ?: for GCC 12)
  if (scan.status != smtp::ReplyScan::Status::complete) {
    ++messages_tempfailed_;
    services_.metrics.message(metrics::Message::tempfailed).Increment();
    end_reason_ = terminating_ ? "shutdown" : "mail server lost";
    co_await write_client(client,
                          terminating_ ? services_.reply_shutdown : services_.reply_mta_lost, true);
    co_return false;
  }
  count_message(scan.code);
  if (scan.code >= 400) ++errors_;
  const bool ok =
      co_await write_client(client, backend_in_.view().substr(0, scan.length), scan.code == 421) &&
      scan.code != 421;
  backend_in_.consume(scan.length);
  co_return ok;
}

template <class Stream>
asio::awaitable<bool> Session::relay_bdat_chunk(Stream& client) {
  std::uint64_t remaining = bdat_.size;
  auto take_buffered = [&] {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, client_in_.size()));
    remaining -= n;
    return n;
  };
  const bool relay = !discard_bdat_chunk_;
  // A chunk goes straight to the MTA, before flush_group() would connect.
  if ((relay || !to_mta_.empty()) && !backend_attached_) {
    const bool attached = co_await attach_backend(client, false);  // (GCC 12: not in the if)
    if (!attached) co_return false;
  }
  if (relay) {
    std::string header;
    if (std::exchange(bdat_header_due_, false)) {
      // The header's end depends on the chunk's first byte (starts_with_continuation).
      while (remaining > 0 && client_in_.empty()) {
        if (!co_await read_client(client, false)) co_return false;
      }
      header = received_header();
      if (remaining > 0 && *starts_with_continuation(client_in_.view(), false)) header += "\r\n";
    }
    to_mta_ += fmt::format("BDAT {}{}\r\n", bdat_.size + header.size(), bdat_.last ? " LAST" : "");
    to_mta_ += header;
  }
  // The BDAT line (and any commands before it) go out with the start of the chunk.
  const auto first = take_buffered();
  if (relay) to_mta_.append(client_in_.view().substr(0, first));
  client_in_.consume(first);
  if (!to_mta_.empty()) co_await write_mta(to_mta_);
  to_mta_.clear();
  // A chunk that goes nowhere (refused here, or the MTA is gone) must arrive within one
  // receive timeout in all: a trickle cannot hold the session.
  auto deadline = Clock::time_point::max();
  while (remaining > 0) {
    if ((!relay || mta_lost_) && deadline == Clock::time_point::max()) {
      deadline = Clock::now() + config_.smtp_receive_timeout;
    }
    if (!co_await read_client(client, false, deadline)) co_return false;
    const auto n = take_buffered();
    if (relay && !mta_lost_) co_await write_mta(client_in_.view().substr(0, n));
    client_in_.consume(n);
  }
  discard_bdat_chunk_ = false;
  co_return true;
}

std::string Session::received_header() {
  return build_received_header({
      .helo = helo_name_,
      .extended_helo = extended_helo_,
      .authenticated = authenticated_,
      .client_name = identity_.name.status == ClientName::Status::found
                         ? std::string_view(identity_.name.name)
                         : std::string_view(),
      .client_address = identity_.address,
      .tls = tls_facts_ ? &*tls_facts_ : nullptr,
      .hostname = config_.hostname,
      .id = id_,
      .now = std::time(nullptr),
  });
}

std::string Session::proxy_v2_header() const {
  proxy_protocol::V2Header header{
      .source = {identity_.address, identity_.port},
      .destination = {identity_.local_address, identity_.local_port},
  };
  if (tls_facts_) {
    const auto& t = *tls_facts_;
    proxy_protocol::SslInfo ssl{
        .certificate_presented = t.peer != nullptr,
        .certificate_verified = t.verified,
        .version = t.protocol,
        .cipher = t.cipher,
        .sig_alg = t.server_certificate_signature,
        .key_alg = t.server_key,
        .client_cn = t.peer ? t.peer->common_name : std::string(),
    };
    header.ssl = std::move(ssl);
    header.authority = t.sni;
  }
  return proxy_protocol::encode_v2(header, config_.proxy_v2_max_header);
}

std::optional<Session::GroupEnd> Session::answer_while_detached(const smtp::Command& command) {
  const Verb verb = command.verb;
  auto answer = [&](std::string text) {
    pending_.push_back({.kind = PendingReply::Kind::local, .verb = verb, .text = std::move(text)});
  };
  const bool greeting = verb == Verb::ehlo || verb == Verb::helo;
  // XCLIENT (or no metadata): the client's greeting is the MTA's to answer, so it connects.
  // proxy-v2 answers it from the probe until the TLS outcome is known, and after that only
  // until the first connection: once one was given back, the MTA answers for this client.
  if (greeting &&
      (config_.backend_metadata != BackendMetadata::proxy_v2 || (reattaching_ && tls_active_))) {
    return std::nullopt;
  }
  switch (verb) {
    case Verb::ehlo: {
      const auto cached = services_.mta_ehlo_reply.load();
      if (!cached) {  // the MTA has not answered a probe yet: it is not there
        answer(services_.reply_service_unavailable);
        end_reason_ = "mail server unreachable";
        closing_ = true;
        return GroupEnd::close;
      }
      helo_name_ = std::string(command.arguments.substr(0, kMaxHeloName));
      extended_helo_ = true;
      replay_helo_ = std::string(command.line) + "\r\n";
      helo_state_ = HeloState::accepted;
      bdat_message_ = BdatMessage::none;  // a greeting ends any message
      learn_mta_extensions(*cached);
      chunking_shown_ = false;  // hidden below: the probe's connection carries no chunk
      auto reply =
          smtp::rewrite_ehlo_reply(*cached, {.offer_starttls = advertise_tls_ && !tls_active_,
                                             .hide_auth = !tls_active_,
                                             .hide_chunking = true});
      // The first line names the host: ours, as in our greeting.
      const auto end = reply.find("\r\n");
      reply.replace(4, end - 4, config_.hostname);
      if (!starttls_counted_) {
        starttls_counted_ = true;
        services_.metrics
            .starttls(advertise_tls_ ? metrics::StartTls::offered : metrics::StartTls::not_offered)
            .Increment();
      }
      answer(std::move(reply));
      return GroupEnd::none;
    }
    case Verb::helo:
      helo_name_ = std::string(command.arguments.substr(0, kMaxHeloName));
      extended_helo_ = false;
      replay_helo_ = std::string(command.line) + "\r\n";
      helo_state_ = HeloState::accepted;
      bdat_message_ = BdatMessage::none;  // a greeting ends any message
      learn_mta_extensions({});
      chunking_shown_ = false;
      answer("250 " + config_.hostname + "\r\n");
      return GroupEnd::none;
    case Verb::rset:
      bdat_message_ = BdatMessage::none;
      answer(std::string(kReplyOk));
      return GroupEnd::none;
    case Verb::noop:
      answer(std::string(kReplyOk));
      return GroupEnd::none;
    case Verb::quit:
      answer("221 2.0.0 Bye\r\n");
      end_reason_ = "quit";
      closing_ = true;
      return GroupEnd::quit;
    default:
      return std::nullopt;  // needs the MTA
  }
}

bool Session::refused_by_policy(Verb verb) {
  const acl::PolicyFacts facts{
      .port_requires_tls =
          std::find(config_.tls_require_ports.begin(), config_.tls_require_ports.end(),
                    identity_.local_port) != config_.tls_require_ports.end(),
      .host_requires_tls = config_.tls_require_hosts.matches(identity_.address),
      .host_requires_verified = config_.tls_require_verified_hosts.matches(identity_.address),
      .tls_active = tls_active_,
      .certificate_verified = tls_facts_ && tls_facts_->verified,
  };
  const auto refusal = acl::check_command(facts, verb);
  if (!refusal) return false;
  spdlog::info("{} {} refused by {}: {}", id_, client_label_, refusal->rule,
               refusal->reply.substr(0, refusal->reply.size() - 2));
  reply_locally(refusal->reply);
  return true;
}

// ---------------------------------------------------------------------------------------------
// The client's name, looked up while the MTA connection is made.

void Session::start_client_name_lookup() {
  if (!config_.client_name_lookup || config_.backend_metadata == BackendMetadata::none) return;
  name_lookup_ = std::make_shared<NameLookup>(client_.get_executor());
  services_.resolver.lookup(identity_.address, client_.get_executor(),
                            [lookup = name_lookup_](ClientName name) {
                              lookup->result = std::move(name);
                              lookup->ready.cancel();
                            });
}

asio::awaitable<void> Session::wait_for_client_name() {
  if (!name_lookup_) co_return;  // lookups off ([UNAVAILABLE]), or the name is settled
  if (!name_lookup_->result) {
    name_lookup_->ready.expires_after(kNameLookupTimeout);
    error_code ignored;
    co_await name_lookup_->ready.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (name_lookup_->result) {
    identity_.name = *name_lookup_->result;
  } else {
    identity_.name.status = identity_.name.reverse_status =
        ClientName::Status::temporarily_unavailable;
    spdlog::info("{} name lookup for {} timed out", id_, client_label_);
  }
  name_lookup_.reset();  // settled: a reconnection to the MTA uses the same name, at once
}

// proxy-v2 answers a greeting from the probe's EHLO reply: a client that comes before the
// first probe has finished (just after a start) waits for it, bounded, rather than hear that
// the MTA is unreachable.
asio::awaitable<void> Session::wait_for_first_probe() {
  constexpr auto kPoll = std::chrono::milliseconds(20);
  const auto give_up = Clock::now() + BackendProbe::kTimeout + std::chrono::seconds(1);
  asio::steady_timer timer(client_.get_executor());
  while (!services_.mta_probed.load(std::memory_order_acquire) && !terminating_ && !draining_ &&
         Clock::now() < give_up) {
    timer.expires_after(kPoll);
    error_code ignored;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
}

// ---------------------------------------------------------------------------------------------
// Deadlines: one timer per session, re-armed lazily. Arming only moves the deadline; the
// timer, when it fires early, sleeps again until the deadline.

void Session::arm(Clock::duration timeout) {
  arm_at(Clock::now() + timeout);
}

void Session::arm_at(Clock::time_point deadline) {
  deadline_ = deadline;
  if (watchdog_pending_ && watchdog_.expiry() <= deadline_) return;
  watchdog_.expires_at(deadline_);  // cancels a later wait, if any
  start_watchdog();
}

void Session::arm_release(Clock::time_point when) {
  release_at_ = when;
  if (watchdog_pending_ && watchdog_.expiry() <= when) return;
  watchdog_.expires_at(when);
  start_watchdog();
}

void Session::start_watchdog() {
  watchdog_pending_ = true;
  watchdog_.async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec == asio::error::operation_aborted) return;  // superseded or finished
    self->watchdog_pending_ = false;
    self->on_deadline();
  });
}

void Session::on_deadline() {
  const auto now = Clock::now();
  if (now >= release_at_ && now < deadline_) {  // set only while an idle client is awaited
    release_at_ = Clock::time_point::max();
    release_due_ = true;
    wake();
  }
  if (now < deadline_) {
    watchdog_.expires_at(std::min(deadline_, release_at_));
    start_watchdog();
    return;
  }
  timed_out_ = true;
  error_code ignored;
  client_.cancel(ignored);
  backend_.cancel(ignored);
}

}  // namespace stp
