// PROXY protocol: encode_v2 checked byte by byte against headers computed by hand from HAProxy's
// doc/proxy-protocol.txt (signature, ver_cmd, fam, big-endian length, address block, TLVs and
// the PP2_TYPE_SSL sub-TLVs); decode for v1 and v2, prefixes, and malformed input.
#include "smtp/proxy_protocol.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace stp::proxy_protocol {
namespace {

namespace ip = boost::asio::ip;
using tcp = ip::tcp;
using Status = Decoded::Status;

// Raw bytes, written out as the spec shows them.
std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (const int v : values) out += static_cast<char>(static_cast<unsigned char>(v));
  return out;
}

const std::string kSignature =
    bytes({0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A});

tcp::endpoint endpoint(const char* address, std::uint16_t port) {
  return {ip::make_address(address), port};
}

std::string hex_dump(std::string_view data) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < data.size(); ++i) {
    const auto c = static_cast<unsigned char>(data[i]);
    if (i % 16 == 0) out += "\n  ";
    out += kHex[c >> 4];
    out += kHex[c & 0x0f];
    out += ' ';
  }
  return out;
}

// Compares byte by byte and names the first differing offset.
void expect_bytes(std::string_view actual, std::string_view expected) {
  EXPECT_EQ(actual.size(), expected.size());
  for (std::size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    if (actual[i] != expected[i]) {
      ADD_FAILURE() << "first difference at byte " << i << "\nactual:" << hex_dump(actual)
                    << "\nexpected:" << hex_dump(expected);
      return;
    }
  }
  if (actual.size() != expected.size()) {
    ADD_FAILURE() << "\nactual:" << hex_dump(actual) << "\nexpected:" << hex_dump(expected);
  }
}

SslInfo verified_tls13() {
  return SslInfo{
      .certificate_presented = true,
      .certificate_verified = true,
      .version = "TLSv1.3",
      .cipher = "TLS_AES_256_GCM_SHA384",
      .sig_alg = "ecdsa-with-SHA256",
      .key_alg = "EC256",
      .client_cn = "alice",
  };
}

// --- encode_v2 --------------------------------------------------------------------------------

TEST(EncodeV2, Ipv4ClientWithoutTls) {
  const std::string header = encode_v2(
      {.source = endpoint("192.0.2.7", 54321), .destination = endpoint("198.51.100.25", 25)});
  const std::string expected = kSignature + bytes({
                                                0x21,                    // version 2, command PROXY
                                                0x11,                    // AF_INET, STREAM
                                                0x00, 0x0C,              // 12 bytes follow
                                                0xC0, 0x00, 0x02, 0x07,  // 192.0.2.7
                                                0xC6, 0x33, 0x64, 0x19,  // 198.51.100.25
                                                0xD4, 0x31,              // 54321
                                                0x00, 0x19,              // 25
                                            });
  ASSERT_EQ(expected.size(), 28u);
  expect_bytes(header, expected);
}

TEST(EncodeV2, Ipv6ClientWithVerifiedCertificateAndAuthority) {
  const std::string header = encode_v2({
      .source = endpoint("2001:db8::1", 40000),
      .destination = endpoint("2001:db8::25", 465),
      .ssl = verified_tls13(),
      .authority = "mx.example.org",
  });
  // Addresses 36 + AUTHORITY 3+14 + SSL 3+76 = 132 = 0x0084.
  // SSL value: client 1 + verify 4 + VERSION 3+7 + CN 3+5 + CIPHER 3+22 + SIG_ALG 3+17
  //            + KEY_ALG 3+5 = 76 = 0x4C.
  const std::string expected =
      kSignature +
      bytes({
          0x21,        // version 2, PROXY
          0x21,        // AF_INET6, STREAM
          0x00, 0x84,  // 132 bytes follow
          // 2001:db8::1
          0x20, 0x01, 0x0D, 0xB8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
          0x01,
          // 2001:db8::25
          0x20, 0x01, 0x0D, 0xB8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
          0x25, 0x9C, 0x40,  // 40000
          0x01, 0xD1,        // 465
          0x02, 0x00, 0x0E,  // PP2_TYPE_AUTHORITY, 14
      }) +
      "mx.example.org" +
      bytes({
          0x20, 0x00, 0x4C,        // PP2_TYPE_SSL, 76
          0x07,                    // PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
          0x00, 0x00, 0x00, 0x00,  // verify: 0, the certificate verified
          0x21, 0x00, 0x07,        // PP2_SUBTYPE_SSL_VERSION, 7
      }) +
      "TLSv1.3" + bytes({0x22, 0x00, 0x05}) +                 // PP2_SUBTYPE_SSL_CN, 5
      "alice" + bytes({0x23, 0x00, 0x16}) +                   // PP2_SUBTYPE_SSL_CIPHER, 22
      "TLS_AES_256_GCM_SHA384" + bytes({0x24, 0x00, 0x11}) +  // PP2_SUBTYPE_SSL_SIG_ALG, 17
      "ecdsa-with-SHA256" + bytes({0x25, 0x00, 0x05}) +       // PP2_SUBTYPE_SSL_KEY_ALG, 5
      "EC256";
  ASSERT_EQ(expected.size(), 16u + 132u);
  expect_bytes(header, expected);
}

