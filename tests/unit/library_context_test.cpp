// tls::tls_library_context and the TLS context built in it: a certificate's public key of any
// type decodes there as in OpenSSL's default context, only such decoders are offered there (so
// the cut is real), every TLS suite of the default context is offered there too, and the files
// the operator gives load as before: a key in the certificate's file, a CA file that also
// holds a private key, a key that does not match.
#include "tls/library_context.hpp"
#include "tls/tls_context.hpp"

#include <gtest/gtest.h>
#include <openssl/decoder.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace stp::tls {
namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Free>;

// A certificate for `key`, signed by `signer` (an EC key when `key` cannot sign).
Owned<X509> certificate_for(EVP_PKEY* key, EVP_PKEY* signer) {
  Owned<X509> x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 86400);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("test"), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  X509_set_pubkey(x.get(), key);
  const bool digestless = EVP_PKEY_is_a(signer, "ED25519") || EVP_PKEY_is_a(signer, "ED448");
  EXPECT_GT(X509_sign(x.get(), signer, digestless ? nullptr : EVP_sha256()), 0);
  return x;
}

std::vector<unsigned char> der_of(X509* x) {
  unsigned char* out = nullptr;
  const int n = i2d_X509(x, &out);
  std::vector<unsigned char> der(out, out + std::max(n, 0));
  OPENSSL_free(out);
  return der;
}

// As libssl reads a peer's certificate: into an object made in the TLS context's library
// context. (A failed d2i frees the object and nulls the pointer.)
Owned<X509> parse_in(OSSL_LIB_CTX* context, const std::vector<unsigned char>& der) {
  X509* x = X509_new_ex(context, nullptr);
  const unsigned char* p = der.data();
  if (x && !d2i_X509(&x, &p, static_cast<long>(der.size()))) return nullptr;
  return Owned<X509>(x);
}

Owned<EVP_PKEY> rsa_pss_key() {
  EVP_PKEY* key = nullptr;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA-PSS", nullptr);
  if (ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048) == 1) {
    EVP_PKEY_keygen(ctx, &key);
  }
  EVP_PKEY_CTX_free(ctx);
  return Owned<EVP_PKEY>(key);
}

TEST(LibraryContext, IsSetUpWhereOpenSslHasOnlyItsDefaultProvider) {
  // Debian's openssl.cnf, as on the machines the tests run on, configures no other provider.
  ASSERT_NE(tls_library_context(), nullptr);
  EXPECT_EQ(tls_library_context(), tls_library_context());
}

TEST(LibraryContext, DecodesACertificatesKeyOfEveryTypeAsTheDefaultContextDoes) {
  OSSL_LIB_CTX* context = tls_library_context();
  ASSERT_NE(context, nullptr);
  Owned<EVP_PKEY> ec_signer(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  const std::vector<Owned<EVP_PKEY>> keys = [] {
    std::vector<Owned<EVP_PKEY>> k;
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
    k.emplace_back(rsa_pss_key());
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-521"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED448"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519"));
    return k;
  }();
  for (const auto& key : keys) {
    ASSERT_NE(key, nullptr);
    const std::string type = EVP_PKEY_get0_type_name(key.get());
    SCOPED_TRACE(type);
    const bool signs = type != "X25519";
    const auto certificate = certificate_for(key.get(), signs ? key.get() : ec_signer.get());
    const auto parsed = parse_in(context, der_of(certificate.get()));
    ASSERT_NE(parsed, nullptr);
    EVP_PKEY* decoded = X509_get0_pubkey(parsed.get());
    ASSERT_NE(decoded, nullptr);
    EXPECT_EQ(EVP_PKEY_eq(decoded, key.get()), 1);
    EXPECT_TRUE(EVP_PKEY_is_a(decoded, type.c_str()));
    // The key works for what TLS does with it: checking the certificate's own signature.
    if (signs) {
      EXPECT_EQ(X509_verify(parsed.get(), decoded), 1);
    }
  }
}

// The structures of the decoders a library context offers, one entry per decoder.
std::vector<std::string> decoder_structures(OSSL_LIB_CTX* context) {
  std::vector<std::string> structures;
  OSSL_DECODER_do_all_provided(
      context,
      [](OSSL_DECODER* decoder, void* out) {
        const std::string properties = OSSL_DECODER_get0_properties(decoder);
        const auto at = properties.find("structure=");
        static_cast<std::vector<std::string>*>(out)->push_back(
            at == std::string::npos ? "(none)" : properties.substr(at + 10));
      },
      &structures);
  return structures;
}

TEST(LibraryContext, OffersOnlyTheDecodersOfACertificatesKey) {
  const auto kept = decoder_structures(tls_library_context());
  const auto all = decoder_structures(nullptr);
  EXPECT_GE(kept.size(), 8u);  // RSA, RSA-PSS, EC, Ed25519, Ed448, X25519, X448, DSA, ...
  EXPECT_LT(kept.size(), all.size());
  for (const auto& structure : kept) EXPECT_EQ(structure.substr(0, 20), "SubjectPublicKeyInfo");
  EXPECT_EQ(std::count(all.begin(), all.end(), "SubjectPublicKeyInfo"),
            std::count(kept.begin(), kept.end(), "SubjectPublicKeyInfo"));
}

// The TLS 1.2 and 1.3 suites a server context offers when asked for every one OpenSSL has.
std::vector<std::string> every_suite_in(OSSL_LIB_CTX* context) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(
      SSL_CTX_new_ex(context, nullptr, TLS_server_method()), &SSL_CTX_free);
  std::vector<std::string> names;
  if (!ctx || SSL_CTX_set_cipher_list(ctx.get(), "ALL:COMPLEMENTOFALL:@SECLEVEL=0") != 1 ||
      SSL_CTX_set_ciphersuites(ctx.get(),
                               "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                               "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_CCM_SHA256:"
                               "TLS_AES_128_CCM_8_SHA256") != 1) {
    return names;
  }
  const STACK_OF(SSL_CIPHER)* suites = SSL_CTX_get_ciphers(ctx.get());
  for (int i = 0; i < sk_SSL_CIPHER_num(suites); ++i) {
    names.emplace_back(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(suites, i)));
  }
  return names;
}

