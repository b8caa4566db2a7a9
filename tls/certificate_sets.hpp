// Certificates chosen per client (issue 22): sets of --tls-host-certificate HOSTLIST=FILE[,KEY]
// picked by the client's address, and of --tls-sni-certificate NAME=FILE[,KEY] picked by the
// name its ClientHello asks for (several files for one host list or name: its RSA and ECDSA
// certificates). A host set the session chose (answer_with_host_set) comes first; then the
// SNI set of that name, a set whose certificate's DNS names cover the name (the default
// set's first), and last the default set (--tls-certificate). A session resumes only under
// the set that made it.
//
// Trusts the operator's files after OpenSSL parsed them and each key matched its certificate.
// The client's server_name extension is parsed here, bounded, and only compared, never
// logged from here.
#pragma once

#include "tls/options.hpp"
#include "tls/server_name.hpp"

#include <openssl/ssl.h>

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
  // Loads every set; throws std::invalid_argument("--tls-sni-certificate: why", or
  // --tls-host-certificate). `defaults` is the context whose certificates are the default set
  // (their names are matched first); `policy` the text its session ID context is made of
  // (each set's adds its name).
  CertificateSets(const std::vector<NamedCertificate>& by_name,
                  const std::vector<NamedCertificate>& by_host, SSL_CTX* defaults,
                  const std::string& policy);
  ~CertificateSets();
  CertificateSets(const CertificateSets&) = delete;
  CertificateSets& operator=(const CertificateSets&) = delete;

  // Makes `ctx` pick a set at each ClientHello; these sets must outlive it.
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
};

}  // namespace stp::tls
