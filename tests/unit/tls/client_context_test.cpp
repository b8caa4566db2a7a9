// tls::ClientContext set-up: every setting that cannot be applied names its --relay-tls-* flag,
// as the server side names its --tls-* one; and which names go out as SNI. What a
// connection does with the context is in tls_stream_connect_test.cpp.
#include "tls/client_context.hpp"

#include "test_certificates.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <string>

namespace stp::tls {
namespace {

using test::Owned;

class ClientContextFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    certificate_ = test::make_certificate("relay-client.example", key_.get());
    options_.verify_certificates = files_.write("ca.pem", certificate_.get(), nullptr);
  }
  // The message of the std::invalid_argument create() throws, or "" when it does not.
  std::string error() {
    try {
      ClientContext::create(options_);
      return "";
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
  }

  const test::PemDirectory files_{"client-context-test"};
  Owned<EVP_PKEY> key_;
  Owned<X509> certificate_;
  ClientOptions options_;
};

TEST_F(ClientContextFiles, TakesEveryKindOfCaSource) {
  EXPECT_EQ(error(), "");
  options_.verify_certificates = "system";
  EXPECT_EQ(error(), "");
  options_.verify_certificates = files_.path().string();  // a hashed directory
  EXPECT_EQ(error(), "");
  options_.verify_certificates = "";  // none: every verification fails
  EXPECT_EQ(error(), "");
}

TEST_F(ClientContextFiles, NamesTheFlagOfWhatCannotBeUsed) {
  const auto starts_with = [](const std::string& text, const std::string& prefix) {
    return text.rfind(prefix, 0) == 0;
  };
  const ClientOptions good = options_;

  options_.verify_certificates = (files_.path() / "missing.pem").string();
  EXPECT_TRUE(starts_with(error(), "--relay-tls-verify-certificates: cannot read ")) << error();
  options_.verify_certificates = files_.write("key-only.pem", nullptr, key_.get());
  EXPECT_TRUE(starts_with(error(), "--relay-tls-verify-certificates: no CA certificate in "))
      << error();

  options_ = good;
  options_.require_ciphers = "NO-SUCH-CIPHER";
  EXPECT_TRUE(starts_with(error(), "--relay-tls-require-ciphers: no usable cipher")) << error();
  options_ = good;
  options_.ciphersuites = "TLS_NO_SUCH_SUITE";
  EXPECT_TRUE(starts_with(error(), "--relay-tls-ciphersuites: no usable TLS 1.3 suite")) << error();
  options_ = good;
  options_.min_protocol = "TLSv1.1";
  EXPECT_EQ(error(), "--relay-tls-min-protocol: must be TLSv1.2 or TLSv1.3, not \"TLSv1.1\"");

  options_ = good;
  options_.certificate = (files_.path() / "missing.pem").string();
  EXPECT_TRUE(starts_with(error(), "--relay-tls-certificate: cannot load certificate chain"))
      << error();
  options_.certificate = files_.write("cert-only.pem", certificate_.get(), nullptr);
  EXPECT_TRUE(starts_with(error(), "--relay-tls-certificate: cannot load private key")) << error();
  const Owned<EVP_PKEY> other(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  options_.privatekey = files_.write("other.key", nullptr, other.get());
  EXPECT_TRUE(starts_with(error(), "--relay-tls-privatekey: the key in " + options_.privatekey))
      << error();
  options_.certificate.clear();
  EXPECT_EQ(error(), "--relay-tls-privatekey: given without --relay-tls-certificate");

  options_ = good;
  options_.crl = (files_.path() / "missing.crl").string();
  EXPECT_TRUE(starts_with(error(), "--relay-tls-crl: cannot read ")) << error();
  options_.crl = options_.verify_certificates;  // a certificate, no CRL
  EXPECT_TRUE(starts_with(error(), "--relay-tls-crl: no CRL in ")) << error();
}

TEST_F(ClientContextFiles, LoadsAClientCertificateWithItsKeyInOneFileOrTwo) {
  options_.certificate = files_.write("both.pem", certificate_.get(), key_.get());
  auto context = ClientContext::create(options_);
  EXPECT_TRUE(context->has_certificate());
  options_.certificate = files_.write("cert.pem", certificate_.get(), nullptr);
  options_.privatekey = files_.write("cert.key", nullptr, key_.get());
  context = ClientContext::create(options_);
  EXPECT_TRUE(context->has_certificate());
  EXPECT_FALSE(ClientContext::create(ClientOptions{})->has_certificate());
}

TEST(SniMayBeSent, HostNamesOnly) {
  EXPECT_TRUE(sni_may_be_sent("smtp.example.net"));
  EXPECT_TRUE(sni_may_be_sent("localhost"));
  EXPECT_TRUE(sni_may_be_sent("mx1.example"));
  EXPECT_FALSE(sni_may_be_sent(""));
  EXPECT_FALSE(sni_may_be_sent("192.0.2.1"));  // RFC 6066: no address literals
  EXPECT_FALSE(sni_may_be_sent("10.1"));
  EXPECT_FALSE(sni_may_be_sent("2001:db8::1"));
  EXPECT_FALSE(sni_may_be_sent("[2001:db8::1]"));
  EXPECT_FALSE(sni_may_be_sent("smtp.example.net."));
  EXPECT_FALSE(sni_may_be_sent("bad name.example"));
}

}  // namespace
}  // namespace stp::tls