// The spec only asks for a non-zero verify field when there is no verified certificate; the
// header is compared with those four bytes (at `verify_offset`) checked apart.
void expect_bytes_with_nonzero_verify(std::string header, std::string expected,
                                      std::size_t verify_offset) {
  ASSERT_GE(header.size(), verify_offset + 4);
  EXPECT_NE(header.substr(verify_offset, 4), std::string(4, '\0')) << "verify must be non-zero";
  header.replace(verify_offset, 4, 4, '\0');
  expect_bytes(header, expected);
}

TEST(EncodeV2, UnverifiedCertificateHasCertFlagsAndNonZeroVerify) {
  SslInfo ssl = verified_tls13();
  ssl.certificate_verified = false;
  ssl.version = "TLSv1.2";
  ssl.cipher = "ECDHE-RSA-AES256-GCM-SHA384";
  ssl.sig_alg = "RSA-SHA256";
  ssl.key_alg = "RSA2048";
  ssl.client_cn = "bob";
  const std::string header = encode_v2({.source = endpoint("192.0.2.7", 1025),
                                        .destination = endpoint("192.0.2.25", 25),
                                        .ssl = ssl});
  // SSL value: 1 + 4 + (3+7) + (3+3) + (3+27) + (3+10) + (3+7) = 74 = 0x4A;
  // addresses 12 + SSL 3+74 = 89 = 0x59.
  const std::string expected =
      kSignature + bytes({0x21, 0x11, 0x00, 0x59,                          // PROXY, TCP4, 89
                          0xC0, 0x00, 0x02, 0x07, 0xC0, 0x00, 0x02, 0x19,  // 192.0.2.7, 192.0.2.25
                          0x04, 0x01, 0x00, 0x19,                          // 1025, 25
                          0x20, 0x00, 0x4A,                                // PP2_TYPE_SSL, 74
                          0x07,                    // SSL | CERT_CONN | CERT_SESS
                          0x00, 0x00, 0x00, 0x00,  // verify (checked apart)
                          0x21, 0x00, 0x07}) +
      "TLSv1.2" + bytes({0x22, 0x00, 0x03}) + "bob" + bytes({0x23, 0x00, 0x1B}) +
      "ECDHE-RSA-AES256-GCM-SHA384" + bytes({0x24, 0x00, 0x0A}) + "RSA-SHA256" +
      bytes({0x25, 0x00, 0x07}) + "RSA2048";
  ASSERT_EQ(expected.size(), 16u + 89u);
  expect_bytes_with_nonzero_verify(header, expected, 16 + 12 + 3 + 1);
}

