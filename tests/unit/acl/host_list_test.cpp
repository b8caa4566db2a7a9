// Unit tests for acl::HostList: parsing (items, whitespace, errors naming the item) and matching
// (first match decides, negation, `*`, CIDR boundaries, IPv6, IPv4-mapped addresses).
#include "acl/host_list.hpp"

#include <gtest/gtest.h>

#include <string>

namespace stp::acl {
namespace {

boost::asio::ip::address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}

bool matches(std::string_view list, const char* address) {
  return HostList::parse(list).matches(ip(address));
}

// The message of the HostListError that parsing `list` throws; fails the test if none.
std::string error_of(std::string_view list) {
  try {
    HostList::parse(list);
  } catch (const HostListError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for \"" << list << "\"";
  return {};
}

TEST(HostList, DefaultConstructedIsEmptyAndMatchesNothing) {
  const HostList list;
  EXPECT_TRUE(list.empty());
  EXPECT_FALSE(list.matches(ip("127.0.0.1")));
  EXPECT_FALSE(list.matches(ip("::1")));
}

TEST(HostList, EmptyOrBlankTextMatchesNothing) {
  for (const char* text : {"", "   ", " \t "}) {
    const HostList list = HostList::parse(text);
    EXPECT_TRUE(list.empty()) << text;
    EXPECT_FALSE(list.matches(ip("10.0.0.1"))) << text;
    EXPECT_FALSE(list.matches(ip("2001:db8::1"))) << text;
  }
}

TEST(HostList, KeepsTheTextAsGiven) {
  EXPECT_EQ(HostList::parse(" 10.0.0.0/8 , !* ").text(), " 10.0.0.0/8 , !* ");
}

TEST(HostList, StarMatchesEverything) {
  EXPECT_TRUE(matches("*", "0.0.0.0"));
  EXPECT_TRUE(matches("*", "255.255.255.255"));
  EXPECT_TRUE(matches("*", "::"));
  EXPECT_TRUE(matches("*", "2001:db8::1"));
  EXPECT_TRUE(matches("*", "::ffff:192.0.2.1"));
  EXPECT_FALSE(HostList::parse("*").empty());
}

TEST(HostList, NegatedStarMatchesNothing) {
  EXPECT_FALSE(matches("!*", "192.0.2.1"));
  EXPECT_FALSE(matches("!*", "2001:db8::1"));
}

TEST(HostList, SingleIPv4Address) {
  EXPECT_TRUE(matches("192.0.2.7", "192.0.2.7"));
  EXPECT_FALSE(matches("192.0.2.7", "192.0.2.8"));
  EXPECT_FALSE(matches("192.0.2.7", "192.0.2.6"));
}

TEST(HostList, IPv4CidrBoundaries) {
  EXPECT_TRUE(matches("10.0.0.0/8", "10.0.0.0"));
  EXPECT_TRUE(matches("10.0.0.0/8", "10.255.255.255"));
  EXPECT_FALSE(matches("10.0.0.0/8", "11.0.0.0"));
  EXPECT_FALSE(matches("10.0.0.0/8", "9.255.255.255"));

  // A prefix that does not end on a byte boundary.
  EXPECT_TRUE(matches("192.168.4.0/22", "192.168.4.0"));
  EXPECT_TRUE(matches("192.168.4.0/22", "192.168.7.255"));
  EXPECT_FALSE(matches("192.168.4.0/22", "192.168.8.0"));
  EXPECT_FALSE(matches("192.168.4.0/22", "192.168.3.255"));

  EXPECT_TRUE(matches("0.0.0.0/0", "203.0.113.9"));
  EXPECT_FALSE(matches("0.0.0.0/0", "2001:db8::1"));  // an IPv4 block never matches IPv6
  EXPECT_TRUE(matches("198.51.100.1/32", "198.51.100.1"));
  EXPECT_FALSE(matches("198.51.100.1/32", "198.51.100.0"));
  EXPECT_TRUE(matches("128.0.0.0/1", "200.1.1.1"));
  EXPECT_FALSE(matches("128.0.0.0/1", "127.255.255.255"));
}

TEST(HostList, IPv6AddressesAndCidrs) {
  EXPECT_TRUE(matches("2001:db8::1", "2001:db8::1"));
  EXPECT_TRUE(matches("2001:db8::1", "2001:0db8:0000::0001"));
  EXPECT_FALSE(matches("2001:db8::1", "2001:db8::2"));

  EXPECT_TRUE(matches("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
  EXPECT_FALSE(matches("2001:db8::/32", "2001:db9::"));
  EXPECT_TRUE(matches("2001:db8:80::/41", "2001:db8:ff::1"));
  EXPECT_FALSE(matches("2001:db8:80::/41", "2001:db8:7f::1"));
  EXPECT_TRUE(matches("::/0", "fe80::1"));
  EXPECT_TRUE(matches("::1", "::1"));
  EXPECT_FALSE(matches("::1/128", "::2"));

  // An IPv6 block never matches an IPv4 client, and the other way round.
  EXPECT_FALSE(matches("::/0", "10.0.0.1"));
  EXPECT_FALSE(matches("::/0", "::ffff:10.0.0.1"));
  EXPECT_FALSE(matches("10.0.0.1", "::a00:1"));
}

TEST(HostList, V4MappedClientMatchesAsIPv4) {
  EXPECT_TRUE(matches("192.0.2.0/24", "::ffff:192.0.2.44"));
  EXPECT_FALSE(matches("192.0.2.0/24", "::ffff:192.0.3.44"));
  EXPECT_TRUE(matches("127.0.0.1", "::ffff:127.0.0.1"));
  EXPECT_FALSE(matches("!127.0.0.1, *", "::ffff:127.0.0.1"));
  EXPECT_TRUE(matches("!127.0.0.1, *", "::ffff:127.0.0.2"));
}

TEST(HostList, V4MappedItemMatchesIPv4Clients) {
  // Written as mapped addresses, items cover the IPv4 addresses they carry.
  EXPECT_TRUE(matches("::ffff:192.0.2.1", "192.0.2.1"));
  EXPECT_TRUE(matches("::ffff:192.0.2.1", "::ffff:192.0.2.1"));
  EXPECT_FALSE(matches("::ffff:192.0.2.1", "192.0.2.2"));
  EXPECT_TRUE(matches("::ffff:192.0.2.0/120", "192.0.2.200"));
  EXPECT_FALSE(matches("::ffff:192.0.2.0/120", "192.0.3.1"));
  EXPECT_TRUE(matches("::ffff:0.0.0.0/96", "8.8.8.8"));
}

TEST(HostList, FirstMatchDecides) {
  // Negation first: the /24 is carved out of the /8.
  EXPECT_FALSE(matches("!10.1.2.0/24, 10.0.0.0/8", "10.1.2.3"));
  EXPECT_TRUE(matches("!10.1.2.0/24, 10.0.0.0/8", "10.1.3.3"));
  EXPECT_FALSE(matches("!10.1.2.0/24, 10.0.0.0/8", "11.0.0.1"));  // no item: no

  // Same items, other order: the /8 matches first, so the negation never applies.
  EXPECT_TRUE(matches("10.0.0.0/8, !10.1.2.0/24", "10.1.2.3"));

  // Everything but a block.
  EXPECT_FALSE(matches("!192.0.2.0/24, *", "192.0.2.1"));
  EXPECT_TRUE(matches("!192.0.2.0/24, *", "198.51.100.1"));
  EXPECT_TRUE(matches("!192.0.2.0/24, *", "2001:db8::1"));

  // A star first ends the search.
  EXPECT_TRUE(matches("*, !192.0.2.1", "192.0.2.1"));
  EXPECT_FALSE(matches("!*, 192.0.2.1", "192.0.2.1"));
}

TEST(HostList, NegatedItemAloneMatchesNothing) {
  // A negated match says no; a miss falls off the end, which also says no.
  EXPECT_FALSE(matches("!192.0.2.1", "192.0.2.1"));
  EXPECT_FALSE(matches("!192.0.2.1", "192.0.2.2"));
}

TEST(HostList, WhitespaceAroundItemsIsIgnored) {
  const HostList list = HostList::parse("\t ! 10.0.0.1 ,\t10.0.0.0/8 , 2001:db8::/32\t");
  EXPECT_FALSE(list.matches(ip("10.0.0.1")));
  EXPECT_TRUE(list.matches(ip("10.0.0.2")));
  EXPECT_TRUE(list.matches(ip("2001:db8::5")));
  EXPECT_FALSE(list.matches(ip("192.0.2.1")));
}

TEST(HostList, ErrorsNameTheItem) {
  EXPECT_EQ(error_of("10.0.0.0/33"),
            "item \"10.0.0.0/33\": prefix length must be a number from 0 to 32");
  EXPECT_EQ(error_of("2001:db8::/129"),
            "item \"2001:db8::/129\": prefix length must be a number from 0 to 128");
  EXPECT_EQ(error_of("10.0.0.0/"),
            "item \"10.0.0.0/\": prefix length must be a number from 0 to 32");
  EXPECT_EQ(error_of("10.0.0.0/-1"),
            "item \"10.0.0.0/-1\": prefix length must be a number from 0 to 32");
  EXPECT_EQ(error_of("10.0.0.0/8x"),
            "item \"10.0.0.0/8x\": prefix length must be a number from 0 to 32");
  EXPECT_EQ(error_of("10.0.0.0/99999999999999999999"),
            "item \"10.0.0.0/99999999999999999999\": prefix length must be a number from 0 to 32");
  EXPECT_EQ(error_of("*, mail.example.org"),
            "item \"mail.example.org\": not *, an IPv4 or IPv6 address, or a CIDR block");
  EXPECT_EQ(error_of("10.0.0.256"),
            "item \"10.0.0.256\": not *, an IPv4 or IPv6 address, or a CIDR block");
  EXPECT_EQ(error_of("10.0.0"), "item \"10.0.0\": not *, an IPv4 or IPv6 address, or a CIDR block");
  EXPECT_EQ(error_of("**"), "item \"**\": not *, an IPv4 or IPv6 address, or a CIDR block");
  EXPECT_EQ(error_of("!!10.0.0.1"),
            "item \"!!10.0.0.1\": not *, an IPv4 or IPv6 address, or a CIDR block");
  EXPECT_EQ(error_of("10.0.0.1 10.0.0.2"),
            "item \"10.0.0.1 10.0.0.2\": not *, an IPv4 or IPv6 address, or a CIDR block");
  EXPECT_EQ(error_of("!"), "item \"!\": nothing after '!'");
  EXPECT_EQ(error_of("[::1]"), "item \"[::1]\": write an address without brackets or a scope id");
  EXPECT_EQ(error_of("fe80::1%eth0"),
            "item \"fe80::1%eth0\": write an address without brackets or a scope id");
}

TEST(HostList, HostBitsAfterThePrefixAreAnError) {
  EXPECT_EQ(error_of("10.1.2.3/8"),
            "item \"10.1.2.3/8\": bits set after the prefix; did you mean 10.0.0.0/8?");
  EXPECT_EQ(error_of("2001:db8::1/64"),
            "item \"2001:db8::1/64\": bits set after the prefix; did you mean 2001:db8::/64?");
}

TEST(HostList, EmptyItemsAreAnError) {
  EXPECT_EQ(error_of("10.0.0.1,,10.0.0.2"),
            "empty item at position 2 (two commas in a row, or a comma at an end)");
  EXPECT_EQ(error_of("10.0.0.1, "),
            "empty item at position 2 (two commas in a row, or a comma at an end)");
  EXPECT_EQ(error_of(",10.0.0.1"),
            "empty item at position 1 (two commas in a row, or a comma at an end)");
}

TEST(HostList, IsAnInvalidArgument) {
  EXPECT_THROW(HostList::parse("nonsense"), std::invalid_argument);
}

}  // namespace
}  // namespace stp::acl

namespace stp::acl {
namespace {

// Relay host lists: names, exact or by domain, match the configured name; addresses the
// address connected to.
TEST(HostListNames, MatchTheRelayHostsConfiguredName) {
  const auto list =
      HostList::parse("smtp.example.net, *.relay.example, 192.0.2.0/24", HostList::Names::allowed);
  const auto elsewhere = boost::asio::ip::make_address("198.51.100.7");
  EXPECT_TRUE(list.matches("smtp.example.net", elsewhere));
  EXPECT_TRUE(list.matches("SMTP.Example.NET", elsewhere));
  EXPECT_FALSE(list.matches("mx.smtp.example.net", elsewhere));  // exact, not below
  EXPECT_TRUE(list.matches("a.relay.example", elsewhere));
  EXPECT_TRUE(list.matches("b.a.relay.example", elsewhere));
  EXPECT_FALSE(list.matches("relay.example", elsewhere));  // "*." wants a label before it
  EXPECT_FALSE(list.matches("xrelay.example", elsewhere));
  EXPECT_TRUE(list.matches("other.example", boost::asio::ip::make_address("192.0.2.9")));
  EXPECT_FALSE(list.matches("other.example", elsewhere));
  EXPECT_FALSE(list.matches(elsewhere));  // by address alone, a name item never matches
}

TEST(HostListNames, ANegatedNameExcludesIt) {
  const auto list = HostList::parse("!backup.example.net, *", HostList::Names::allowed);
  const auto address = boost::asio::ip::make_address("192.0.2.1");
  EXPECT_FALSE(list.matches("backup.example.net", address));
  EXPECT_TRUE(list.matches("smtp.example.net", address));
}

TEST(HostListNames, RefusedWhereOnlyAddressesMeanAnything) {
  EXPECT_THROW(HostList::parse("smtp.example.net"), HostListError);
  EXPECT_THROW(HostList::parse("*.example.net, ::1"), HostListError);
  // With names allowed, what is neither a name nor an address is still an error.
  EXPECT_THROW(HostList::parse("smtp_example.net", HostList::Names::allowed), HostListError);
  EXPECT_THROW(HostList::parse("*.", HostList::Names::allowed), HostListError);
  EXPECT_THROW(HostList::parse("10.0.0.1/33", HostList::Names::allowed), HostListError);
  EXPECT_NO_THROW(HostList::parse("fe80::1, 2001:db8::/32", HostList::Names::allowed));
}

}  // namespace
}  // namespace stp::acl
