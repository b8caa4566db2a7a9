// ConnectionCounter: the per-host bound of --max-connections-per-host.
#include "acl/connection_counter.hpp"

#include <gtest/gtest.h>

namespace {
using boost::asio::ip::make_address;
using stp::acl::ConnectionCounter;

TEST(ConnectionCounter, RefusesPastTheLimitAndFreesOnRelease) {
  ConnectionCounter counter(2);
  const auto host = make_address("192.0.2.7");
  EXPECT_TRUE(counter.acquire(host));
  EXPECT_TRUE(counter.acquire(host));
  EXPECT_FALSE(counter.acquire(host));
  EXPECT_EQ(counter.count(host), 2u);
  counter.release(host);
  EXPECT_TRUE(counter.acquire(host));
  EXPECT_FALSE(counter.acquire(host));
}

TEST(ConnectionCounter, HostsAreCountedApart) {
  ConnectionCounter counter(1);
  EXPECT_TRUE(counter.acquire(make_address("192.0.2.7")));
  EXPECT_TRUE(counter.acquire(make_address("192.0.2.8")));
  EXPECT_FALSE(counter.acquire(make_address("192.0.2.7")));
}

TEST(ConnectionCounter, Ipv6CountsPerSlash64) {
  ConnectionCounter counter(2);
  EXPECT_TRUE(counter.acquire(make_address("2001:db8:1:2::1")));
  EXPECT_TRUE(counter.acquire(make_address("2001:db8:1:2:ffff:ffff:ffff:ffff")));
  EXPECT_FALSE(counter.acquire(make_address("2001:db8:1:2:abcd::9")));  // same /64
  EXPECT_TRUE(counter.acquire(make_address("2001:db8:1:3::1")));        // next /64
}

TEST(ConnectionCounter, Ipv4MappedIsIpv4) {
  ConnectionCounter counter(1);
  EXPECT_TRUE(counter.acquire(make_address("192.0.2.7")));
  EXPECT_FALSE(counter.acquire(make_address("::ffff:192.0.2.7")));
  counter.release(make_address("::ffff:192.0.2.7"));
  EXPECT_EQ(counter.count(make_address("192.0.2.7")), 0u);
  // An IPv4 address and an IPv6 /64 whose first bytes look alike stay apart.
  EXPECT_TRUE(counter.acquire(make_address("c000:0207::")));
  EXPECT_TRUE(counter.acquire(make_address("192.0.2.7")));
}

TEST(ConnectionCounter, ReleaseOfAnUncountedHostIsHarmless) {
  ConnectionCounter counter(1);
  counter.release(make_address("192.0.2.9"));
  EXPECT_EQ(counter.count(make_address("192.0.2.9")), 0u);
  EXPECT_TRUE(counter.acquire(make_address("192.0.2.9")));
}

}  // namespace
