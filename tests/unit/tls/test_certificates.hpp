// Certificates and keys made in memory for the unit tests, and the owners that free them.
// Trusts nothing; test code only.
#pragma once

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

namespace stp::test {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
  void operator()(SSL* p) const { SSL_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Free>;

// A certificate named `cn` for `key`, issued by `issuer` (self-issued when null) and signed by
// `issuer_key` (by `key` when null; Ed25519 and Ed448 sign without a digest), valid from an
// hour ago for `valid_seconds`, with basicConstraints CA:TRUE (critical) or CA:FALSE, and
// subjectAltName `alt_names` when not empty ("DNS:mx.example.net,IP:192.0.2.1").
inline Owned<X509> make_certificate(const std::string& cn, EVP_PKEY* key, X509* issuer = nullptr,
                                    EVP_PKEY* issuer_key = nullptr, long valid_seconds = 86400,
                                    bool ca = false, const std::string& alt_names = "") {
  static long serial = 1;
  Owned<X509> x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), valid_seconds);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509_set_pubkey(x.get(), key);
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  const char* constraints = ca ? "critical,CA:TRUE" : "CA:FALSE";
  if (X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_basic_constraints, constraints)) {
    X509_add_ext(x.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (!alt_names.empty()) {
    if (X509_EXTENSION* ext =
            X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, alt_names.c_str())) {
      X509_add_ext(x.get(), ext, -1);
      X509_EXTENSION_free(ext);
    }
  }
  EVP_PKEY* signer = issuer_key ? issuer_key : key;
  const bool digestless = EVP_PKEY_is_a(signer, "ED25519") || EVP_PKEY_is_a(signer, "ED448");
  X509_sign(x.get(), signer, digestless ? nullptr : EVP_sha256());
  return x;
}

// Writes `certificate` and then `key` (either may be null) to a PEM file at `path`.
inline void write_pem(const std::string& path, X509* certificate, EVP_PKEY* key) {
  Owned<BIO> bio(BIO_new_file(path.c_str(), "w"));
  if (certificate) PEM_write_bio_X509(bio.get(), certificate);
  if (key) PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
}

// A directory of PEM files for one test (named after `name` and the process), removed with it.
class PemDirectory {
 public:
  explicit PemDirectory(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("stp-" + name + "-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~PemDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  PemDirectory(const PemDirectory&) = delete;
  PemDirectory& operator=(const PemDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Writes `certificate` and then `key` (either may be null) to `file` here; its path.
  std::string write(const std::string& file, X509* certificate, EVP_PKEY* key) const {
    const auto path = (path_ / file).string();
    write_pem(path, certificate, key);
    return path;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace stp::test
