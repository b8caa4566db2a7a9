// Which certificate answers a handshake (tls/certificate_sets.cpp, through a real server
// context and an in-memory handshake): the host set the session chose, before any SNI; then
// the SNI set of that exact name, a wildcard set, a set whose certificate's DNS names cover
// the name (the default set's own first); else the default set. And a session resumes only
// under the set and the client-certificate request that made it.
#include "tls/certificate_sets.hpp"
#include "tls/session_facts.hpp"
#include "tls/tls_context.hpp"

#include "test_certificates.hpp"

#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <optional>
#include <string>

namespace stp::tls {
namespace {

using test::MemoryConnection;
using test::Owned;

class CertificateSelection : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.hostname = "proxy.test";
    options.certificates = {
        file("default", "mx.example.org", "DNS:mx.example.org,DNS:alias.example.org")};
    options.sni_certificates = {
        {"mail.example.net", file("exact", "mail.example.net", "DNS:mail.example.net"), ""},
        {"*.example.com", file("wildcard", "wild.example.com", "DNS:*.example.com"), ""},
        {"other.example.org",
         file("covering", "covering.example.org",
              "DNS:covering.example.org,DNS:more.example.org,DNS:alias.example.org"),
         ""},
    };
    options.host_certificates = {
        {"192.0.2.0/24", file("partner", "partner.example.net", "DNS:partner.example.net"), ""}};
    server_ = ServerContext::create(options);
    client_.reset(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_set_verify(client_.get(), SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_session_cache_mode(client_.get(), SSL_SESS_CACHE_CLIENT);
  }

  std::string file(const std::string& name, const std::string& cn, const std::string& sans) {
    Owned<EVP_PKEY> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    auto certificate = test::make_certificate(cn, key.get(), nullptr, nullptr, 86400, false, sans);
    return pem_.write(name + ".pem", certificate.get(), key.get());
  }

  struct Outcome {
    std::string cn;
    bool resumed = false;
    Owned<SSL_SESSION> session;
  };
  // One handshake with `sni` (none when empty), the server told to use host set `host_set`.
  Outcome handshake(const std::string& sni, std::optional<std::size_t> host_set = std::nullopt,
                    SSL_SESSION* resume = nullptr,
                    ClientCertificateRequest request = ClientCertificateRequest::none) {
    MemoryConnection connection(server_->native_handle(), client_.get(), resume);
    if (!sni.empty()) SSL_set_tlsext_host_name(connection.client(), sni.c_str());
    if (host_set) answer_with_host_set(connection.server(), *host_set);
    request_client_certificate(connection.server(), request);
    Outcome out;
    if (!connection.exchange()) return out;
    char cn[256] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(SSL_get0_peer_certificate(connection.client())),
                              NID_commonName, cn, sizeof cn);
    out.cn = cn;
    out.resumed = SSL_session_reused(connection.client()) == 1;
    out.session.reset(SSL_get1_session(connection.client()));
    return out;
  }

  test::PemDirectory pem_{"certificate-selection"};
  std::shared_ptr<const ServerContext> server_;
  Owned<SSL_CTX> client_;
};

TEST_F(CertificateSelection, NamesPickTheirSetAndEverythingElseTheDefault) {
  EXPECT_EQ(handshake("mail.example.net").cn, "mail.example.net");      // exact
  EXPECT_EQ(handshake("MAIL.Example.NET").cn, "mail.example.net");      // any case
  EXPECT_EQ(handshake("a.example.com").cn, "wild.example.com");         // wildcard
  EXPECT_EQ(handshake("b.a.example.com").cn, "mx.example.org");         // one label only
  EXPECT_EQ(handshake("more.example.org").cn, "covering.example.org");  // a set's DNS name
  EXPECT_EQ(handshake("alias.example.org").cn, "mx.example.org");       // the default's first
  EXPECT_EQ(handshake("unknown.example").cn, "mx.example.org");
  EXPECT_EQ(handshake("").cn, "mx.example.org");  // no SNI
}

TEST_F(CertificateSelection, TheHostSetComesBeforeAnyName) {
  EXPECT_EQ(handshake("mail.example.net", 0).cn, "partner.example.net");
  EXPECT_EQ(handshake("", 0).cn, "partner.example.net");
  EXPECT_EQ(handshake("mail.example.net", 7).cn, "mail.example.net");  // no such set: as if none
}

TEST_F(CertificateSelection, ASessionResumesOnlyUnderItsSetAndRequest) {
  auto exact = handshake("mail.example.net");
  ASSERT_EQ(exact.cn, "mail.example.net");
  ASSERT_TRUE(exact.session);
  EXPECT_TRUE(handshake("mail.example.net", std::nullopt, exact.session.get()).resumed);
  EXPECT_FALSE(handshake("a.example.com", std::nullopt, exact.session.get()).resumed);
  EXPECT_FALSE(handshake("mail.example.net", 0, exact.session.get()).resumed);  // the host set
  EXPECT_FALSE(handshake("mail.example.net", std::nullopt, exact.session.get(),
                         ClientCertificateRequest::try_verify)
                   .resumed);  // another client-certificate request
  auto partner = handshake("", 0);
  EXPECT_TRUE(handshake("", 0, partner.session.get()).resumed);
  EXPECT_FALSE(handshake("", std::nullopt, partner.session.get()).resumed);  // the default set
}

}  // namespace
}  // namespace stp::tls