TEST(LibraryContext, OffersTheSameTlsSuitesAsTheDefaultContext) {
  const auto here = every_suite_in(tls_library_context());
  const auto by_default = every_suite_in(nullptr);
  EXPECT_GT(by_default.size(), 60u);  // CAMELLIA, ARIA, 3DES, CCM, NULL suites among them
  EXPECT_EQ(here, by_default);
}

// PEM files for one test, removed after it.
class ServerContextFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::temp_directory_path() /
                 ("stp-library-context-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(directory_);
    key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    certificate_ = certificate_for(key_.get(), key_.get());
    config_.hostname = "mx.example.org";
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  std::string write(const std::string& name, X509* certificate, EVP_PKEY* key) {
    const auto path = (directory_ / name).string();
    Owned<BIO> bio(BIO_new_file(path.c_str(), "w"));
    if (certificate) PEM_write_bio_X509(bio.get(), certificate);
    if (key) PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
    return path;
  }

  std::filesystem::path directory_;
  Owned<EVP_PKEY> key_;
  Owned<X509> certificate_;
  Config config_;
};

TEST_F(ServerContextFiles, LoadsAKeyKeptInTheCertificatesFile) {
  config_.tls_certificates = {write("both.pem", certificate_.get(), key_.get())};
  const auto context = ServerContext::create(config_);
  ASSERT_EQ(context->certificates().size(), 1u);
  EXPECT_EQ(context->certificates()[0].label, "test ECDSA");
}

TEST_F(ServerContextFiles, RefusesAKeyThatDoesNotMatchTheCertificate) {
  Owned<EVP_PKEY> other(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  config_.tls_certificates = {write("cert.pem", certificate_.get(), nullptr)};
  config_.tls_privatekeys = {write("other.key", nullptr, other.get())};
  try {
    ServerContext::create(config_);
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--tls-privatekey"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
}

TEST_F(ServerContextFiles, RefusesAFileWithoutAKey) {
  config_.tls_certificates = {write("cert.pem", certificate_.get(), nullptr)};
  try {
    ServerContext::create(config_);
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--tls-certificate: cannot load private key"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(ServerContextFiles, TakesACaFileThatAlsoHoldsAPrivateKey) {
  // The file is read whole, key included, as it always was: in OpenSSL's default context.
  config_.tls_certificates = {write("both.pem", certificate_.get(), key_.get())};
  config_.tls_verify_certificates = write("ca-and-key.pem", certificate_.get(), key_.get());
  EXPECT_NO_THROW(ServerContext::create(config_));
}

}  // namespace
}  // namespace stp::tls
