// The order MX hosts are tried in: by preference, ties in random order (every order of a tie
// turns up), at most the limit.
#include "outbound/mx_route.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <set>

namespace stp::outbound {
namespace {

TEST(MxRoute, HostsGoByPreferenceWithTiesShuffled) {
  const std::vector<dns::MxRecord> records = {
      {20, "b1"}, {10, "a"}, {20, "b2"}, {30, "c"}, {20, "b3"}};
  std::mt19937 random(42);
  std::set<std::string> firsts_of_the_tie;
  for (int i = 0; i < 200; ++i) {
    const auto ordered = order_mx(records, random, 10);
    ASSERT_EQ(ordered.size(), 5u);
    EXPECT_EQ(ordered[0].exchange, "a");
    EXPECT_EQ(ordered[4].exchange, "c");
    for (std::size_t j = 1; j < 4; ++j) EXPECT_EQ(ordered[j].preference, 20);
    firsts_of_the_tie.insert(ordered[1].exchange);
  }
  EXPECT_EQ(firsts_of_the_tie, (std::set<std::string>{"b1", "b2", "b3"}));
}

TEST(MxRoute, AtMostTheLimitAreTried) {
  std::vector<dns::MxRecord> records;
  for (int i = 0; i < 50; ++i) records.push_back({static_cast<std::uint16_t>(50 - i), "mx"});
  std::mt19937 random(1);
  const auto ordered = order_mx(records, random, 10);
  ASSERT_EQ(ordered.size(), 10u);
  EXPECT_EQ(ordered.front().preference, 1);
  EXPECT_EQ(ordered.back().preference, 10);
}

}  // namespace
}  // namespace stp::outbound

