// What a TLS session was, gathered once after the handshake: for the Received header, the log
// lines, the PROXY v2 TLVs, the metrics and the encryption policy. Also the per-session
// client-certificate request (Exim's tls_verify_hosts / tls_try_verify_hosts).
//
// Both roles of TlsStream: in the accept role the peer is the client and the server_* facts
// are about our own certificate; in the connect role the peer is the server, and the server_*
// facts are about its certificate (Postfix's client-side line says "server-signature" too).
//
// Trusts OpenSSL's view of the session; the peer certificate's text (DNs, CN) is the peer's
// own and is escaped by whoever prints it.
#pragma once

#include "tls/options.hpp"
#include "tls/server_name.hpp"

#include <openssl/ssl.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace stp::tls {

enum class ClientCertificateRequest {
  none,        // not asked for
  try_verify,  // asked for; the handshake goes on whatever comes
  verify,      // asked for; no certificate or a bad one ends the handshake
};

// The one CN of a name, as UTF-8 (empty when it has none); nullopt when it has several (which
// would the MTA be told?) or one holding a NUL (a C string would cut "good.example\0.evil").
std::optional<std::string> common_name_of(const X509_NAME* name);

// Sets how this session asks for a client certificate (before the handshake), and with it
// which earlier sessions it may resume: only those made under the same request (the server
// context's ClientHello callback reads the request from the verify mode; CertificateSets).
void request_client_certificate(SSL* ssl, ClientCertificateRequest request);

struct PeerCertificate {
  std::string subject;               // in the configured DN format
  std::string subject_openssl;       // "/C=../CN=.."
  std::string subject_rfc2253;       // "CN=..,C=.."
  std::string common_name;           // empty when there is none, or when it is refused:
  bool common_name_refused = false;  // several CNs, or a NUL inside one
  std::string issuer;                // in the configured DN format
  std::string issuer_common_name;
  std::string serial;      // hex
  std::string sha256;      // hex, colon-separated
  std::string not_before;  // RFC 5322-ish as OpenSSL prints it
  std::string not_after;
  std::string key_algorithm;  // "RSA", "EC", ...
};

struct SessionFacts {
  std::string protocol;  // "TLSv1.3"
  std::string cipher;    // OpenSSL name
  int cipher_bits = 0;
  int cipher_algorithm_bits = 0;
  std::string key_exchange;      // Postfix style: "X25519", "ECDHE (P-256)", "DHE (2048 bits)"
  std::string server_signature;  // "ECDSA (P-256)", "RSA-PSS (2048 bits)"
  std::string server_digest;     // "SHA256"
  // How the server's certificate is signed ("ecdsa-with-SHA256") and its key ("EC256",
  // "RSA2048"): ours in the accept role, the peer's in the connect role.
  std::string server_certificate_signature;
  std::string server_key;
  // The subject CN of the certificate that answered, in the accept role (empty: none, or not
  // one CN).
  std::string server_common_name;
  std::string sni;          // the name the client asked for: a host name (is_host_name)
  std::string refused_sni;  // what it sent instead, if not a host name: only logged, escaped
  bool resumed = false;

  ClientCertificateRequest request = ClientCertificateRequest::none;  // connect role: none
  // Null when none was presented; held apart, since most sessions have none and it is a
  // dozen strings (every idle session keeps its facts).
  std::unique_ptr<PeerCertificate> peer;
  bool verified = false;      // a certificate was presented and verified
  std::string verify_error;   // OpenSSL's reason when one was presented and did not verify
  std::string verify_reason;  // short label for metrics: expired, revoked, unknown_ca, ...

  // Exim's X= field: protocol:cipher:bits.
  std::string exim_cipher_field() const;
};

// In the connect role `request` is ClientCertificateRequest::none.
SessionFacts gather_session_facts(SSL* ssl, ClientCertificateRequest request,
                                  PeerDnFormat dn_format);

// The short label of an X509_V_ERR_* code, for metrics.
std::string verify_reason_label(long verify_result);

}  // namespace stp::tls