TEST(EncodeV2, AbsentCertificateHasOnlySslFlagNoCnAndNonZeroVerify) {
  SslInfo ssl = verified_tls13();
  ssl.certificate_presented = false;
  ssl.certificate_verified = true;  // inconsistent on purpose: without a certificate, not verified
  ssl.client_cn = "ignored";        // no certificate: no CN sub-TLV
  const std::string header = encode_v2({.source = endpoint("192.0.2.7", 1025),
                                        .destination = endpoint("192.0.2.25", 465),
                                        .ssl = ssl});
  // SSL value: 1 + 4 + (3+7) + (3+22) + (3+17) + (3+5) = 68 = 0x44;
  // addresses 12 + SSL 3+68 = 83 = 0x53.
  const std::string expected =
      kSignature + bytes({0x21, 0x11, 0x00, 0x53,                          // PROXY, TCP4, 83
                          0xC0, 0x00, 0x02, 0x07, 0xC0, 0x00, 0x02, 0x19,  // 192.0.2.7, 192.0.2.25
                          0x04, 0x01, 0x01, 0xD1,                          // 1025, 465
                          0x20, 0x00, 0x44,                                // PP2_TYPE_SSL, 68
                          0x01,                                            // PP2_CLIENT_SSL only
                          0x00, 0x00, 0x00, 0x00,                          // verify (checked apart)
                          0x21, 0x00, 0x07}) +
      "TLSv1.3" + bytes({0x23, 0x00, 0x16}) + "TLS_AES_256_GCM_SHA384" + bytes({0x24, 0x00, 0x11}) +
      "ecdsa-with-SHA256" + bytes({0x25, 0x00, 0x05}) + "EC256";
  ASSERT_EQ(expected.size(), 16u + 83u);
  expect_bytes_with_nonzero_verify(header, expected, 16 + 12 + 3 + 1);
}

TEST(EncodeV2, ACertificateOfAResumedSessionWasNotSentOnThisConnection) {
  SslInfo ssl = verified_tls13();
  ssl.resumed = true;
  const std::string header = encode_v2({.source = endpoint("192.0.2.7", 1025),
                                        .destination = endpoint("192.0.2.25", 465),
                                        .ssl = ssl});
  const auto ssl_tlv = header.find(std::string("\x20", 1), 16 + 12);
  ASSERT_NE(ssl_tlv, std::string::npos);
  EXPECT_EQ(static_cast<unsigned char>(header[ssl_tlv + 3]), 0x05);  // SSL | CERT_SESS
}

TEST(EncodeV2, EmptyOptionalSslFieldsAreLeftOut) {
  const std::string header = encode_v2({
      .source = endpoint("192.0.2.7", 1),
      .destination = endpoint("192.0.2.25", 2),
      .ssl = SslInfo{.certificate_presented = true,
                     .certificate_verified = true,
                     .version = "TLSv1.3",
                     .cipher = "TLS_AES_128_GCM_SHA256",
                     .sig_alg = {},
                     .key_alg = {},
                     .client_cn = {}},
  });
  // Certificate presented but no CN text, no SIG_ALG, no KEY_ALG:
  // SSL value 1 + 4 + (3+7) + (3+22) = 40 = 0x28; addresses 12 + 3+40 = 55 = 0x37.
  const std::string expected =
      kSignature +
      bytes({0x21, 0x11, 0x00, 0x37, 0xC0, 0x00, 0x02, 0x07, 0xC0, 0x00, 0x02, 0x19, 0x00, 0x01,
             0x00, 0x02, 0x20, 0x00, 0x28, 0x07, 0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0x07}) +
      "TLSv1.3" + bytes({0x23, 0x00, 0x16}) + "TLS_AES_128_GCM_SHA256";
  expect_bytes(header, expected);
}

// The sub-TLV types present in a header's SSL TLV, and whether AUTHORITY is there: read by
// walking the TLVs as the spec lays them out.
struct TlvsSeen {
  bool authority = false;
  std::string ssl_subtypes;  // one byte per sub-TLV, in order
};
TlvsSeen tlvs_of(std::string_view header, std::size_t address_bytes) {
  TlvsSeen seen;
  std::size_t at = 16 + address_bytes;
  while (at + 3 <= header.size()) {
    const auto type = static_cast<unsigned char>(header[at]);
    const std::size_t length = (static_cast<unsigned char>(header[at + 1]) << 8) |
                               static_cast<unsigned char>(header[at + 2]);
    if (type == kTypeAuthority) seen.authority = true;
    if (type == kTypeSsl) {
      for (std::size_t sub = at + 3 + 5; sub + 3 <= at + 3 + length;) {
        seen.ssl_subtypes += header[sub];
        sub += 3 + ((static_cast<unsigned char>(header[sub + 1]) << 8) |
                    static_cast<unsigned char>(header[sub + 2]));
      }
    }
    at += 3 + length;
  }
  EXPECT_EQ(at, header.size());
  return seen;
}

