// Unit tests for what the libFuzzer targets (tests/fuzz) found: each test is the minimal input
// of one finding, written so that it fails without the fix. The raw reproducers are kept in
// tests/fuzz/regressions/<target>/ and replayed by scripts/fuzz.sh.
//
// Trusts nothing but the public interfaces of the parsers under test.
#include "acl/host_list.hpp"
#include "smtp/data_filter.hpp"
#include "smtp/proxy_protocol.hpp"
#include "smtp/smtp_parse.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace stp {
namespace {

using namespace std::string_literals;

// regressions/host_list/nul_in_item: make_address() reads a C string, so the text after a NUL
// was never looked at and "192.0.2.1\0garbage" was accepted as 192.0.2.1.
TEST(FuzzRegressions, HostListRejectsNulInsideAnItem) {
  EXPECT_THROW(acl::HostList::parse("192.0.2.1\0garbage"s), acl::HostListError);
  EXPECT_THROW(acl::HostList::parse("10.0.0.0/8, 192.0.2.1\0/32"s), acl::HostListError);
  EXPECT_TRUE(
      acl::HostList::parse("192.0.2.1").matches(boost::asio::ip::make_address("192.0.2.1")));
}

// regressions/config/unescaped_host_list_item: the item went into the message as is, so a
// control byte (or a newline) from a flag or the environment reached the log unescaped.
TEST(FuzzRegressions, HostListErrorEscapesControlBytes) {
  try {
    acl::HostList::parse("\x01"s + ",\n192.0.2.1\x7f");
    FAIL() << "accepted";
  } catch (const acl::HostListError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("\\x01"), std::string::npos) << message;
    for (const char c : message) {
      EXPECT_TRUE(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) << message;
    }
  }
}

// regressions/data_filter/max_output_held_dot_cr: ".\r" held at a line start flushes as
// "..\r\n" when the next byte shows a bare CR, on top of what that byte itself gives: one
// byte in, six out, more than the documented 2 * 1 + 2.
TEST(FuzzRegressions, DataFilterMaxOutputCoversHeldBytes) {
  DataFilter filter(BareLfPolicy::normalize);
  std::string out;
  std::size_t largest_excess = 0;
  for (const char c : ".\r."s) {
    const std::size_t before = out.size();
    const auto r = filter.feed(std::string_view(&c, 1), out);
    ASSERT_EQ(r.consumed, 1u);
    const std::size_t grown = out.size() - before;
    EXPECT_LE(grown, DataFilter::max_output(1)) << "after " << c;
    largest_excess = std::max(largest_excess, grown);
  }
  EXPECT_EQ(largest_excess, 6u);
  EXPECT_EQ(out, "..\r\n..");
}

// regressions/ehlo/cr_inside_line and cr_before_crlf: a CR inside an MTA's EHLO line reached
// the client, and "STARTTLS\r" (CR CR LF) was not recognised as STARTTLS, so the MTA's own
// STARTTLS was offered to clients that read up to any white space (Python's smtplib does).
TEST(FuzzRegressions, EhloRewriteLetsNoStrayCrThrough) {
  const smtp::EhloRewrite rewrite{.offer_starttls = false, .hide_auth = true};
  EXPECT_EQ(smtp::rewrite_ehlo_reply("250-mx\r\n250-STARTTLS\r\r\n250 8BITMIME\r\n", rewrite),
            "250-mx\r\n250 8BITMIME\r\n");
  EXPECT_EQ(smtp::rewrite_ehlo_reply("250-mx\r\n250 SIZE 1\rX\r\n", rewrite), "250 mx\r\n");
  EXPECT_EQ(smtp::rewrite_ehlo_reply("250-mx\rhello\r\n250 SIZE 1\r\n", rewrite),
            "250-mx hello\r\n250 SIZE 1\r\n");
  // Keywords read the way lenient clients read them: letters, digits and '-'.
  EXPECT_EQ(smtp::rewrite_ehlo_reply(
                "250-mx\r\n250-STARTTLS\v\r\n250-XCLIENT\fNAME\r\n250-AUTH\vPLAIN\r\n250 "
                "AUTH=LOGIN\r\n",
                rewrite),
            "250 mx\r\n");
  EXPECT_EQ(smtp::rewrite_ehlo_reply("250-mx\r\n250 AUTH PLAIN\r\n", {}),
            "250-mx\r\n250 AUTH PLAIN\r\n");
}

