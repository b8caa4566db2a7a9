// DNS record data as the resolver hands it over: wire-format names, MX, A and AAAA, and what
// is refused (compression, bad lengths, names that are not host names).
#include "dns/records.hpp"

#include <gtest/gtest.h>

#include <string>

namespace stp::dns {
namespace {

using namespace std::string_literals;

std::string wire(std::initializer_list<std::string> labels) {
  std::string out;
  for (const auto& label : labels) out += static_cast<char>(label.size()) + label;
  return out + '\0';
}

TEST(DnsRecords, NamesAreReadLowerCasedWithTheirLength) {
  std::size_t consumed = 0;
  const std::string name = wire({"MX1", "Example", "org"});
  EXPECT_EQ(read_name(name + "trailing", &consumed), "mx1.example.org");
  EXPECT_EQ(consumed, name.size());
  EXPECT_EQ(read_name("\0"s), "");  // the root
  EXPECT_EQ(read_name(wire({"_25", "_tcp", "mx"})), "_25._tcp.mx");
}

TEST(DnsRecords, MalformedNamesAreRefused) {
  EXPECT_EQ(read_name(""), std::nullopt);
  EXPECT_EQ(read_name("\3ab"), std::nullopt);                        // label past the end
  EXPECT_EQ(read_name("\3abc"), std::nullopt);                       // no root label
  EXPECT_EQ(read_name("\xc0\x0c"s), std::nullopt);                   // a compression pointer
  EXPECT_EQ(read_name(wire({"a b", "org"})), std::nullopt);          // not a host name
  EXPECT_EQ(read_name(wire({"a\0b"s, "org"})), std::nullopt);        // a NUL inside
  EXPECT_EQ(read_name(wire({std::string(64, 'a')})), std::nullopt);  // label over 63
  std::string long_name;
  for (int i = 0; i < 5; ++i) long_name += static_cast<char>(60) + std::string(60, 'a');
  EXPECT_EQ(read_name(long_name + '\0'), std::nullopt);  // over 255 bytes
}

TEST(DnsRecords, MxHasAPreferenceAndAnExchange) {
  const auto mx = read_mx("\x00\x0a"s + wire({"mx", "example", "org"}));
  ASSERT_TRUE(mx);
  EXPECT_EQ(mx->preference, 10);
  EXPECT_EQ(mx->exchange, "mx.example.org");
  const auto null_mx = read_mx("\x00\x00\x00"s);
  ASSERT_TRUE(null_mx);
  EXPECT_EQ(null_mx->exchange, "");
  EXPECT_EQ(read_mx("\x01\x00"s + wire({"mx"}))->preference, 256);
  EXPECT_EQ(read_mx("\x00\x0a"s), std::nullopt);
  EXPECT_EQ(read_mx("\x00\x0a"s + wire({"mx"}) + "x"), std::nullopt);  // bytes after the name
}

TEST(DnsRecords, TlsaHasThreeOctetsAndData) {
  const auto tlsa = read_tlsa("\x03\x01\x01"s + std::string(32, '\xab'));
  ASSERT_TRUE(tlsa);
  EXPECT_EQ(tlsa->usage, 3);
  EXPECT_EQ(tlsa->selector, 1);
  EXPECT_EQ(tlsa->matching_type, 1);
  EXPECT_EQ(tlsa->data, std::string(32, '\xab'));
  EXPECT_EQ(read_tlsa("\x03\x01\x01"s), std::nullopt);  // no data
}

TEST(DnsRecords, AddressesHaveTheirTypesLength) {
  EXPECT_EQ(read_address(RecordType::a, "\x7f\x00\x00\x15"s)->to_string(), "127.0.0.21");
  EXPECT_EQ(read_address(RecordType::aaaa, std::string(15, '\0') + '\1')->to_string(), "::1");
  EXPECT_EQ(read_address(RecordType::a, "\x7f\x00\x00"s), std::nullopt);
  EXPECT_EQ(read_address(RecordType::aaaa, "\x7f\x00\x00\x15"s), std::nullopt);
  EXPECT_EQ(read_address(RecordType::mx, "\x7f\x00\x00\x15"s), std::nullopt);
}

}  // namespace
}  // namespace stp::dns