// An ordinary session that Exim 4.96 could not read whole: an IPv6 client with a verified
// certificate whose CN is 64 bytes, and a 48-byte SNI (241 bytes in all without a budget).
V2Header long_ipv6_session() {
  return {
      .source = endpoint("2001:db8::1", 40000),
      .destination = endpoint("2001:db8::25", 465),
      .ssl = SslInfo{.certificate_presented = true,
                     .certificate_verified = true,
                     .version = "TLSv1.3",
                     .cipher = "TLS_AES_256_GCM_SHA384",
                     .sig_alg = "ecdsa-with-SHA256",
                     .key_alg = "EC256",
                     .client_cn = std::string(64, 'c')},
      .authority = "mx-inbound-eu-west-1.mail-protection.example.com",
  };
}

TEST(EncodeV2, WithinPostfixsLimitEverythingGoes) {
  const auto header = encode_v2(long_ipv6_session());
  EXPECT_EQ(header.size(), 241u);
  const auto seen = tlvs_of(header, 36);
  EXPECT_TRUE(seen.authority);
  EXPECT_EQ(seen.ssl_subtypes, "\x21\x22\x23\x24\x25");
}

TEST(EncodeV2, EximsLimitLeavesOutTheLeastUsefulTlvs) {
  const auto header = encode_v2(long_ipv6_session(), kEximMaxHeader);
  EXPECT_LE(header.size(), kEximMaxHeader);
  // 16 + 36 + SSL (3 + 5 + 10 + 25 + 67) + AUTHORITY 51 = 213; SIG_ALG (20) no longer fits,
  // KEY_ALG (8) still does.
  EXPECT_EQ(header.size(), 221u);
  const auto seen = tlvs_of(header, 36);
  EXPECT_TRUE(seen.authority);
  EXPECT_EQ(seen.ssl_subtypes, "\x21\x22\x23\x25");
  // The length field says what follows.
  EXPECT_EQ((static_cast<unsigned char>(header[14]) << 8 | static_cast<unsigned char>(header[15])),
            header.size() - 16);
}

TEST(EncodeV2, SmallestBudgetKeepsAddressesAndTheSslFlags) {
  const auto header = encode_v2(long_ipv6_session(), 0);  // raised to kMinHeaderBudget
  EXPECT_EQ(header.size(), kMinHeaderBudget);
  const auto seen = tlvs_of(header, 36);
  EXPECT_FALSE(seen.authority);
  EXPECT_EQ(seen.ssl_subtypes, "");
  const auto decoded = decode(header);
  ASSERT_EQ(decoded.status, Status::complete);
  EXPECT_EQ(decoded.source, endpoint("2001:db8::1", 40000));
}

TEST(EncodeV2, EveryBudgetIsRespected) {
  for (std::size_t budget = kMinHeaderBudget; budget <= kPostfixMaxHeader; ++budget) {
    const auto header = encode_v2(long_ipv6_session(), budget);
    ASSERT_LE(header.size(), budget) << budget;
    ASSERT_EQ(decode(header).status, Status::complete) << budget;
    tlvs_of(header, 36);
  }
}

TEST(EncodeV2, AuthorityWithoutTls) {
  const std::string header = encode_v2({.source = endpoint("192.0.2.7", 1),
                                        .destination = endpoint("192.0.2.25", 2),
                                        .authority = "a.example"});
  const std::string expected = kSignature +
                               bytes({0x21, 0x11, 0x00, 0x18,  // 12 + 3+9 = 24
                                      0xC0, 0x00, 0x02, 0x07, 0xC0, 0x00, 0x02, 0x19, 0x00, 0x01,
                                      0x00, 0x02, 0x02, 0x00, 0x09}) +
                               "a.example";
  expect_bytes(header, expected);
}

