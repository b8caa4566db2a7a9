// made_under_terms_of: when a connection kept from an earlier transaction to a domain may carry
// the next one, given what DNS says of the domain's MX hosts now (issue 23's precedence: the
// operator's flags, then DANE, then MTA-STS, then opportunistic TLS).
#include "outbound/relay_link.hpp"

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

namespace stp::outbound {
namespace {
namespace asio = boost::asio;

class KeptTerms : public ::testing::Test {
 protected:
  KeptTerms() {
    link_.host = {.name = "mx.example.net", .port = 25};
    link_.endpoint = endpoint_;
    target_.host = link_.host;
    target_.endpoints = std::vector{endpoint_};
  }

  asio::io_context io_;
  DeadlineQueue deadlines_;
  asio::ip::tcp::endpoint endpoint_{asio::ip::make_address("192.0.2.25"), 25};
  RelayLink link_{io_.get_executor(), deadlines_, "K"};
  RelayTarget target_;
};

TEST_F(KeptTerms, TheSameHostAddressAndTermsHold) {
  EXPECT_TRUE(made_under_terms_of(link_, target_));
  link_.policy = target_.policy = TlsPolicy::dane;
  link_.tls_required_by_dns = target_.tls_required = true;
  link_.dane = target_.dane = {{.usage = 3, .selector = 1, .matching_type = 1, .data = "x"}};
  EXPECT_TRUE(made_under_terms_of(link_, target_));
}

TEST_F(KeptTerms, AnotherAddressOrNewRecordsDoNot) {
  target_.endpoints =
      std::vector{asio::ip::tcp::endpoint(asio::ip::make_address("192.0.2.26"), 25)};
  EXPECT_FALSE(made_under_terms_of(link_, target_));
  target_.endpoints = std::vector{endpoint_};
  target_.policy = TlsPolicy::dane;  // TLSA records published since
  target_.tls_required = true;
  target_.dane = {{.usage = 3, .selector = 1, .matching_type = 1, .data = "x"}};
  EXPECT_FALSE(made_under_terms_of(link_, target_));
}

TEST_F(KeptTerms, TheOperatorsFlagsHoldOnlyWhileDnsGivesNoTermsOrTlsIsAvoided) {
  // Made under --relay-hosts-require-tls naming the host, DNS saying nothing of its own.
  link_.policy = TlsPolicy::relay_flags;
  EXPECT_TRUE(made_under_terms_of(link_, target_));
  // DNS now says DANE, or an enforced MTA-STS policy: a new connection under those terms.
  target_.policy = TlsPolicy::dane;
  target_.tls_required = true;
  EXPECT_FALSE(made_under_terms_of(link_, target_));
  target_.policy = TlsPolicy::sts_enforce;
  EXPECT_FALSE(made_under_terms_of(link_, target_));
  // --relay-hosts-avoid-tls names it: whatever DNS says never applied.
  link_.tls_avoided = true;
  EXPECT_TRUE(made_under_terms_of(link_, target_));
}

}  // namespace
}  // namespace stp::outbound
