// The client-side TLS context: what the proxy offers and trusts when it connects to a relay
// host or an MTA (the --relay-tls-* flags), built once and shared by every outbound
// connection, with the sessions kept for resumption (tls/session_cache.hpp). What differs per
// connection (the server's names, SNI, verify or only record) is a ConnectParameters, applied
// by prepare() to each new SSL; TlsStream's connect role does that.
//
// Trusts the operator's files only after OpenSSL has parsed them and the key matched its
// certificate; every failure names the flag it came from. Trusts nothing from the server:
// its certificate is judged by OpenSSL against the CAs, CRLs and names given here.
#pragma once

#include "tls/options.hpp"

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace stp::tls {

class SessionCache;

// What becomes of a server certificate that does not verify (chain, CRL or name): Exim's
// smtp transport options tls_verify_hosts and tls_try_verify_hosts.
enum class ServerVerification {
  try_verify,  // the handshake goes on; SSL_get_verify_result says what was wrong
  verify,      // the handshake fails
};

// A TLSA record as DANE takes it (RFC 6698): usage, selector, matching type, data.
struct DaneRecord {
  std::uint8_t usage = 0;
  std::uint8_t selector = 0;
  std::uint8_t matching_type = 0;
  std::string data;
  bool operator==(const DaneRecord&) const = default;
};

// One connection's terms.
struct ConnectParameters {
  // The server as the caller names it ("smtp.example.net:587"): sessions made with it are
  // kept under it and offered to the next connection with the same terms. Empty: this
  // connection neither resumes nor leaves a session behind.
  std::string peer;
  // Sent as SNI when it may be (sni_may_be_sent); otherwise no SNI goes out.
  std::string sni;
  // The certificate must match one of these: DNS names (wildcards only as the whole
  // left-most label; the subject CN counts only when the certificate has no DNS names, as
  // OpenSSL does), or an IP address literal without brackets, matched against iPAddress
  // names (and then besides a DNS name, when both kinds are given). Empty: the name is not
  // checked, only the chain.
  std::vector<std::string> names;
  ServerVerification verification = ServerVerification::try_verify;
  // DANE (RFC 7672): the certificate must match one of these TLSA records, with OpenSSL's
  // DANE support; a DANE-EE(3) match needs no name, a DANE-TA(2) match one of `names` (the
  // first is the reference name). The verification is then `verify`. Empty: no DANE.
  std::vector<DaneRecord> dane;
};

// Whether `name` goes out as SNI: a host name (is_host_name) and not an IPv4 address
// literal, which RFC 6066 forbids there.
bool sni_may_be_sent(std::string_view name);

class ClientContext {
 public:
  // Throws std::invalid_argument("--relay-tls-...: why").
  static std::shared_ptr<const ClientContext> create(const ClientOptions& options);

  ~ClientContext();
  ClientContext(const ClientContext&) = delete;
  ClientContext& operator=(const ClientContext&) = delete;

  SSL_CTX* native_handle() const { return ctx_; }
  // True when a client certificate is configured.
  bool has_certificate() const { return has_certificate_; }

  // Applies `parameters` to `ssl`, a new SSL made from this context, before its handshake:
  // SNI, the names checked, the verify mode, and the session kept for the same terms, if
  // any. False when OpenSSL could not (out of memory); `ssl` must not be used then.
  bool prepare(SSL* ssl, const ConnectParameters& parameters) const;

  // How many servers have a session kept (for tests and metrics).
  std::size_t kept_sessions() const;

 private:
  ClientContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool has_certificate_ = false;
  std::unique_ptr<SessionCache> sessions_;  // null when resumption is off
};

}  // namespace stp::tls
