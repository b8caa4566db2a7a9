// Unit tests for the value parsers (proxy/config_values.cpp): parse_duration, and the checks
// each flag's text goes through before parse_config adds the flag's name (config_test.cpp and
// config_flags_test.cpp test them through parse_config, with those names).
#include "proxy/config_values.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

namespace stp {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;

// A BadValue: its message and the text it names.
using Bad = std::pair<std::string, std::string>;

// The BadValue `f` throws; fails the test when there is none.
template <class F>
Bad bad_value_of(F&& f) {
  try {
    f();
  } catch (const flags::BadValue& e) {
    return {e.what(), e.value()};
  }
  ADD_FAILURE() << "no BadValue";
  return {};
}

// ---- durations -------------------------------------------------------------------------------

TEST(ParseDuration, AcceptsSecondsAndSuffixes) {
  EXPECT_EQ(parse_duration("300"), 300s);
  EXPECT_EQ(parse_duration("300s"), 300s);
  EXPECT_EQ(parse_duration("5m"), 300s);
  EXPECT_EQ(parse_duration("1h"), 3600s);
  EXPECT_EQ(parse_duration("1"), 1s);
  EXPECT_EQ(parse_duration("007"), 7s);
  EXPECT_EQ(parse_duration("8760h"), 8760h);
  EXPECT_EQ(parse_duration("31536000"), 31536000s);
  EXPECT_EQ(parse_duration("0", ZeroDuration::allowed), 0s);
  EXPECT_EQ(parse_duration("00m", ZeroDuration::allowed), 0s);
}

TEST(ParseDuration, RejectsZeroNegativeGarbageAndOverflow) {
  const std::map<std::string, std::string> cases = {
      {"0", "must be more than zero"},
      {"0s", "must be more than zero"},
      {"00m", "must be more than zero"},
      {"-5", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"s", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5x", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5ms", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5 m", "not a duration: seconds, or a number with an s, m or h suffix"},
      {" 5", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"+5", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"1.5h", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5M", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"8761h", "too long: at most 8760h (a year)"},
      {"31536001", "too long: at most 8760h (a year)"},
      {"99999999999999999999", "too long: at most 8760h (a year)"},
      {"5124095576030431h", "too long: at most 8760h (a year)"},  // * 3600 wraps int64
  };
  for (const auto& [text, message] : cases) {
    try {
      parse_duration(text);
      ADD_FAILURE() << "accepted \"" << text << "\"";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), message) << text;
    }
  }
}

TEST(ConfigValues, DurationValueNamesTheText) {
  EXPECT_EQ(flags::duration_value("90s"), 90s);
  EXPECT_EQ(flags::duration_value("0", ZeroDuration::allowed), 0s);
  EXPECT_EQ(bad_value_of([] { flags::duration_value("0"); }), Bad("must be more than zero", "0"));
}

// ---- lists, numbers, switches, choices --------------------------------------------------------

TEST(ConfigValues, SplitListTrimsItemsAndRefusesEmptyOnes) {
  EXPECT_THAT(flags::split_list(" a , b,c "), ElementsAre("a", "b", "c"));
  EXPECT_TRUE(flags::split_list("").empty());
  EXPECT_TRUE(flags::split_list(" \t ").empty());
  EXPECT_EQ(bad_value_of([] { flags::split_list("a,,b"); }).first,
            "empty item in a comma-separated list");
  EXPECT_EQ(bad_value_of([] { flags::split_list("a,"); }).second, "a,");
}

TEST(ConfigValues, SniCertificatesAreNameEqualsFilesLowerCased) {
  const auto named = flags::sni_certificates(
      {"MX.Example.org=/etc/mx.pem", "*.example.net=/etc/w.pem,/etc/w.key"});
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named[0].name, "mx.example.org");
  EXPECT_EQ(named[0].certificate, "/etc/mx.pem");
  EXPECT_EQ(named[0].privatekey, "");
  EXPECT_EQ(named[1].name, "*.example.net");
  EXPECT_EQ(named[1].privatekey, "/etc/w.key");
  for (const char* value : {"mx.example.org", "=/etc/mx.pem", "a b=/f", "*=/f", "a.*.org=/f",
                            "*.*.org=/f", ".example.org=/f", "mx.example.org="}) {
    EXPECT_FALSE(bad_value_of([&] { flags::sni_certificates({value}); }).first.empty()) << value;
  }
  EXPECT_EQ(bad_value_of([] { flags::sni_certificates({"mx.example.org=/f,"}); }).first,
            "empty file name");
}

