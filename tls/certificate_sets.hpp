// Certificates chosen per SNI name (issue 22): sets of --tls-sni-certificate NAME=FILE[,KEY]
// (several files for one name: its RSA and ECDSA certificates), picked when the client's
// ClientHello names one; otherwise a set whose certificate's DNS names cover the name asked
// for, the default set's first; otherwise the default set (--tls-certificate). A session
// resumes only under the set that made it.
//
// Trusts the operator's files after OpenSSL parsed them and each key matched its certificate.
// The client's server_name extension is parsed here, bounded, and only compared, never
// logged from here.
#pragma once

#include "tls/options.hpp"

#include <openssl/ssl.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stp::tls {

// Whether `pattern` (exact, or "*." and one label) covers `name`; both lower case.
bool name_covers(std::string_view pattern, std::string_view name);

// The host name of a ClientHello's server_name extension (its body), lower case, without a
// trailing dot; nullopt when there is none or the extension is malformed.
std::optional<std::string> server_name_of(const unsigned char* body, std::size_t size);

class CertificateSets {
 public:
  // Loads every set; throws std::invalid_argument("--tls-sni-certificate: why"). `defaults`
  // is the context whose certificates are the default set (their names are matched first);
  // `policy` the text its session ID context is made of (each set's adds its name).
  CertificateSets(const std::vector<NamedCertificate>& named, SSL_CTX* defaults,
                  const std::string& policy);
  ~CertificateSets();
  CertificateSets(const CertificateSets&) = delete;
  CertificateSets& operator=(const CertificateSets&) = delete;

  // Makes `ctx` pick a set at each ClientHello; these sets must outlive it.
  void install(SSL_CTX* ctx) const;

  // Every set's leaf certificates, for the expiry metric.
  std::vector<const X509*> certificates() const;

 private:
  struct Loaded;
  struct Set;
  // The set for `name`; null: the default set.
  const Set* choose(std::string_view name) const;
  static int on_client_hello(SSL* ssl, int* alert, void* arg);

  std::vector<std::unique_ptr<Set>> sets_;
  std::vector<std::string> default_names_;  // DNS names of the default set's certificates
};

}  // namespace stp::tls