TEST(EncodeV2, MixedFamiliesAreSentAsIpv6WithV4Mapped) {
  const std::string header = encode_v2(
      {.source = endpoint("192.0.2.7", 25000), .destination = endpoint("2001:db8::25", 25)});
  const std::string expected =
      kSignature + bytes({
                       0x21, 0x21, 0x00, 0x24,  // PROXY, TCP6, 36
                       // ::ffff:192.0.2.7
                       0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xC0,
                       0x00, 0x02, 0x07,
                       // 2001:db8::25
                       0x20, 0x01, 0x0D, 0xB8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                       0x00, 0x00, 0x25, 0x61, 0xA8,  // 25000
                       0x00, 0x19,                    // 25
                   });
  ASSERT_EQ(expected.size(), 52u);
  expect_bytes(header, expected);
}

TEST(EncodeV2, MixedFamiliesTheOtherWayRound) {
  const std::string header =
      encode_v2({.source = endpoint("2001:db8::1", 1), .destination = endpoint("192.0.2.25", 2)});
  ASSERT_EQ(header.size(), 52u);
  EXPECT_EQ(header[13], '\x21');
  EXPECT_EQ(header.substr(32, 16), bytes({0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                          0x00, 0xFF, 0xFF, 0xC0, 0x00, 0x02, 0x19}));
}

TEST(EncodeV2, V4MappedOnBothSidesIsSentAsIpv4) {
  const std::string header = encode_v2({.source = endpoint("::ffff:192.0.2.7", 54321),
                                        .destination = endpoint("::ffff:198.51.100.25", 25)});
  const std::string expected = kSignature + bytes({0x21, 0x11, 0x00, 0x0C, 0xC0, 0x00, 0x02, 0x07,
                                                   0xC6, 0x33, 0x64, 0x19, 0xD4, 0x31, 0x00, 0x19});
  expect_bytes(header, expected);
}

// --- decode: round trips and version 1 ---------------------------------------------------------

void expect_complete(const Decoded& d, std::size_t length, const tcp::endpoint& source,
                     const tcp::endpoint& destination) {
  EXPECT_EQ(d.status, Status::complete);
  EXPECT_EQ(d.length, length);
  EXPECT_FALSE(d.local);
  EXPECT_EQ(d.source, source);
  EXPECT_EQ(d.destination, destination);
}

TEST(Decode, RoundTripsEncodeV2) {
  struct Case {
    V2Header header;
    tcp::endpoint source;  // as decoded: v4-mapped comes back as IPv4
    tcp::endpoint destination;
  };
  SslInfo unverified = verified_tls13();
  unverified.certificate_verified = false;
  const Case cases[] = {
      {{.source = endpoint("192.0.2.7", 54321), .destination = endpoint("198.51.100.25", 25)},
       endpoint("192.0.2.7", 54321),
       endpoint("198.51.100.25", 25)},
      {{.source = endpoint("2001:db8::1", 40000),
        .destination = endpoint("2001:db8::25", 465),
        .ssl = verified_tls13(),
        .authority = "mx.example.org"},
       endpoint("2001:db8::1", 40000),
       endpoint("2001:db8::25", 465)},
      {{.source = endpoint("192.0.2.7", 1025),
        .destination = endpoint("192.0.2.25", 587),
        .ssl = unverified},
       endpoint("192.0.2.7", 1025),
       endpoint("192.0.2.25", 587)},
      {{.source = endpoint("192.0.2.7", 25000), .destination = endpoint("2001:db8::25", 25)},
       endpoint("192.0.2.7", 25000),
       endpoint("2001:db8::25", 25)},
      {{.source = endpoint("2001:db8::1", 0), .destination = endpoint("192.0.2.25", 65535)},
       endpoint("2001:db8::1", 0),
       endpoint("192.0.2.25", 65535)},
  };
  for (const auto& c : cases) {
    const std::string header = encode_v2(c.header);
    SCOPED_TRACE(hex_dump(header));
    expect_complete(decode(header), header.size(), c.source, c.destination);
    // What follows the header is not part of it.
    expect_complete(decode(header + "EHLO client.example\r\n"), header.size(), c.source,
                    c.destination);
  }
}

