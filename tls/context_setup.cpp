// TLS context set-up shared by the server and client sides; see context_setup.hpp.
#include "tls/context_setup.hpp"

#include "tls/openssl_values.hpp"
#include "tls/tls_context.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <memory>
#include <stdexcept>

namespace stp::tls::setup {
namespace {

// TLS 1.2 suites when the operator sets none: AEAD with forward secrecy only.
constexpr const char* kDefaultCipherList =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256";

struct Deleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Deleter>;

std::string flag(std::string_view prefix, std::string_view name) {
  std::string out(prefix);
  out += name;
  return out;
}

}  // namespace

void fail(std::string_view flag, std::string_view what) {
  std::string message(flag);
  message += ": ";
  message += what;
  const auto details = take_openssl_errors();
  if (!details.empty()) message += " (" + details + ")";
  throw std::invalid_argument(message);
}

void use_protocols_and_ciphers(SSL_CTX* ctx, std::string_view prefix,
                               const std::string& min_protocol, const std::string& require_ciphers,
                               const std::string& ciphersuites) {
  if (min_protocol != "TLSv1.2" && min_protocol != "TLSv1.3") {
    fail(flag(prefix, "min-protocol"), "must be TLSv1.2 or TLSv1.3, not \"" + min_protocol + "\"");
  }
  SSL_CTX_set_min_proto_version(ctx, min_protocol == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  const std::string& ciphers =
      require_ciphers.empty() ? std::string(kDefaultCipherList) : require_ciphers;
  if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) {
    fail(flag(prefix, "require-ciphers"), "no usable cipher in \"" + ciphers + "\"");
  }
  if (!ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, ciphersuites.c_str()) != 1) {
    fail(flag(prefix, "ciphersuites"), "no usable TLS 1.3 suite in \"" + ciphersuites + "\"");
  }
}

void use_certificate_and_key(SSL_CTX* ctx, std::string_view prefix,
                             const std::string& certificate_file, const std::string& key_file) {
  const std::string certificate_flag = flag(prefix, "certificate");
  if (SSL_CTX_use_certificate_chain_file(ctx, certificate_file.c_str()) != 1) {
    fail(certificate_flag, "cannot load certificate chain from " + certificate_file);
  }
  // Read in OpenSSL's default context: the TLS context's own decodes public keys only.
  const std::string key_flag =
      key_file == certificate_file ? certificate_flag : flag(prefix, "privatekey");
  Owned<BIO> bio(BIO_new_file(key_file.c_str(), "r"));
  if (!bio) fail(key_flag, "cannot load private key from " + key_file);
  Owned<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) fail(key_flag, "cannot load private key from " + key_file);
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1) {  // OpenSSL says why: a mismatch, say
    fail(key_flag,
         "the key in " + key_file + " cannot be used with the certificate in " + certificate_file);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    fail(key_flag, "key in " + key_file + " does not match certificate " + certificate_file);
  }
  STACK_OF(X509)* chain = nullptr;
  SSL_CTX_get0_chain_certs(ctx, &chain);
  check_chain_order(certificate_flag, certificate_file, SSL_CTX_get0_certificate(ctx), chain);
}

void check_chain_order(std::string_view flag, const std::string& file, X509* leaf,
                       const STACK_OF(X509) * chain) {
  X509* subject = leaf;
  for (int i = 0; i < sk_X509_num(chain); ++i) {
    X509* issuer = sk_X509_value(chain, i);
    if (X509_check_issued(issuer, subject) != X509_V_OK) {
      fail(flag, "the certificates in " + file + " are not in order: certificate " +
                     std::to_string(i + 2) +
                     " did not issue the one before it (leaf first, then each one's issuer)");
    }
    subject = issuer;
  }
}

CaSource use_trusted_cas(SSL_CTX* ctx, std::string_view prefix, const std::string& path) {
  const std::string ca_flag = flag(prefix, "verify-certificates");
  // A CA file is read in OpenSSL's default context, as it always was (see
  // library_context.hpp); a directory's CAs are read as verifications look them up.
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  if (path == "system") {
    if (X509_STORE_set_default_paths(store) != 1) {
      fail(ca_flag, "cannot load the system CA certificates");
    }
    return CaSource::system;
  }
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) fail(ca_flag, "cannot read " + path);
  if (S_ISDIR(st.st_mode)) {
    // A hashed directory: looked up by name during verification.
    if (X509_STORE_load_path(store, path.c_str()) != 1) {
      fail(ca_flag, "cannot use directory " + path);
    }
    return CaSource::directory;
  }
  if (X509_STORE_load_file(store, path.c_str()) != 1) {
    fail(ca_flag, "no CA certificate in " + path);
  }
  return CaSource::file;
}

std::optional<std::time_t> use_crls(SSL_CTX* ctx, std::string_view prefix,
                                    const std::string& path) {
  const std::string crl_flag = flag(prefix, "crl");
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  std::optional<std::time_t> horizon;
  Owned<BIO> bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) fail(crl_flag, "cannot read " + path);
  int loaded = 0;
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    const ASN1_TIME* next_update = X509_CRL_get0_nextUpdate(crl);
    if (const auto t = unix_time(next_update)) horizon = horizon ? std::min(*horizon, *t) : *t;
    if (next_update && X509_cmp_current_time(next_update) < 0) {
      char issuer[256] = "";
      X509_NAME_oneline(X509_CRL_get_issuer(crl), issuer, sizeof issuer);
      spdlog::warn(
          "{} {}: the CRL of {} is past its next update; certificates it covers "
          "will not verify until it is renewed",
          crl_flag, path, issuer);
    }
    X509_STORE_add_crl(store, crl);
    X509_CRL_free(crl);
    ++loaded;
  }
  ERR_clear_error();  // the end of the file reads as an error
  if (loaded == 0) fail(crl_flag, "no CRL in " + path);
  // As Exim does: every certificate of the chain below the trust anchor is checked.
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
  return horizon;
}

}  // namespace stp::tls::setup
