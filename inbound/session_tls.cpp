// An inbound session's TLS: the stream made at STARTTLS (or at connect on an implicit-TLS
// port), the handshake under the client-certificate policy, and what it records of the
// session (metrics, Postfix's and Exim's log lines).
#include "inbound/session.hpp"

#include "proxy/log.hpp"
#include "smtp/address.hpp"
#include "tls/certificate_sets.hpp"
#include "tls/tls_context.hpp"
#include "tls/verify_cache.hpp"

namespace stp::inbound {
using boost::system::error_code;

namespace {

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

void Session::start_tls_stream() {
  tls_.emplace(client_, services_.runtime.current_tls());
  SSL* ssl = tls_->native_handle();
  if (!ssl) return;
  tls::request_client_certificate(ssl, certificate_request_);
  const auto& hosts = config_.tls_host_certificates.hosts;
  for (std::size_t i = 0; i < hosts.size(); ++i) {
    if (hosts[i].matches(identity_.address)) {
      tls::answer_with_host_set(ssl, i);
      break;
    }
  }
}

boost::asio::awaitable<bool> Session::handshake() {
  deadline_.arm(config_.tls_handshake_timeout);
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
  stage_ = Stage::tls;
  record_tls_session();
  forget_plaintext_state();
  co_return true;
}

// RFC 3207: everything learned from the client before TLS is forgotten.
void Session::forget_plaintext_state() {
  helo_name_.clear();
  replay_helo_.clear();
  helo_state_ = HeloState::none;
  extended_helo_ = false;
  learn_mta_extensions({});
  chunking_shown_ = false;
  framer_.reset();
}

void Session::record_handshake_failure(const error_code& ec) {
  const bool timed_out = deadline_.expired();
  end_reason_ = timed_out ? "tls handshake timeout" : "tls handshake failed";
  if (timed_out) violation(metrics::Violation::timeout);
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
               timed_out ? std::string("timeout") : log::escape(ec.message(), 200), certificate);
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
               t.resumed ? "reused" : "established", name, unmapped(identity_.address).to_string(),
               t.sni.empty() ? std::string() : " to " + log::escape(t.sni, 100), t.protocol,
               t.cipher, t.cipher_bits, t.cipher_algorithm_bits, details, id_);
  if (config_.chooses_server_certificate()) {
    spdlog::info("{} answered {} with the certificate of CN \"{}\"", id_,
                 t.sni.empty() ? std::string("no SNI") : "SNI " + t.sni,
                 log::escape(t.server_common_name, 100));
  }
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

}  // namespace stp::inbound