TEST(Decode, V1Tcp4) {
  const std::string line = "PROXY TCP4 192.0.2.7 198.51.100.25 54321 25\r\n";
  expect_complete(decode(line), line.size(), endpoint("192.0.2.7", 54321),
                  endpoint("198.51.100.25", 25));
  expect_complete(decode(line + "EHLO x\r\n"), line.size(), endpoint("192.0.2.7", 54321),
                  endpoint("198.51.100.25", 25));
}

TEST(Decode, V1Tcp6) {
  const std::string line = "PROXY TCP6 2001:db8::1 2001:db8::25 40000 465\r\n";
  expect_complete(decode(line), line.size(), endpoint("2001:db8::1", 40000),
                  endpoint("2001:db8::25", 465));
}

TEST(Decode, V1PortBounds) {
  const std::string line = "PROXY TCP4 192.0.2.7 192.0.2.25 0 65535\r\n";
  expect_complete(decode(line), line.size(), endpoint("192.0.2.7", 0),
                  endpoint("192.0.2.25", 65535));
}

TEST(Decode, V1Unknown) {
  const std::string line = "PROXY UNKNOWN\r\n";
  const Decoded d = decode(line);
  EXPECT_EQ(d.status, Status::complete);
  EXPECT_EQ(d.length, line.size());
  EXPECT_TRUE(d.local);

  // The spec's worst case, 107 bytes: the receiver ignores what follows UNKNOWN.
  const std::string ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const std::string longest = "PROXY UNKNOWN " + ffff + " " + ffff + " 65535 65535\r\n";
  ASSERT_EQ(longest.size(), 107u);
  const Decoded l = decode(longest + "EHLO x\r\n");
  EXPECT_EQ(l.status, Status::complete);
  EXPECT_EQ(l.length, 107u);
  EXPECT_TRUE(l.local);
}

TEST(Decode, V1LongestTcp6) {
  const std::string ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const std::string line = "PROXY TCP6 " + ffff + " " + ffff + " 65535 65535\r\n";
  ASSERT_EQ(line.size(), 104u);
  expect_complete(decode(line), line.size(), endpoint(ffff.c_str(), 65535),
                  endpoint(ffff.c_str(), 65535));
}

// --- decode: version 2 commands and families ---------------------------------------------------

TEST(Decode, V2LocalUsesTheConnectionsOwnAddresses) {
  // LOCAL with UNSPEC and no address block, as a balancer's health check sends it.
  const std::string bare = kSignature + bytes({0x20, 0x00, 0x00, 0x00});
  Decoded d = decode(bare + "QUIT\r\n");
  EXPECT_EQ(d.status, Status::complete);
  EXPECT_EQ(d.length, 16u);
  EXPECT_TRUE(d.local);

  // LOCAL with an address block: the block is skipped, the family ignored.
  const std::string with_block =
      kSignature + bytes({0x20, 0x11, 0x00, 0x0C, 0xC0, 0x00, 0x02, 0x07, 0xC0, 0x00, 0x02, 0x19,
                          0x00, 0x01, 0x00, 0x02});
  d = decode(with_block);
  EXPECT_EQ(d.status, Status::complete);
  EXPECT_EQ(d.length, 28u);
  EXPECT_TRUE(d.local);
}

TEST(Decode, V2ProxyWithUnspecFamilyIsLocal) {
  const std::string header = kSignature + bytes({0x21, 0x00, 0x00, 0x00});
  const Decoded d = decode(header);
  EXPECT_EQ(d.status, Status::complete);
  EXPECT_EQ(d.length, 16u);
  EXPECT_TRUE(d.local);
}

TEST(Decode, V2SkipsTlvsItDoesNotRead) {
  const std::string header =
      kSignature + bytes({0x21, 0x11, 0x00, 0x13, 0xC0, 0x00, 0x02, 0x07, 0xC0, 0x00, 0x02, 0x19,
                          0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x04, 0xAA, 0xBB, 0xCC, 0xDD});
  expect_complete(decode(header), 16u + 19u, endpoint("192.0.2.7", 1), endpoint("192.0.2.25", 2));
}

// --- decode: prefixes ----------------------------------------------------------------------------