// fuzz_proxy_header, at start-up: decode() of a default string_view called memcmp() with a null
// pointer (undefined behaviour; UBSan stops there).
TEST(FuzzRegressions, ProxyDecodeOfAnEmptyViewNeedsMore) {
  EXPECT_EQ(proxy_protocol::decode(std::string_view()).status,
            proxy_protocol::Decoded::Status::need_more);
}

// fuzz_proxy_header, v1 seeds: make_address() reads a C string and accepts scope ids, so an
// address with a NUL and junk after it, or with "%1", passed; a trailing space after the ports
// passed; and "PROXY UNKNOWN" followed by more than four words was refused although the spec
// says to ignore what follows UNKNOWN.
TEST(FuzzRegressions, ProxyV1AddressesAreOnlyAddresses) {
  using Status = proxy_protocol::Decoded::Status;
  const auto status = [](std::string_view line) { return proxy_protocol::decode(line).status; };
  EXPECT_EQ(status("PROXY TCP4 192.0.2.7 198.51.100.25 1 2\r\n"), Status::complete);
  EXPECT_EQ(status("PROXY TCP4 192.0.2.7\0x 198.51.100.25 1 2\r\n"s), Status::invalid);
  EXPECT_EQ(status("PROXY TCP4 192.0.2.7 198.51.100.25\0 1 2\r\n"s), Status::invalid);
  EXPECT_EQ(status("PROXY TCP6 fe80::1%1 2001:db8::25 1 2\r\n"), Status::invalid);
  EXPECT_EQ(status("PROXY TCP4 192.0.2.7 198.51.100.25 1 2 \r\n"), Status::invalid);
  EXPECT_EQ(status("PROXY UNKNOWN a b c d e f\r\n"), Status::complete);
  EXPECT_EQ(status("PROXY UNKNOWNX\r\n"), Status::invalid);
}

// fuzz_proxy_header, round trip: a TLV longer than 65535 bytes (a client certificate's CN is
// the client's text) wrapped its 16-bit length, so the MTA would have read the rest of the CN
// as SMTP commands; and any header over 536 bytes is refused by Postfix. Over-long values are
// now left out, never cut, and the header stays within 536 bytes.
TEST(FuzzRegressions, ProxyV2HeaderStaysWithinPostfixsBound) {
  namespace ip = boost::asio::ip;
  proxy_protocol::V2Header header{
      .source = {ip::make_address("2001:db8::1"), 40000},
      .destination = {ip::make_address("2001:db8::25"), 25},
      .ssl = proxy_protocol::SslInfo{.certificate_presented = true,
                                     .certificate_verified = false,
                                     .version = "TLSv1.3",
                                     .cipher = "TLS_AES_256_GCM_SHA384",
                                     .sig_alg = "ecdsa-with-SHA256",
                                     .key_alg = "EC256",
                                     .client_cn = std::string(70000, 'A') + "\r\nRCPT TO:<x>"},
      .authority = std::string(253, 'a'),
  };
  std::string encoded = proxy_protocol::encode_v2(header);
  EXPECT_LE(encoded.size(), 536u);
  EXPECT_EQ(encoded.find("AAAA"), std::string::npos);
  EXPECT_NE(encoded.find(header.authority), std::string::npos);
  auto decoded = proxy_protocol::decode(encoded);
  EXPECT_EQ(decoded.status, proxy_protocol::Decoded::Status::complete);
  EXPECT_EQ(decoded.length, encoded.size());

  // The longest values that are kept still fit.
  header.ssl->client_cn = std::string(64, 'C');
  header.ssl->cipher = std::string(40, 'c');
  header.ssl->sig_alg = std::string(40, 's');
  header.ssl->key_alg = std::string(40, 'k');
  header.ssl->version = std::string(16, 'v');
  encoded = proxy_protocol::encode_v2(header);
  EXPECT_LE(encoded.size(), 536u);
  EXPECT_NE(encoded.find(header.ssl->client_cn), std::string::npos);
  header.ssl->client_cn += 'C';
  EXPECT_EQ(proxy_protocol::encode_v2(header).find(std::string(64, 'C')), std::string::npos);
}

}  // namespace
}  // namespace stp
