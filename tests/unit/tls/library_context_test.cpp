// tls::tls_library_context and the TLS context built in it: a certificate's public key of any
// type that signs decodes there as in OpenSSL's default context, and one of a key that cannot
// sign reads without its key; only such decoders are offered there, and none of the cut key
// managers (so the cuts are real); every TLS suite and key-exchange group of the default
// context works there too; and the files the operator gives load as before: a key in the
// certificate's file, a CA file that also holds a private key, a key that does not match.
#include "tls/library_context.hpp"
#include "tls/tls_context.hpp"

#include "test_certificates.hpp"

#include <gtest/gtest.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace stp::tls {
namespace {

using test::MemoryConnection;
using test::Owned;
using OwnedContext = Owned<SSL_CTX>;

// A certificate named "test" for `key`, signed by `signer`.
Owned<X509> certificate_for(EVP_PKEY* key, EVP_PKEY* signer, bool ca = false) {
  return test::make_certificate("test", key, nullptr, signer, 86400, ca);
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

Owned<EVP_PKEY> dh_key() {
  EVP_PKEY* key = nullptr;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "DH", nullptr);
  const OSSL_PARAM group[] = {
      OSSL_PARAM_construct_utf8_string("group", const_cast<char*>("ffdhe2048"), 0),
      OSSL_PARAM_construct_end()};
  if (ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_CTX_set_params(ctx, group) == 1) {
    EVP_PKEY_keygen(ctx, &key);
  }
  EVP_PKEY_CTX_free(ctx);
  return Owned<EVP_PKEY>(key);
}

TEST(LibraryContext, DecodesACertificatesKeyOfEverySigningTypeAsTheDefaultContextDoes) {
  OSSL_LIB_CTX* context = tls_library_context();
  ASSERT_NE(context, nullptr);
  const std::vector<Owned<EVP_PKEY>> keys = [] {
    std::vector<Owned<EVP_PKEY>> k;
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
    k.emplace_back(rsa_pss_key());
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-521"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
    k.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED448"));
    return k;
  }();
  for (const auto& key : keys) {
    ASSERT_NE(key, nullptr);
    const std::string type = EVP_PKEY_get0_type_name(key.get());
    SCOPED_TRACE(type);
    const auto certificate = certificate_for(key.get(), key.get());
    const auto parsed = parse_in(context, der_of(certificate.get()));
    ASSERT_NE(parsed, nullptr);
    EVP_PKEY* decoded = X509_get0_pubkey(parsed.get());
    ASSERT_NE(decoded, nullptr);
    EXPECT_EQ(EVP_PKEY_eq(decoded, key.get()), 1);
    EXPECT_TRUE(EVP_PKEY_is_a(decoded, type.c_str()));
    // The key works for what TLS does with it: checking a certificate's signature.
    EXPECT_EQ(X509_verify(parsed.get(), decoded), 1);
  }
}

TEST(LibraryContext, ReadsACertificateOfAKeyThatCannotSignWithoutItsKey) {
  // Such a certificate is of no use to a handshake (its key can neither sign the
  // CertificateVerify nor a certificate below it), so its key's decoder is cut; the
  // certificate itself still reads, and its issuer's signature on it still checks.
  OSSL_LIB_CTX* context = tls_library_context();
  ASSERT_NE(context, nullptr);
  Owned<EVP_PKEY> issuer(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  std::vector<Owned<EVP_PKEY>> keys;
  keys.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519"));
  keys.emplace_back(EVP_PKEY_Q_keygen(nullptr, nullptr, "X448"));
  keys.emplace_back(dh_key());
  for (const auto& key : keys) {
    ASSERT_NE(key, nullptr);
    SCOPED_TRACE(EVP_PKEY_get0_type_name(key.get()));
    const auto der = der_of(certificate_for(key.get(), issuer.get()).get());
    const auto by_default = parse_in(nullptr, der);
    ASSERT_NE(by_default, nullptr);
    EXPECT_NE(X509_get0_pubkey(by_default.get()), nullptr);  // the cut is real
    const auto parsed = parse_in(context, der);
    ASSERT_NE(parsed, nullptr);
    EXPECT_EQ(X509_get0_pubkey(parsed.get()), nullptr);
    EXPECT_EQ(X509_verify(parsed.get(), issuer.get()), 1);
    ERR_clear_error();
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

TEST(LibraryContext, OffersOnlyTheDecodersOfACertificatesSigningKey) {
  const auto kept = decoder_structures(tls_library_context());
  const auto all = decoder_structures(nullptr);
  EXPECT_GE(kept.size(), 8u);  // RSA, RSA-PSS, EC, Ed25519, Ed448, DSA, SM2, the generic one
  EXPECT_LT(kept.size(), all.size());
  for (const auto& structure : kept) EXPECT_EQ(structure.substr(0, 20), "SubjectPublicKeyInfo");
  // All of the default context's but DH, DHX, X25519 and X448.
  EXPECT_EQ(std::count(all.begin(), all.end(), "SubjectPublicKeyInfo") - 4,
            std::count(kept.begin(), kept.end(), "SubjectPublicKeyInfo"));
}

TEST(LibraryContext, ManagesEveryKindOfKeyLibsslMakesAndNotTheMacsItNeverDoes) {
  OSSL_LIB_CTX* context = tls_library_context();
  ASSERT_NE(context, nullptr);
  for (const char* kept : {"RSA", "RSA-PSS", "EC", "X25519", "X448", "ED25519", "ED448", "DH",
                           "DHX", "DSA", "SM2", "HMAC", "HKDF", "TLS1-PRF"}) {
    EVP_KEYMGMT* here = EVP_KEYMGMT_fetch(context, kept, nullptr);
    EXPECT_NE(here, nullptr) << kept;
    EVP_KEYMGMT_free(here);
  }
  for (const char* cut : {"CMAC", "POLY1305", "SIPHASH", "SCRYPT"}) {
    EVP_KEYMGMT* by_default = EVP_KEYMGMT_fetch(nullptr, cut, nullptr);
    EVP_KEYMGMT* here = EVP_KEYMGMT_fetch(context, cut, nullptr);
    EXPECT_NE(by_default, nullptr) << cut;
    EXPECT_EQ(here, nullptr) << cut;
    EVP_KEYMGMT_free(by_default);
    EVP_KEYMGMT_free(here);
  }
  ERR_clear_error();
}

// The TLS 1.2 and 1.3 suites a server context offers when asked for every one OpenSSL has.
std::vector<std::string> every_suite_in(OSSL_LIB_CTX* context) {
  OwnedContext ctx(SSL_CTX_new_ex(context, nullptr, TLS_server_method()));
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

TEST(LibraryContext, FetchesEveryCipherLibsslAsksForThatTheDefaultContextHas) {
  // The names of libssl 3.0's cipher table (ssl_ciph.c), its composite CBC-HMAC ciphers, the
  // NULL cipher and the ticket's AES-256-CBC: what a handshake may fetch from its context.
  for (const char* name : {"DES-CBC",
                           "DES-EDE3-CBC",
                           "RC4",
                           "RC2-CBC",
                           "IDEA-CBC",
                           "NULL",
                           "AES-128-CBC",
                           "AES-256-CBC",
                           "CAMELLIA-128-CBC",
                           "CAMELLIA-256-CBC",
                           "SEED-CBC",
                           "AES-128-GCM",
                           "AES-256-GCM",
                           "AES-128-CCM",
                           "AES-256-CCM",
                           "ChaCha20-Poly1305",
                           "ARIA-128-GCM",
                           "ARIA-256-GCM",
                           "AES-128-CBC-HMAC-SHA1",
                           "AES-256-CBC-HMAC-SHA1",
                           "AES-128-CBC-HMAC-SHA256",
                           "AES-256-CBC-HMAC-SHA256"}) {
    EVP_CIPHER* by_default = EVP_CIPHER_fetch(nullptr, name, nullptr);
    EVP_CIPHER* here = EVP_CIPHER_fetch(tls_library_context(), name, nullptr);
    EXPECT_EQ(by_default != nullptr, here != nullptr) << name;
    EVP_CIPHER_free(by_default);
    EVP_CIPHER_free(here);
  }
  ERR_clear_error();
}

// A server context in the TLS library context with an ECDSA P-256 certificate, its key made
// in OpenSSL's default context, as the proxy reads its keys.
OwnedContext server_in_library_context() {
  Owned<EVP_PKEY> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  const auto certificate = certificate_for(key.get(), key.get());
  OwnedContext server(SSL_CTX_new_ex(tls_library_context(), nullptr, TLS_server_method()));
  if (!server || SSL_CTX_use_certificate(server.get(), certificate.get()) != 1 ||
      SSL_CTX_use_PrivateKey(server.get(), key.get()) != 1) {
    return OwnedContext();
  }
  return server;
}

TEST(LibraryContext, AgreesOnEveryKeyExchangeGroup) {
  const auto server = server_in_library_context();
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(
      SSL_CTX_set1_groups_list(server.get(), "X25519:X448:P-256:P-384:P-521:ffdhe2048:ffdhe3072"),
      1);
  struct Group {
    const char* name;  // as a groups list names it
    int nid;           // as SSL_get_negotiated_group reports it
  };
  const Group groups[] = {{"X25519", NID_X25519},          {"X448", NID_X448},
                          {"P-256", NID_X9_62_prime256v1}, {"P-384", NID_secp384r1},
                          {"P-521", NID_secp521r1},        {"ffdhe2048", NID_ffdhe2048}};
  for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    for (const Group& group : groups) {
      if (version == TLS1_2_VERSION && group.nid == NID_ffdhe2048) continue;  // TLS 1.3 only
      SCOPED_TRACE(std::string(group.name) + (version == TLS1_3_VERSION ? " TLS 1.3" : " TLS 1.2"));
      OwnedContext client(SSL_CTX_new(TLS_client_method()));
      SSL_CTX_set_min_proto_version(client.get(), version);
      SSL_CTX_set_max_proto_version(client.get(), version);
      // TLS 1.2 uses an ECDSA certificate only for a client that lists its curve, P-256; the
      // group the client lists first is the one agreed.
      const bool add_p256 = version == TLS1_2_VERSION && group.nid != NID_X9_62_prime256v1;
      const std::string list = std::string(group.name) + (add_p256 ? ":P-256" : "");
      ASSERT_EQ(SSL_CTX_set1_groups_list(client.get(), list.c_str()), 1);
      MemoryConnection connection(server.get(), client.get());
      ASSERT_TRUE(connection.exchange()) << take_openssl_errors();
      EXPECT_EQ(SSL_version(connection.server()), version);
      EXPECT_EQ(SSL_get_negotiated_group(connection.server()), group.nid);
    }
  }
}

TEST(LibraryContext, CarriesDataUnderEveryKindOfSuiteAndResumes) {
  const auto server = server_in_library_context();
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(SSL_CTX_set_ciphersuites(server.get(),
                                     "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                     "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_CCM_SHA256:"
                                     "TLS_AES_128_CCM_8_SHA256"),
            1);
  struct Case {
    const char* suites;  // TLS 1.3 suite, or TLS 1.2 cipher list
    bool tls13;
    bool encrypt_then_mac;
  };
  const Case cases[] = {
      {"TLS_AES_128_GCM_SHA256", true, true},
      {"TLS_AES_256_GCM_SHA384", true, true},
      {"TLS_CHACHA20_POLY1305_SHA256", true, true},
      {"TLS_AES_128_CCM_SHA256", true, true},
      {"TLS_AES_128_CCM_8_SHA256", true, true},
      {"ECDHE-ECDSA-AES256-GCM-SHA384", false, true},
      {"ECDHE-ECDSA-CHACHA20-POLY1305", false, true},
      {"ECDHE-ECDSA-AES128-CCM8", false, true},
      {"ECDHE-ECDSA-ARIA128-GCM-SHA256", false, true},
      {"ECDHE-ECDSA-CAMELLIA256-SHA384", false, true},
      {"ECDHE-ECDSA-AES128-SHA", false, true},
      {"ECDHE-ECDSA-AES128-SHA", false, false},  // the composite CBC-HMAC cipher
      {"ECDHE-ECDSA-AES256-SHA384", false, false},
      {"ECDHE-ECDSA-NULL-SHA", false, true},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.suites);
    OwnedContext client(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_set_security_level(client.get(), 0);
    SSL_CTX_set_security_level(server.get(), 0);
    if (c.tls13) {
      SSL_CTX_set_min_proto_version(client.get(), TLS1_3_VERSION);
      ASSERT_EQ(SSL_CTX_set_ciphersuites(client.get(), c.suites), 1);
    } else {
      SSL_CTX_set_max_proto_version(client.get(), TLS1_2_VERSION);
      ASSERT_EQ(SSL_CTX_set_cipher_list(client.get(), c.suites), 1);
      ASSERT_EQ(SSL_CTX_set_cipher_list(server.get(), "ALL:COMPLEMENTOFALL"), 1);
    }
    if (!c.encrypt_then_mac) SSL_CTX_set_options(client.get(), SSL_OP_NO_ENCRYPT_THEN_MAC);
    SSL_SESSION* session = nullptr;
    {
      MemoryConnection first(server.get(), client.get());
      ASSERT_TRUE(first.exchange()) << take_openssl_errors();
      EXPECT_STREQ(SSL_CIPHER_get_name(SSL_get_current_cipher(first.server())), c.suites);
      session = SSL_get1_session(first.client());
      EXPECT_EQ(SSL_SESSION_is_resumable(session), 1);
    }
    MemoryConnection again(server.get(), client.get(), session);
    EXPECT_TRUE(again.exchange()) << take_openssl_errors();
    EXPECT_EQ(SSL_session_reused(again.client()), 1);
    SSL_SESSION_free(session);
  }
}

// PEM files for one test, removed after it.
class ServerContextFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    certificate_ = certificate_for(key_.get(), key_.get(), true);  // serves as a CA too
    config_.hostname = "mx.example.org";
  }
  const test::PemDirectory files_{"library-context-test"};
  Owned<EVP_PKEY> key_;
  Owned<X509> certificate_;
  ServerOptions config_;
};

TEST_F(ServerContextFiles, LoadsAKeyKeptInTheCertificatesFile) {
  config_.certificates = {files_.write("both.pem", certificate_.get(), key_.get())};
  const auto context = ServerContext::create(config_);
  ASSERT_EQ(context->certificates().size(), 1u);
  EXPECT_EQ(context->certificates()[0].label, "test ECDSA");
}

TEST_F(ServerContextFiles, RefusesAKeyThatDoesNotMatchTheCertificate) {
  Owned<EVP_PKEY> other(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  config_.certificates = {files_.write("cert.pem", certificate_.get(), nullptr)};
  config_.privatekeys = {files_.write("other.key", nullptr, other.get())};
  try {
    ServerContext::create(config_);
    ADD_FAILURE() << "no ConfigError";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find("--tls-privatekey: the key in " + config_.privatekeys[0] +
                        " cannot be used with the certificate in "),
              0u)
        << what;
    EXPECT_NE(what.find("key values mismatch"), std::string::npos) << what;  // OpenSSL's why
  }
}

TEST_F(ServerContextFiles, RefusesAFileWithoutAKey) {
  config_.certificates = {files_.write("cert.pem", certificate_.get(), nullptr)};
  try {
    ServerContext::create(config_);
    ADD_FAILURE() << "no ConfigError";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--tls-certificate: cannot load private key"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(ServerContextFiles, VerifiesAgainstACaFileThatAlsoHoldsAPrivateKey) {
  // The file is read whole, key included, as it always was: in OpenSSL's default context. A
  // certificate the CA signed, read as libssl reads a client's, verifies against it there.
  config_.certificates = {files_.write("both.pem", certificate_.get(), key_.get())};
  config_.verify_certificates = files_.write("ca-and-key.pem", certificate_.get(), key_.get());
  const auto context = ServerContext::create(config_);
  Owned<EVP_PKEY> client_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  const auto signed_by_ca = [&](EVP_PKEY* signer) {
    auto leaf = certificate_for(client_key.get(), signer);
    X509_NAME* subject = X509_get_subject_name(leaf.get());
    X509_NAME_ENTRY_free(X509_NAME_delete_entry(subject, 0));
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("client"), -1, -1, 0);
    X509_set_issuer_name(leaf.get(), X509_get_subject_name(certificate_.get()));
    X509_sign(leaf.get(), signer, EVP_sha256());
    return parse_in(tls_library_context(), der_of(leaf.get()));
  };
  const auto verifies = [&](X509* leaf) -> std::string {
    X509_STORE_CTX* verification = X509_STORE_CTX_new_ex(tls_library_context(), nullptr);
    X509_STORE_CTX_init(verification, SSL_CTX_get_cert_store(context->native_handle()), leaf,
                        nullptr);
    const int ok = X509_verify_cert(verification);
    const std::string error = X509_verify_cert_error_string(X509_STORE_CTX_get_error(verification));
    X509_STORE_CTX_free(verification);
    return ok == 1 ? std::string("verified") : error;
  };
  EXPECT_EQ(verifies(signed_by_ca(key_.get()).get()), "verified");
  EXPECT_EQ(verifies(signed_by_ca(client_key.get()).get()),  // the CA's name, not its key
            "certificate signature failure");
}

}  // namespace
}  // namespace stp::tls