TEST(Decode, EveryPrefixOfAValidHeaderNeedsMore) {
  const std::string headers[] = {
      encode_v2(
          {.source = endpoint("192.0.2.7", 54321), .destination = endpoint("198.51.100.25", 25)}),
      encode_v2({.source = endpoint("2001:db8::1", 40000),
                 .destination = endpoint("2001:db8::25", 465),
                 .ssl = verified_tls13(),
                 .authority = "mx.example.org"}),
      kSignature + bytes({0x20, 0x00, 0x00, 0x00}),
      "PROXY TCP4 192.0.2.7 198.51.100.25 54321 25\r\n",
      "PROXY TCP6 2001:db8::1 2001:db8::25 40000 465\r\n",
      "PROXY UNKNOWN\r\n",
  };
  for (const auto& header : headers) {
    ASSERT_EQ(decode(header).status, Status::complete) << hex_dump(header);
    for (std::size_t n = 0; n < header.size(); ++n) {
      const Decoded d = decode(std::string_view(header).substr(0, n));
      EXPECT_EQ(d.status, Status::need_more)
          << "prefix of " << n << " bytes of" << hex_dump(header);
      EXPECT_EQ(d.length, 0u);
    }
  }
}

TEST(Decode, EmptyInputNeedsMore) {
  EXPECT_EQ(decode(std::string_view()).status, Status::need_more);
  EXPECT_EQ(decode("").status, Status::need_more);
}

// --- decode: malformed input --------------------------------------------------------------------

std::string valid_v4_header() {
  return encode_v2(
      {.source = endpoint("192.0.2.7", 54321), .destination = endpoint("198.51.100.25", 25)});
}

void expect_invalid(std::string_view input) {
  const Decoded d = decode(input);
  EXPECT_EQ(d.status, Status::invalid) << hex_dump(input);
  EXPECT_EQ(d.length, 0u);
}

TEST(Decode, V2BadSignatureIsInvalid) {
  for (std::size_t i = 0; i < 12; ++i) {
    std::string header = valid_v4_header();
    header[i] = static_cast<char>(header[i] ^ 0x40);
    SCOPED_TRACE(i);
    expect_invalid(header);
    expect_invalid(header.substr(0, i + 1));  // wrong as soon as the byte arrives
  }
}

TEST(Decode, V2WrongVersionIsInvalid) {
  for (const int ver_cmd : {0x11, 0x10, 0x01, 0x31, 0xF1}) {
    std::string header = valid_v4_header();
    header[12] = static_cast<char>(ver_cmd);
    SCOPED_TRACE(ver_cmd);
    expect_invalid(header);
  }
}

TEST(Decode, V2UnassignedCommandIsInvalid) {
  for (const int ver_cmd : {0x22, 0x23, 0x2F}) {
    std::string header = valid_v4_header();
    header[12] = static_cast<char>(ver_cmd);
    SCOPED_TRACE(ver_cmd);
    expect_invalid(header);
  }
}

TEST(Decode, V2UnixFamilyIsInvalid) {
  for (const int fam : {0x31, 0x32}) {
    const std::string header =
        kSignature + bytes({0x21, fam, 0x00, 0xD8}) + std::string(216, 'u');  // 2 * 108 bytes
    SCOPED_TRACE(fam);
    expect_invalid(header);
  }
}

TEST(Decode, V2UnknownFamilyOrTransportIsInvalid) {
  for (const int fam : {0x12, 0x22, 0x13, 0x10, 0x20, 0x41, 0xF1}) {
    std::string header = kSignature + bytes({0x21, fam, 0x00, 0x24}) + std::string(36, '\0');
    SCOPED_TRACE(fam);
    expect_invalid(header);
  }
}

TEST(Decode, V2TruncatedAddressBlockIsInvalid) {
  // The length covers fewer bytes than the family's address block.
  expect_invalid(kSignature + bytes({0x21, 0x11, 0x00, 0x00}));
  expect_invalid(kSignature + bytes({0x21, 0x11, 0x00, 0x08}) + std::string(8, '\x01'));
  expect_invalid(kSignature + bytes({0x21, 0x11, 0x00, 0x0B}) + std::string(11, '\x01'));
  expect_invalid(kSignature + bytes({0x21, 0x21, 0x00, 0x0C}) + std::string(12, '\x01'));
  expect_invalid(kSignature + bytes({0x21, 0x21, 0x00, 0x23}) + std::string(35, '\x01'));
}

