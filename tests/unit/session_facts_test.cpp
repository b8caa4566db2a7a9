// tls::verify_reason_label: the short metric label of each X509_V_ERR_* code.
#include "tls/session_facts.hpp"

#include <gtest/gtest.h>
#include <openssl/x509_vfy.h>

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
       {static_cast<long>(X509_V_ERR_UNSPECIFIED), static_cast<long>(X509_V_ERR_HOSTNAME_MISMATCH),
        static_cast<long>(X509_V_ERR_CRL_NOT_YET_VALID),
        static_cast<long>(X509_V_ERR_PATH_LENGTH_EXCEEDED),
        static_cast<long>(X509_V_ERR_OUT_OF_MEM), -1L, 100000L}) {
    EXPECT_EQ(verify_reason_label(code), "other") << code;
  }
}

}  // namespace
}  // namespace stp::tls