TEST(ConfigValues, HostCertificatesSplitAtTheLastEqualsSign) {
  const auto chosen = flags::host_certificates({"192.0.2.0/24,2001:db8::/32=/etc/p.pem",
                                                "10.0.0.1=/etc/a.pem,/etc/a.key",
                                                "192.0.2.0/24,2001:db8::/32=/etc/p-ec.pem"});
  // One host list given twice (its RSA and ECDSA files) is one list.
  ASSERT_EQ(chosen.hosts.size(), 2u);
  EXPECT_TRUE(chosen.hosts[0].matches(boost::asio::ip::make_address("192.0.2.9")));
  EXPECT_FALSE(chosen.hosts[0].matches(boost::asio::ip::make_address("10.0.0.1")));
  EXPECT_TRUE(chosen.hosts[1].matches(boost::asio::ip::make_address("10.0.0.1")));
  ASSERT_EQ(chosen.certificates.size(), 3u);
  EXPECT_EQ(chosen.certificates[0].name, chosen.hosts[0].text());
  EXPECT_EQ(chosen.certificates[0].certificate, "/etc/p.pem");
  EXPECT_EQ(chosen.certificates[1].name, chosen.hosts[1].text());
  EXPECT_EQ(chosen.certificates[1].privatekey, "/etc/a.key");
  EXPECT_EQ(chosen.certificates[2].name, chosen.hosts[0].text());
  EXPECT_EQ(chosen.certificates[2].certificate, "/etc/p-ec.pem");

  EXPECT_EQ(bad_value_of([] { flags::host_certificates({"/etc/p.pem"}); }).first,
            "not HOSTLIST=FILE[,KEYFILE]");
  EXPECT_EQ(bad_value_of([] { flags::host_certificates({"=/etc/p.pem"}); }).first,
            "empty host list");
  EXPECT_EQ(bad_value_of([] { flags::host_certificates({"10.0.0.1="}); }).first, "empty file name");
  EXPECT_FALSE(bad_value_of([] { flags::host_certificates({"mx.example.org=/f"}); }).first.empty());
  EXPECT_FALSE(bad_value_of([] { flags::host_certificates({"10.0.0.0/33=/f"}); }).first.empty());
}

TEST(ConfigValues, NumbersAreWholeDecimalsInTheirRange) {
  EXPECT_EQ(flags::parse_number("42", 1, 100), 42u);
  EXPECT_EQ(flags::parse_number("1", 1, 100), 1u);
  EXPECT_EQ(flags::parse_number("100", 1, 100), 100u);
  for (const char* text : {"0", "101", "", "+5", "-5", " 5", "5 ", "0x10", "1e2", "4.0"}) {
    EXPECT_FALSE(flags::parse_number(text, 1, 100)) << text;
  }
  EXPECT_FALSE(flags::parse_number("99999999999999999999", 0, UINT64_MAX));
  EXPECT_EQ(bad_value_of([] { flags::number_in_range("7", 8, 9, "a number of bytes"); }).first,
            "must be a number of bytes from 8 to 9");
}

TEST(ConfigValues, Ports) {
  EXPECT_EQ(flags::parse_port("25", "x:25"), 25);
  EXPECT_EQ(flags::parse_port("65535", "x"), 65535);
  EXPECT_EQ(bad_value_of([] { flags::parse_port("0", "host:0"); }),
            Bad("port must be a number from 1 to 65535", "host:0"));
  EXPECT_THAT(flags::port_list({"25, 587"}), ElementsAre(25, 587));
  EXPECT_TRUE(flags::port_list({""}).empty());
  EXPECT_EQ(bad_value_of([] { flags::port_list({"25,25"}); }).first, "port 25 listed twice");
}

TEST(ConfigValues, SwitchWordsInAnyCase) {
  for (const char* yes : {"true", "YES", "On", "1", " on "}) EXPECT_TRUE(flags::parse_bool(yes));
  for (const char* no : {"false", "No", "OFF", "0"}) EXPECT_FALSE(flags::parse_bool(no));
  EXPECT_EQ(bad_value_of([] { flags::parse_bool("maybe"); }).first,
            "must be true, false, yes, no, on, off, 1 or 0");
}

