// tls::verify_reason_label (the short metric label of each X509_V_ERR_* code), and the checks
// on what a client names itself: its SNI (is_host_name) and its certificate's CN.
#include "tls/session_facts.hpp"

#include <gtest/gtest.h>
#include <openssl/x509_vfy.h>

#include <memory>
#include <string>

namespace stp::tls {
namespace {

TEST(VerifyReasonLabel, MappedCodes) {
  const std::pair<long, const char*> cases[] = {
      {X509_V_OK, "ok"},
      {X509_V_ERR_CERT_HAS_EXPIRED, "expired"},
      {X509_V_ERR_CERT_NOT_YET_VALID, "not_yet_valid"},
      {X509_V_ERR_CERT_REVOKED, "revoked"},
      {X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, "unknown_ca"},
      {X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, "unknown_ca"},
      {X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, "unknown_ca"},
      {X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, "unknown_ca"},
      {X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, "unknown_ca"},
      {X509_V_ERR_CERT_CHAIN_TOO_LONG, "depth"},
      {X509_V_ERR_CRL_HAS_EXPIRED, "crl_expired"},
      {X509_V_ERR_UNABLE_TO_GET_CRL, "crl_missing"},
      {X509_V_ERR_CERT_SIGNATURE_FAILURE, "untrusted"},
      {X509_V_ERR_CERT_UNTRUSTED, "untrusted"},
      {X509_V_ERR_CERT_REJECTED, "untrusted"},
      {X509_V_ERR_INVALID_PURPOSE, "purpose"},
      {X509_V_ERR_HOSTNAME_MISMATCH, "hostname"},  // the connect role's name check
      {X509_V_ERR_IP_ADDRESS_MISMATCH, "hostname"},
  };
  for (const auto& [code, label] : cases) {
    EXPECT_EQ(verify_reason_label(code), label)
        << code << " (" << X509_verify_cert_error_string(code) << ")";
  }
}

TEST(VerifyReasonLabel, NumericValuesOfTheMainCodes) {
  // The labels hang on OpenSSL's stable numbering (x509_vfy.h); spot-check it by value.
  EXPECT_EQ(verify_reason_label(10), "expired");
  EXPECT_EQ(verify_reason_label(9), "not_yet_valid");
  EXPECT_EQ(verify_reason_label(23), "revoked");
  EXPECT_EQ(verify_reason_label(20), "unknown_ca");
  EXPECT_EQ(verify_reason_label(22), "depth");
}

TEST(VerifyReasonLabel, EverythingElseIsOther) {
  for (const long code :
       {static_cast<long>(X509_V_ERR_UNSPECIFIED), static_cast<long>(X509_V_ERR_EMAIL_MISMATCH),
        static_cast<long>(X509_V_ERR_CRL_NOT_YET_VALID),
        static_cast<long>(X509_V_ERR_PATH_LENGTH_EXCEEDED),
        static_cast<long>(X509_V_ERR_OUT_OF_MEM), -1L, 100000L}) {
    EXPECT_EQ(verify_reason_label(code), "other") << code;
  }
}

TEST(IsHostName, LettersDigitsHyphensAndDots) {
  EXPECT_TRUE(is_host_name("mx.example.test"));
  EXPECT_TRUE(is_host_name("xn--bcher-kva.example"));
  EXPECT_TRUE(is_host_name("localhost"));
  EXPECT_TRUE(is_host_name(std::string(63, 'a') + ".example"));
  EXPECT_FALSE(is_host_name(""));
  EXPECT_FALSE(is_host_name("mx.test CV=yes DN=\"CN=bank.example\""));
  EXPECT_FALSE(is_host_name("mx.test\"x"));
  EXPECT_FALSE(is_host_name("mx..test"));
  EXPECT_FALSE(is_host_name(".mx.test"));
  EXPECT_FALSE(is_host_name("mx.test."));
  EXPECT_FALSE(is_host_name("under_score.test"));
  EXPECT_FALSE(
      is_host_name("b\xc3\xbc"
                   "cher.example"));
  EXPECT_FALSE(is_host_name(std::string(64, 'a') + ".example"));
  std::string long_name;
  while (long_name.size() < 256) long_name += "abcdefgh.";
  long_name.resize(256);
  EXPECT_FALSE(is_host_name(long_name));
  EXPECT_TRUE(is_host_name(long_name.substr(0, 255 - (long_name[254] == '.'))));
}

struct NameFree {
  void operator()(X509_NAME* name) const { X509_NAME_free(name); }
};

std::unique_ptr<X509_NAME, NameFree> name_with_cns(std::initializer_list<std::string> cns) {
  std::unique_ptr<X509_NAME, NameFree> name(X509_NAME_new());
  X509_NAME_add_entry_by_txt(name.get(), "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("Org"), -1, -1, 0);
  for (const auto& cn : cns) {
    X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.data()),
                               static_cast<int>(cn.size()), -1, 0);
  }
  return name;
}

TEST(CommonNameOf, OneCnWithoutNulOrNothing) {
  EXPECT_EQ(common_name_of(name_with_cns({"client.example"}).get()), "client.example");
  EXPECT_EQ(common_name_of(name_with_cns({}).get()), "");
  // "good.example\0.evil": a C string would report good.example.
  EXPECT_EQ(common_name_of(name_with_cns({std::string("good.example\0.evil", 17)}).get()),
            std::nullopt);
  EXPECT_EQ(common_name_of(name_with_cns({"a.example", "b.example"}).get()), std::nullopt);
}

}  // namespace
}  // namespace stp::tls