namespace stp::outbound {
namespace {

MxRoute route_of(std::initializer_list<std::string> hosts) {
  MxRoute route;
  for (const auto& host : hosts) {
    RelayTarget target;
    target.host = {host, 25};
    target.policy_domain = "example.com";
    route.targets.push_back(std::move(target));
  }
  return route;
}

StsPolicy sts_policy(StsMode mode) {
  auto policy =
      parse_sts_policy("version: STSv1\nmode: " + std::string(to_string(mode)) +
                       "\nmx: mx1.example.com\nmx: *.backup.example.com\nmax_age: 86400\n");
  return *policy;
}

TEST(MtaStsRoute, EnforceKeepsOnlyTheNamedHostsAndRequiresTlsOfThem) {
  auto route = route_of({"mx1.example.com", "evil.example.net", "b.backup.example.com"});
  const auto left_out = apply_sts(route, sts_policy(StsMode::enforce));
  EXPECT_EQ(left_out, (std::vector<std::string>{"evil.example.net"}));
  ASSERT_EQ(route.targets.size(), 2u);
  for (const auto& target : route.targets) {
    EXPECT_EQ(target.policy, TlsPolicy::sts_enforce);
    EXPECT_TRUE(target.tls_required);
    ASSERT_TRUE(target.policy_strings);
    EXPECT_EQ(target.policy_strings->size(), 5u);
  }
  EXPECT_EQ(route.code, 0);
}

TEST(MtaStsRoute, EnforceWithNoHostNamedIsATemporaryFailure) {
  auto route = route_of({"other.example.net"});
  apply_sts(route, sts_policy(StsMode::enforce));
  EXPECT_TRUE(route.targets.empty());
  EXPECT_EQ(route.code, 451);
  EXPECT_EQ(route.enhanced_code, "4.7.5");
}

TEST(MtaStsRoute, TestingTriesEveryHostAndRequiresNothing) {
  auto route = route_of({"mx1.example.com", "other.example.net"});
  EXPECT_TRUE(apply_sts(route, sts_policy(StsMode::testing)).empty());
  ASSERT_EQ(route.targets.size(), 2u);
  for (const auto& target : route.targets) {
    EXPECT_EQ(target.policy, TlsPolicy::sts_testing);
    EXPECT_FALSE(target.tls_required);
  }
}

TEST(MtaStsRoute, NoneChangesNothing) {
  auto route = route_of({"other.example.net"});
  apply_sts(route, sts_policy(StsMode::none));
  ASSERT_EQ(route.targets.size(), 1u);
  EXPECT_EQ(route.targets[0].policy, TlsPolicy::opportunistic);
}

TEST(MtaStsRoute, TlsaRecordsThatAuthenticateNothingLeaveTheHostToThePolicy) {
  // Secure TLSA records none of which is usable (PKIX-EE "1 1 1", say): TLS required, no
  // DANE match to make, so an enforced policy's names and PKIX verification apply.
  auto route = route_of({"mx1.example.com", "evil.example.net"});
  for (auto& target : route.targets) {
    target.policy = TlsPolicy::dane;
    target.tls_required = true;
  }
  const auto left_out = apply_sts(route, sts_policy(StsMode::enforce));
  EXPECT_EQ(left_out, (std::vector<std::string>{"evil.example.net"}));
  ASSERT_EQ(route.targets.size(), 1u);
  EXPECT_EQ(route.targets[0].policy, TlsPolicy::sts_enforce);
  EXPECT_TRUE(route.targets[0].tls_required);
  // Testing mode records; the TLS DANE asked for stays required.
  auto tested = route_of({"other.example.net"});
  tested.targets[0].policy = TlsPolicy::dane;
  tested.targets[0].tls_required = true;
  apply_sts(tested, sts_policy(StsMode::testing));
  EXPECT_EQ(tested.targets[0].policy, TlsPolicy::sts_testing);
  EXPECT_TRUE(tested.targets[0].tls_required);
}

TEST(Tlsa, UsableRecordsAreDaneOnesOpenSslCanMatch) {
  EXPECT_TRUE(usable_tlsa({3, 1, 1, std::string(32, 'x')}));
  EXPECT_TRUE(usable_tlsa({2, 0, 2, std::string(64, 'x')}));
  EXPECT_FALSE(usable_tlsa({1, 1, 1, std::string(32, 'x')}));  // PKIX-EE
  EXPECT_FALSE(usable_tlsa({3, 1, 1, std::string(31, 'x')}));
  EXPECT_FALSE(usable_tlsa({3, 2, 1, std::string(32, 'x')}));
  // Full data: only what reads as a public key (selector 1) or a certificate (selector 0).
  EXPECT_FALSE(usable_tlsa({3, 1, 0, "not a public key"}));
  EXPECT_FALSE(usable_tlsa({2, 0, 0, "not a certificate"}));
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ASSERT_NE(key, nullptr);
  unsigned char* der = nullptr;
  const int size = i2d_PUBKEY(key, &der);
  ASSERT_GT(size, 0);
  const std::string spki(reinterpret_cast<const char*>(der), static_cast<std::size_t>(size));
  OPENSSL_free(der);
  EVP_PKEY_free(key);
  EXPECT_TRUE(usable_tlsa({3, 1, 0, spki}));
  EXPECT_FALSE(usable_tlsa({3, 1, 0, spki + "x"}));  // trailing bytes
}

TEST(MtaStsRoute, DaneWins) {
  auto route = route_of({"dane.example.net", "mx1.example.com"});
  route.targets[0].policy = TlsPolicy::dane;
  route.targets[0].tls_required = true;
  route.targets[0].dane = {{3, 1, 1, std::string(32, 'x')}};
  apply_sts(route, sts_policy(StsMode::enforce));
  ASSERT_EQ(route.targets.size(), 2u);
  EXPECT_EQ(route.targets[0].policy, TlsPolicy::dane);
  EXPECT_EQ(route.targets[0].dane.size(), 1u);
  EXPECT_EQ(route.targets[1].policy, TlsPolicy::sts_enforce);
}

}  // namespace
}  // namespace stp::outbound
