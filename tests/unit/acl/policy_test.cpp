// Encryption policy (acl::check_command): the whole matrix of --tls-require-ports,
// --tls-require-hosts and --tls-require-verified-hosts against the TLS state, the certificate
// state and every verb, with the reasons and the rule names that go to the log.
#include "acl/policy.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stp::acl {
namespace {

using smtp::Verb;

constexpr auto kMustStartTls = Refusal::Reason::must_start_tls;
constexpr auto kNeedsCertificate = Refusal::Reason::needs_verified_certificate;

// Every verb the parser knows, with its name for the test output.
const std::vector<std::pair<Verb, const char*>> kAllVerbs = {
    {Verb::other, "other"},       {Verb::helo, "HELO"},       {Verb::ehlo, "EHLO"},
    {Verb::mail, "MAIL"},         {Verb::rcpt, "RCPT"},       {Verb::data, "DATA"},
    {Verb::bdat, "BDAT"},         {Verb::rset, "RSET"},       {Verb::noop, "NOOP"},
    {Verb::quit, "QUIT"},         {Verb::vrfy, "VRFY"},       {Verb::expn, "EXPN"},
    {Verb::etrn, "ETRN"},         {Verb::help, "HELP"},       {Verb::auth, "AUTH"},
    {Verb::starttls, "STARTTLS"}, {Verb::xclient, "XCLIENT"}, {Verb::xforward, "XFORWARD"},
};

// The commands issue 3 keeps away from a cleartext session when TLS is required.
bool needs_tls(Verb verb) {
  switch (verb) {
    case Verb::mail:
    case Verb::rcpt:
    case Verb::data:
    case Verb::bdat:
    case Verb::auth:
    case Verb::vrfy:
    case Verb::expn:
    case Verb::etrn:
      return true;
    default:
      return false;
  }
}

std::string describe(const PolicyFacts& f, const char* verb) {
  return std::string(verb) + " port_requires_tls=" + std::to_string(f.port_requires_tls) +
         " host_requires_tls=" + std::to_string(f.host_requires_tls) +
         " host_requires_verified=" + std::to_string(f.host_requires_verified) +
         " tls_active=" + std::to_string(f.tls_active) +
         " certificate_verified=" + std::to_string(f.certificate_verified);
}

TEST(Policy, FullMatrix) {
  int refusals_530 = 0;
  int refusals_550 = 0;
  int cases = 0;
  for (int bits = 0; bits < 32; ++bits) {
    const PolicyFacts facts{
        .port_requires_tls = (bits & 1) != 0,
        .host_requires_tls = (bits & 2) != 0,
        .host_requires_verified = (bits & 4) != 0,
        .tls_active = (bits & 8) != 0,
        .certificate_verified = (bits & 16) != 0,
    };
    for (const auto& [verb, verb_name] : kAllVerbs) {
      SCOPED_TRACE(describe(facts, verb_name));
      ++cases;
      const auto refusal = check_command(facts, verb);
      const bool tls_required = facts.port_requires_tls || facts.host_requires_tls;
      if (!facts.tls_active && tls_required && needs_tls(verb)) {
        ASSERT_TRUE(refusal.has_value());
        EXPECT_EQ(refusal->reason, kMustStartTls);
        // The port's rule is named first when both apply.
        EXPECT_EQ(refusal->rule,
                  facts.port_requires_tls ? "--tls-require-ports" : "--tls-require-hosts");
        ++refusals_530;
      } else if (verb == Verb::mail && facts.host_requires_verified &&
                 !facts.certificate_verified) {
        ASSERT_TRUE(refusal.has_value());
        EXPECT_EQ(refusal->reason, kNeedsCertificate);
        EXPECT_EQ(refusal->rule, "--tls-require-verified-hosts");
        ++refusals_550;
      } else {
        EXPECT_FALSE(refusal.has_value()) << refusal->rule;
      }
    }
  }
  EXPECT_EQ(cases, 32 * 18);
  // 530: 3 of the 4 (port, host) combinations x 2 (verified-hosts) x 2 (verified), without TLS,
  // x 8 verbs = 96. 550: MAIL with verified-hosts and no verified certificate and not already
  // refused by 530: with TLS 4 (port, host) combinations, without TLS only (no, no) = 5.
  EXPECT_EQ(refusals_530, 3 * 2 * 2 * 8);
  EXPECT_EQ(refusals_550, 5);
}

TEST(Policy, NothingRequiredAllowsEverything) {
  for (const bool tls : {false, true}) {
    for (const auto& [verb, name] : kAllVerbs) {
      EXPECT_FALSE(check_command({.tls_active = tls}, verb).has_value()) << name;
    }
  }
}

TEST(Policy, PortRequiresTlsBeforeStartTls) {
  const PolicyFacts facts{.port_requires_tls = true};
  for (const Verb verb : {Verb::mail, Verb::rcpt, Verb::data, Verb::bdat, Verb::auth, Verb::vrfy,
                          Verb::expn, Verb::etrn}) {
    const auto refusal = check_command(facts, verb);
    ASSERT_TRUE(refusal.has_value()) << static_cast<int>(verb);
    EXPECT_EQ(refusal->reason, kMustStartTls);
    EXPECT_EQ(refusal->rule, "--tls-require-ports");
  }
  for (const Verb verb :
       {Verb::ehlo, Verb::helo, Verb::noop, Verb::rset, Verb::quit, Verb::starttls, Verb::help}) {
    EXPECT_FALSE(check_command(facts, verb).has_value()) << static_cast<int>(verb);
  }
}

TEST(Policy, HostRequiresTlsBeforeStartTls) {
  const auto refusal = check_command({.host_requires_tls = true}, Verb::rcpt);
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->reason, kMustStartTls);
  EXPECT_EQ(refusal->rule, "--tls-require-hosts");
  EXPECT_FALSE(check_command({.host_requires_tls = true}, Verb::starttls).has_value());
}

TEST(Policy, TlsRequirementIsMetOnceTlsIsActive) {
  const PolicyFacts facts{.port_requires_tls = true, .host_requires_tls = true, .tls_active = true};
  for (const auto& [verb, name] : kAllVerbs) {
    EXPECT_FALSE(check_command(facts, verb).has_value()) << name;
  }
}

TEST(Policy, VerifiedHostsNeedAVerifiedCertificateForMailOnly) {
  // With TLS but no verified certificate (try-verify host with a bad or absent certificate).
  const PolicyFacts unverified{.host_requires_verified = true, .tls_active = true};
  const auto refusal = check_command(unverified, Verb::mail);
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->reason, kNeedsCertificate);
  EXPECT_EQ(refusal->rule, "--tls-require-verified-hosts");
  for (const Verb verb :
       {Verb::rcpt, Verb::data, Verb::bdat, Verb::auth, Verb::vrfy, Verb::ehlo, Verb::quit}) {
    EXPECT_FALSE(check_command(unverified, verb).has_value()) << static_cast<int>(verb);
  }
  // With a verified certificate MAIL goes on.
  const PolicyFacts verified{
      .host_requires_verified = true, .tls_active = true, .certificate_verified = true};
  EXPECT_FALSE(check_command(verified, Verb::mail).has_value());
}

TEST(Policy, StartTlsRuleComesBeforeTheCertificateRule) {
  const PolicyFacts facts{.port_requires_tls = true, .host_requires_verified = true};
  const auto refusal = check_command(facts, Verb::mail);
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->reason, kMustStartTls);
  EXPECT_EQ(refusal->rule, "--tls-require-ports");
}

}  // namespace
}  // namespace stp::acl
