// The domain a RCPT is routed by: plain paths, quoted local parts holding '@' and '>', source
// routes, parameters after the path, and what is no domain at all.
#include "smtp/mail_path.hpp"

#include <gtest/gtest.h>

namespace stp::smtp {
namespace {

TEST(MailPath, TheDomainIsAfterTheLastAtSignLowerCased) {
  EXPECT_EQ(recipient_domain("TO:<user@Example.ORG>"), "example.org");
  EXPECT_EQ(recipient_domain("to:<user@example.org.> NOTIFY=NEVER"), "example.org");
  EXPECT_EQ(recipient_domain("TO: <user@example.org>"), "example.org");
  EXPECT_EQ(recipient_domain("TO:<\"a@b>c\"@example.net>"), "example.net");
  EXPECT_EQ(recipient_domain("TO:<\"a\\\"@x\"@example.net>"), "example.net");
  EXPECT_EQ(recipient_domain("TO:<@relay.example,@other.example:user@example.com>"), "example.com");
}

TEST(MailPath, WhatIsNoDomainIsNothing) {
  for (const char* arguments :
       {"TO:<postmaster>", "TO:<>", "TO:user@example.org", "FROM:<user@example.org>",
        "TO:<user@[192.0.2.1]>", "TO:<user@exa mple.org>", "TO:<user@example..org>",
        "TO:<user@example.org", "TO:<\"user@example.org>", "TO:<user@-->x", "TO:<user@>",
        "TO:<@relay.example:user>", "TO:<user@exa_mple.org>", ""}) {
    EXPECT_EQ(recipient_domain(arguments), std::nullopt) << arguments;
  }
}

}  // namespace
}  // namespace stp::smtp
