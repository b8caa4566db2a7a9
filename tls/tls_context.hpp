// The server-side TLS context: certificates, protocol floor, ciphers and key exchange, built
// once and shared by every session (sessions hold a reference, so a future reload can swap
// in a new one while sessions in flight keep theirs).
//
// Trusts the operator's files only after OpenSSL has parsed them and the key matched its
// certificate; every failure names the flag it came from.
#pragma once

#include "tls/options.hpp"

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

namespace stp::tls {

class CertificateSets;
class TicketKeys;
class VerifyCache;

class ServerContext {
 public:
  // Throws std::invalid_argument("--tls-...: why").
  static std::shared_ptr<const ServerContext> create(const ServerOptions& options);

  ~ServerContext();
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  SSL_CTX* native_handle() const { return ctx_; }
  // True when no certificate was configured and a throw-away one was generated.
  bool self_signed() const { return self_signed_; }

  struct Certificate {
    std::string label;  // subject CN and key type, e.g. "mx.example.org ECDSA"
    std::string file;   // where it was loaded from; "self-signed" for the generated one
    double not_after;   // Unix time
  };
  // The server certificates in use: the default set's (one per key type), then the host
  // sets' and the SNI sets'.
  const std::vector<Certificate>& certificates() const { return certificates_; }

 private:
  ServerContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool self_signed_ = false;
  std::vector<Certificate> certificates_;
  std::unique_ptr<VerifyCache> verify_cache_;  // null when off or nothing is verified
  std::shared_ptr<TicketKeys> ticket_keys_;
  // The certificates chosen per client, and every handshake's session ID context.
  std::unique_ptr<CertificateSets> certificate_sets_;
};

// The OpenSSL error queue as one line (and cleared), for logs and error messages.
std::string take_openssl_errors();

}  // namespace stp::tls