TEST(ConfigValues, OneOfIsExact) {
  const std::string text = "json";
  EXPECT_EQ(flags::one_of(text, {"text", "json"}), "json");
  EXPECT_EQ(bad_value_of([] {
              flags::one_of("JSON", {"text", "json"});
            }).first,
            "must be one of text, json");
}

// ---- names and addresses ----------------------------------------------------------------------

TEST(ConfigValues, DnsNames) {
  for (const char* name : {"mx.example.org", "a", "mx.example.org.", "a-b.c1", "x.123a"}) {
    EXPECT_TRUE(flags::is_dns_name(name, false)) << name;
  }
  for (const char* name :
       {"", ".", "a..b", "-a.b", "a-.b", "a_b", "a b", "10.0.0.1", "x.123", "a.b/c"}) {
    EXPECT_FALSE(flags::is_dns_name(name, false)) << name;
  }
  EXPECT_TRUE(flags::is_dns_name("mta_service.internal", true));
  EXPECT_FALSE(flags::is_dns_name(std::string(64, 'a') + ".org", false));  // a label over 63
  std::string long_name;
  while (long_name.size() < 254) long_name += "abcdefghi.";
  EXPECT_FALSE(flags::is_dns_name(long_name.substr(0, 254), false));  // over 253
}

TEST(ConfigValues, HostAndPort) {
  EXPECT_EQ(flags::split_host_port("mx.example.org:25"),
            (std::pair<std::string_view, std::uint16_t>("mx.example.org", 25)));
  EXPECT_EQ(flags::split_host_port("[2001:db8::1]:587"),
            (std::pair<std::string_view, std::uint16_t>("2001:db8::1", 587)));
  const std::map<std::string, std::string> errors = {
      {"mx.example.org", "expected HOST:PORT"},
      {"::1:25", "an IPv6 address must be in brackets, as in [::1]:25"},
      {"[::1]25", "expected [IPV6]:PORT"},
      {"[::1]:", "port must be a number from 1 to 65535"},
      {"[mx]:25", "not an IPv6 address in the brackets"},
      {":25", "the address is missing"},
      {"host:99999", "port must be a number from 1 to 65535"},
  };
  for (const auto& [text, message] : errors) {
    EXPECT_EQ(bad_value_of([&] { flags::split_host_port(text); }), Bad(message, text));
  }
}

TEST(ConfigValues, ListenEndpointsAreAddressesNotNames) {
  const auto endpoint = flags::parse_listen_endpoint("[::]:25");
  EXPECT_TRUE(endpoint.address().is_v6());
  EXPECT_EQ(endpoint.port(), 25);
  EXPECT_EQ(flags::parse_listen_endpoint("127.0.0.1:2525").address().to_string(), "127.0.0.1");
  EXPECT_EQ(bad_value_of([] { flags::parse_listen_endpoint("localhost:25"); }).first,
            "not an IP address (listen on an address, not a name)");
}

TEST(ConfigValues, HostListsAndFiles) {
  EXPECT_FALSE(flags::host_list({"192.0.2.0/24, !*"}).empty());
  EXPECT_TRUE(flags::host_list({""}).empty());
  EXPECT_EQ(bad_value_of([] { flags::host_list({"nonsense"}); }).second, "nonsense");
  EXPECT_THAT(flags::files({"a.pem", "b.pem"}), ElementsAre("a.pem", "b.pem"));
  EXPECT_EQ(bad_value_of([] { flags::files({"a.pem", ""}); }).first, "empty file name");
}

TEST(ConfigValues, ControlBytesAreEscaped) {
  EXPECT_EQ(flags::escape_control_bytes("plain text"), "plain text");
  EXPECT_EQ(flags::escape_control_bytes(std::string("a\x01"
                                                    "b\nc\x7f\0",
                                                    7)),
            "a\\x01b\\x0ac\\x7f\\x00");
  EXPECT_EQ(flags::escape_control_bytes("caf\xc3\xa9"), "caf\xc3\xa9");  // 8-bit as it is
}

}  // namespace
}  // namespace stp
