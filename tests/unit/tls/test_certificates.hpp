// Certificates and keys made in memory for the unit tests, the owners that free them, and a
// TLS connection over memory BIOs.
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
#include <string_view>

namespace stp::test {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
  void operator()(SSL* p) const { SSL_free(p); }
  void operator()(SSL_SESSION* p) const { SSL_SESSION_free(p); }
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

// One TLS connection over memory BIOs (a BIO pair), server in `server`, client in `client`.
class MemoryConnection {
 public:
  MemoryConnection(SSL_CTX* server, SSL_CTX* client, SSL_SESSION* resume = nullptr)
      : server_(SSL_new(server)), client_(SSL_new(client)) {
    BIO* a = nullptr;
    BIO* b = nullptr;
    BIO_new_bio_pair(&a, 0, &b, 0);
    SSL_set_bio(server_, a, a);
    SSL_set_bio(client_, b, b);
    SSL_set_accept_state(server_);
    SSL_set_connect_state(client_);
    if (resume) SSL_set_session(client_, resume);
  }
  ~MemoryConnection() {
    // A clean close: OpenSSL does not resume a session whose connection just stopped.
    SSL_shutdown(client_);
    SSL_shutdown(server_);
    SSL_free(server_);
    SSL_free(client_);
  }
  MemoryConnection(const MemoryConnection&) = delete;
  MemoryConnection& operator=(const MemoryConnection&) = delete;

  // Handshakes, then sends a line each way (the TLS 1.3 tickets arrive with the server's).
  bool exchange() {
    for (int round = 0; round < 20; ++round) {
      const int c = SSL_do_handshake(client_);
      const int s = SSL_do_handshake(server_);
      if (c == 1 && s == 1) break;
      if (c <= 0 && SSL_get_error(client_, c) != SSL_ERROR_WANT_READ) return false;
      if (s <= 0 && SSL_get_error(server_, s) != SSL_ERROR_WANT_READ) return false;
    }
    return echo(client_, server_) && echo(server_, client_);
  }
  SSL* client() const { return client_; }
  SSL* server() const { return server_; }

 private:
  static bool echo(SSL* from, SSL* to) {
    const std::string line = "250 OK\r\n";
    char buffer[64];
    std::size_t written = 0;
    std::size_t read = 0;
    return SSL_write_ex(from, line.data(), line.size(), &written) == 1 &&
           SSL_read_ex(to, buffer, sizeof buffer, &read) == 1 && std::string(buffer, read) == line;
  }
  SSL* server_;
  SSL* client_;
};

}  // namespace stp::test
