// Unit tests for the SMTP AUTH client codecs: RFC 4616's PLAIN example, LOGIN's lines, base64
// at every padding length, and the mechanism chosen from an EHLO reply's AUTH line.
#include "smtp/sasl_client.hpp"

#include <gtest/gtest.h>

namespace stp::smtp {
namespace {

TEST(SaslClient, PlainAsRfc4616Shows) {
  EXPECT_EQ(auth_plain_command("tim", "tanstaaftanstaaf"),
            "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
}

TEST(SaslClient, LoginSendsEachValueAsABase64Line) {
  EXPECT_EQ(kAuthLoginCommand, "AUTH LOGIN\r\n");
  EXPECT_EQ(sasl_response_line("relay-user"), "cmVsYXktdXNlcg==\r\n");
}

TEST(SaslClient, Base64PadsEveryLength) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  EXPECT_EQ(base64_encode(std::string_view("\0\xff", 2)), "AP8=");
}

TEST(SaslClient, ChoosesPlainThenLoginFromTheEhloReply) {
  const auto both = parse_ehlo_capabilities("250-relay\r\n250-AUTH LOGIN PLAIN\r\n250 OK\r\n");
  EXPECT_TRUE(both.auth);
  EXPECT_EQ(choose_sasl_mechanism(both), SaslMechanism::plain);
  const auto old_form = parse_ehlo_capabilities("250-relay\r\n250 AUTH=LOGIN\r\n");
  EXPECT_EQ(choose_sasl_mechanism(old_form), SaslMechanism::login);
  const auto other = parse_ehlo_capabilities("250-relay\r\n250 AUTH CRAM-MD5 XOAUTH2\r\n");
  EXPECT_TRUE(other.auth);
  EXPECT_EQ(choose_sasl_mechanism(other), std::nullopt);
  const auto none = parse_ehlo_capabilities("250-relay\r\n250 AUTHX PLAIN\r\n");
  EXPECT_FALSE(none.auth);
  EXPECT_EQ(choose_sasl_mechanism(none), std::nullopt);
}

}  // namespace
}  // namespace stp::smtp