TEST(Decode, V2LengthBeyondTheBytesPresentNeedsMore) {
  // 0xFFFF announced: wait for it (the caller bounds the wait), do not read past the input.
  const std::string header = kSignature + bytes({0x21, 0x11, 0xFF, 0xFF}) + std::string(100, 'x');
  EXPECT_EQ(decode(header).status, Status::need_more);
}

TEST(Decode, V1TooLongIsInvalid) {
  // 108 bytes with the CRLF: one over the spec's bound.
  const std::string too_long = "PROXY UNKNOWN " + std::string(92, 'x') + "\r\n";
  ASSERT_EQ(too_long.size(), 108u);
  expect_invalid(too_long);
  // 107 bytes is still fine.
  const std::string longest = "PROXY UNKNOWN " + std::string(91, 'x') + "\r\n";
  ASSERT_EQ(longest.size(), 107u);
  EXPECT_EQ(decode(longest).status, Status::complete);
  // No CRLF within the first 107 bytes: invalid without waiting for more.
  expect_invalid("PROXY TCP4 " + std::string(96, '1'));
  EXPECT_EQ(decode("PROXY TCP4 " + std::string(95, '1')).status, Status::need_more);
}

TEST(Decode, V1BadPortsAreInvalid) {
  for (const char* ports : {"0123 25", "25 0123", "65536 25", "25 65536", "99999 25", "-1 25",
                            "+1 25", "1a 25", "25 ", " 25", "00 25", "123456 25"}) {
    SCOPED_TRACE(ports);
    expect_invalid(std::string("PROXY TCP4 192.0.2.7 192.0.2.25 ") + ports + "\r\n");
  }
}

TEST(Decode, V1FamilyMismatchIsInvalid) {
  expect_invalid("PROXY TCP4 2001:db8::1 192.0.2.25 1 2\r\n");
  expect_invalid("PROXY TCP4 192.0.2.7 2001:db8::25 1 2\r\n");
  expect_invalid("PROXY TCP6 192.0.2.7 2001:db8::25 1 2\r\n");
  expect_invalid("PROXY TCP6 2001:db8::1 192.0.2.25 1 2\r\n");
}

TEST(Decode, V1MalformedLinesAreInvalid) {
  for (const char* line : {
           "PROXY\r\n",
           "PROXY \r\n",
           "PROXY TCP5 192.0.2.7 192.0.2.25 1 2\r\n",
           "PROXY UDP4 192.0.2.7 192.0.2.25 1 2\r\n",
           "PROXY tcp4 192.0.2.7 192.0.2.25 1 2\r\n",
           "PROXY TCP4 192.0.2.7 192.0.2.25 1\r\n",
           "PROXY TCP4 192.0.2.7 192.0.2.25 1 2 3\r\n",
           "PROXY TCP4  192.0.2.7 192.0.2.25 1 2\r\n",
           "PROXY TCP4 192.0.2.256 192.0.2.25 1 2\r\n",
           "PROXY TCP4 host.example 192.0.2.25 1 2\r\n",
           "PROXY TCP4 192.0.2.7 192.0.2.25 1 2\n\r\n",
           "PROXY  UNKNOWN\r\n",
       }) {
    SCOPED_TRACE(line);
    expect_invalid(line);
  }
}

TEST(Decode, GarbageIsInvalid) {
  for (const std::string& input : {
           std::string("EHLO client.example\r\n"),
           std::string("GET / HTTP/1.0\r\n"),
           std::string("proxy TCP4 192.0.2.7 192.0.2.25 1 2\r\n"),
           std::string("PROXYTCP4 192.0.2.7 192.0.2.25 1 2\r\n"),
           std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),  // a ClientHello
           std::string("\r\n\r\n\r\n"),
           std::string(1, '\0'),
           std::string("X"),
       }) {
    SCOPED_TRACE(hex_dump(input));
    expect_invalid(input);
  }
}

}  // namespace
}  // namespace stp::proxy_protocol
