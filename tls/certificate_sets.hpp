// Certificates chosen per client (issue 22): sets of --tls-host-certificate HOSTLIST=FILE[,KEY]
// picked by the client's address, and of --tls-sni-certificate NAME=FILE[,KEY] picked by the
// name its ClientHello asks for (several files for one host list or name: its RSA and ECDSA
// certificates). A host set the session chose (answer_with_host_set) comes first; then the
// SNI set of that name, a set whose certificate's DNS names cover the name (the default
// set's first), and last the default set (--tls-certificate).
//
// Every handshake's session ID context is set here too, from the set that answers and the
// session's client-certificate request (its verify mode): a session, or a ticket, resumes
// only under the TLS policy, the certificate set and the request that made it, so a session
// that never showed a certificate does not let a --tls-verify-hosts client in.
//
// Trusts the operator's files after OpenSSL parsed them and each key matched its certificate.
// The client's server_name extension is parsed here, bounded, and only compared, never
// logged from here.
#pragma once

#include "tls/options.hpp"
#include "tls/server_name.hpp"

#include <openssl/ssl.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stp::tls {

// Makes `ssl`'s handshake answer with the host set at `index` (in the order of first
// appearance in ServerOptions::host_certificates), whatever name the client asks for.
void answer_with_host_set(SSL* ssl, std::size_t index);

class CertificateSets {
 public:
  // Loads every set (there may be none); throws std::invalid_argument("--tls-sni-certificate:
  // why", or --tls-host-certificate). `defaults` is the context whose certificates are the
  // default set (their names are matched first); `policy` the text its session ID contexts
  // are made of (each set's adds its name).
  CertificateSets(const std::vector<NamedCertificate>& by_name,
                  const std::vector<NamedCertificate>& by_host, SSL_CTX* defaults,
                  const std::string& policy);
  ~CertificateSets();
  CertificateSets(const CertificateSets&) = delete;
  CertificateSets& operator=(const CertificateSets&) = delete;

  // Makes `ctx` pick a set and the session ID context at each ClientHello; these sets must
  // outlive it.
  void install(SSL_CTX* ctx) const;

  struct Leaf {
    const X509* certificate;
    const std::string& file;
  };
  // Every set's leaf certificates and their files, for the expiry metric.
  std::vector<Leaf> certificates() const;

 private:
  struct Loaded;
  struct Set;
  // One session ID context per client-certificate request, indexed by the request.
  using SessionContexts = std::array<std::vector<unsigned char>, 3>;
  static SessionContexts session_contexts(const std::string& flag, const std::string& text);
  // The set for `name`; null: the default set.
  const Set* choose(std::string_view name) const;
  static int on_client_hello(SSL* ssl, int* alert, void* arg);

  // Appends `named`'s sets to `sets`, one per name in order of first appearance.
  static void load(const std::vector<NamedCertificate>& named, const std::string& flag,
                   const std::string& kind, const std::string& policy,
                   std::vector<std::unique_ptr<Set>>& sets);

  std::vector<std::unique_ptr<Set>> sets_;       // by SNI name
  std::vector<std::unique_ptr<Set>> host_sets_;  // by client address
  std::vector<std::string> default_names_;       // DNS names of the default set's certificates
  SessionContexts default_contexts_;
};

}  // namespace stp::tls
