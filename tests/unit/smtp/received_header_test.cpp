// The proxy's Received: header in Postfix's format: exact expected headers for each TLS and
// certificate state, RFC 3848 "with" keywords, IPv6 and v4-mapped addresses, sanitising and
// truncating the client's text, RFC 5322 dates, and the line structure (CRLF, tab folding,
// no line over 998 bytes).
#include "smtp/received_header.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>

namespace stp {
namespace {

namespace ip = boost::asio::ip;

constexpr std::time_t kNov25_2026_10h = 1795600800;  // Wed, 25 Nov 2026 10:00:00 +0000

tls::SessionFacts tls13_verified() {
  tls::SessionFacts t;
  t.protocol = "TLSv1.3";
  t.cipher = "TLS_AES_256_GCM_SHA384";
  t.cipher_bits = 256;
  t.cipher_algorithm_bits = 256;
  t.key_exchange = "X25519";
  t.server_signature = "ECDSA (P-256)";
  t.server_digest = "SHA256";
  t.request = tls::ClientCertificateRequest::verify;
  t.peer = std::make_unique<tls::PeerCertificate>();
  t.peer->common_name = "alice";
  t.peer->issuer_common_name = "ExampleCA";
  t.verified = true;
  return t;
}

tls::SessionFacts tls12_no_request() {
  tls::SessionFacts t;
  t.protocol = "TLSv1.2";
  t.cipher = "ECDHE-RSA-AES128-GCM-SHA256";
  t.cipher_bits = 128;
  t.cipher_algorithm_bits = 128;
  return t;
}

ReceivedFields fields(const tls::SessionFacts* tls) {
  return ReceivedFields{
      .helo = "helo.example",
      .extended_helo = true,
      .authenticated = false,
      .client_name = "client.example",
      .client_address = ip::make_address("192.0.2.7"),
      .tls = tls,
      .hostname = "mx.example.org",
      .id = "4F1C2A000001",
      .now = kNov25_2026_10h,
  };
}

// Every line ends CRLF, continuation lines start with a tab, there is no bare CR or LF, and no
// line is longer than 998 bytes (RFC 5322 2.1.1).
void expect_well_formed(std::string_view header) {
  ASSERT_GE(header.size(), 2u);
  EXPECT_EQ(header.substr(header.size() - 2), "\r\n");
  EXPECT_EQ(header.substr(0, 10), "Received: ");
  std::size_t start = 0;
  bool first = true;
  while (start < header.size()) {
    const auto end = header.find("\r\n", start);
    ASSERT_NE(end, std::string_view::npos) << "unterminated line at " << start;
    const auto line = header.substr(start, end - start);
    EXPECT_LE(line.size(), 998u) << line;
    EXPECT_EQ(line.find('\r'), std::string_view::npos) << line;
    EXPECT_EQ(line.find('\n'), std::string_view::npos) << line;
    if (!first) {
      ASSERT_FALSE(line.empty());
      EXPECT_EQ(line[0], '\t') << line;
    }
    first = false;
    start = end + 2;
  }
}

TEST(ReceivedHeader, Tls13WithDetailsAndVerifiedCertificate) {
  const auto t = tls13_verified();
  const std::string header = build_received_header(fields(&t));
  EXPECT_EQ(header,
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
            "\t key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)\r\n"
            "\t(Client CN \"alice\", Issuer \"ExampleCA\" (verified OK))\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
  expect_well_formed(header);
}

TEST(ReceivedHeader, TheSniAskedForAndTheCertificateThatAnsweredAreNamed) {
  auto t = tls12_no_request();
  t.sni = "mx.example.net";
  t.server_common_name = "mx.example.net";
  auto f = fields(&t);
  const std::string sni_only = build_received_header(f);
  EXPECT_NE(sni_only.find("\t(No client certificate requested)\r\n"
                          "\t(SNI mx.example.net)\r\n"
                          "\tby mx.example.org"),
            std::string::npos)
      << sni_only;

  f.name_certificate = true;  // the proxy chose it among several
  EXPECT_NE(build_received_header(f).find(
                "\t(SNI mx.example.net, certificate CN \"mx.example.net\")\r\n\tby "),
            std::string::npos);
  t.sni.clear();
  t.server_common_name = "Partner \"MX\"\r\n";  // the operator's text, still made safe
  const std::string header = build_received_header(f);
  EXPECT_NE(header.find("\t(certificate CN \"Partner ?MX???\")\r\n\tby "), std::string::npos)
      << header;
  expect_well_formed(header);
}

TEST(ReceivedHeader, Tls12HasNoDetailsLine) {
  auto t = tls12_no_request();
  t.request = tls::ClientCertificateRequest::try_verify;
  t.peer = std::make_unique<tls::PeerCertificate>();
  t.peer->common_name = "bob";
  t.peer->issuer_common_name = "ExampleCA";
  t.verified = true;
  const std::string header = build_received_header(fields(&t));
  EXPECT_EQ(header,
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\t(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256 (128/128 bits))\r\n"
            "\t(Client CN \"bob\", Issuer \"ExampleCA\" (verified OK))\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
  expect_well_formed(header);
}

TEST(ReceivedHeader, OnlySomeDetailsPresent) {
  auto t = tls13_verified();
  t.server_signature.clear();
  t.server_digest.clear();
  t.peer.reset();
  t.request = tls::ClientCertificateRequest::none;
  t.cipher = "TLS_AES_128_GCM_SHA256";
  t.cipher_bits = 128;
  t.cipher_algorithm_bits = 128;
  EXPECT_EQ(build_received_header(fields(&t)),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits)\r\n"
            "\t key-exchange X25519)\r\n"
            "\t(No client certificate requested)\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, NoTlsWithEhloIsEsmtp) {
  const std::string header = build_received_header(fields(nullptr));
  EXPECT_EQ(header,
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTP id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
  expect_well_formed(header);
}

TEST(ReceivedHeader, NoTlsWithHeloIsSmtp) {
  auto f = fields(nullptr);
  f.extended_helo = false;
  EXPECT_EQ(build_received_header(f),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with SMTP id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, CertificateRequestedButNotPresented) {
  for (const auto request :
       {tls::ClientCertificateRequest::try_verify, tls::ClientCertificateRequest::verify}) {
    auto t = tls12_no_request();
    t.request = request;
    EXPECT_EQ(build_received_header(fields(&t)),
              "Received: from helo.example (client.example [192.0.2.7])\r\n"
              "\t(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256 (128/128 bits))\r\n"
              "\t(Client did not present a certificate)\r\n"
              "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
              "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
  }
}

TEST(ReceivedHeader, CertificateNotRequested) {
  const auto t = tls12_no_request();
  EXPECT_EQ(build_received_header(fields(&t)),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\t(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256 (128/128 bits))\r\n"
            "\t(No client certificate requested)\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, UnverifiedCertificate) {
  auto t = tls13_verified();
  t.request = tls::ClientCertificateRequest::try_verify;
  t.peer->common_name = "mallory";
  t.peer->issuer_common_name = "Mallory";
  t.verified = false;
  t.verify_error = "unable to get local issuer certificate";
  t.verify_reason = "unknown_ca";
  EXPECT_EQ(build_received_header(fields(&t)),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
            "\t key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)\r\n"
            "\t(Client CN \"mallory\", Issuer \"Mallory\" (not verified))\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, AuthenticatedOverTlsIsEsmtpsa) {
  const auto t = tls12_no_request();
  auto f = fields(&t);
  f.authenticated = true;
  EXPECT_EQ(build_received_header(f),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\t(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256 (128/128 bits))\r\n"
            "\t(No client certificate requested)\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPSA id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, AuthenticatedWithoutTlsIsEsmtpa) {
  auto f = fields(nullptr);
  f.authenticated = true;
  EXPECT_EQ(build_received_header(f),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPA id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, Ipv6ClientHasIpv6Tag) {
  auto f = fields(nullptr);
  f.client_address = ip::make_address("2001:db8::1");
  EXPECT_EQ(build_received_header(f),
            "Received: from helo.example (client.example [IPv6:2001:db8::1])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTP id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, V4MappedClientIsShownAsIpv4) {
  auto f = fields(nullptr);
  f.client_address = ip::make_address("::ffff:192.0.2.7");
  EXPECT_EQ(build_received_header(f),
            "Received: from helo.example (client.example [192.0.2.7])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTP id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, EmptyClientNameIsUnknown) {
  auto f = fields(nullptr);
  f.client_name = "";
  EXPECT_EQ(build_received_header(f),
            "Received: from helo.example (unknown [192.0.2.7])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTP id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, NoHeloUsesTheClientName) {
  auto f = fields(nullptr);
  f.helo = "";
  EXPECT_EQ(build_received_header(f).substr(0, 58),
            "Received: from client.example (client.example [192.0.2.7])");
  f.client_name = "";
  EXPECT_EQ(build_received_header(f),
            "Received: from unknown (unknown [192.0.2.7])\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTP id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
}

TEST(ReceivedHeader, HostileHeloAndCertificateNamesAreSanitised) {
  // Quote, parentheses, backslash, CR, LF, space, tab, DEL, NUL and 8-bit bytes each become '?'.
  const std::string helo = "evil(\"x\")\\\r\nX-Injected: 1\t\x7f\x80\xff";
  const std::string name = std::string("a)b(c\\d\"e\0f", 11);
  auto t = tls13_verified();
  t.peer->common_name = "\"), (verified OK))\r\nX: \xc3\xa9";
  t.peer->issuer_common_name = "CA\\\"";
  t.verified = false;
  auto f = fields(&t);
  f.helo = helo;
  f.client_name = name;
  const std::string header = build_received_header(f);
  EXPECT_EQ(header,
            "Received: from evil??x?????X-Injected:?1???? (a?b?c?d?e?f [192.0.2.7])\r\n"
            "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
            "\t key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)\r\n"
            "\t(Client CN \"??, ?verified OK????X: ??\", Issuer \"CA??\" (not verified))\r\n"
            "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
            "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
  expect_well_formed(header);
}

TEST(ReceivedHeader, LongNamesAreTruncated) {
  const std::string helo(300, 'h');
  const std::string name(300, 'n');
  auto t = tls13_verified();
  t.peer->common_name = std::string(100, 'c');
  t.peer->issuer_common_name = std::string(100, 'i');
  auto f = fields(&t);
  f.helo = helo;
  f.client_name = name;
  f.client_address = ip::make_address("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
  const std::string header = build_received_header(f);
  EXPECT_EQ(header,
            "Received: from " + std::string(255, 'h') + " (" + std::string(255, 'n') +
                " [IPv6:2001:db8:ffff:ffff:ffff:ffff:ffff:ffff])\r\n"
                "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
                "\t key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)\r\n"
                "\t(Client CN \"" +
                std::string(64, 'c') + "\", Issuer \"" + std::string(64, 'i') +
                "\" (verified OK))\r\n"
                "\tby mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;\r\n"
                "\tWed, 25 Nov 2026 10:00:00 +0000\r\n");
  expect_well_formed(header);
}

TEST(ReceivedHeader, NamesAtTheLimitsAreKept) {
  const std::string helo(255, 'h');
  auto t = tls13_verified();
  t.peer->common_name = std::string(64, 'c');
  auto f = fields(&t);
  f.helo = helo;
  const std::string header = build_received_header(f);
  EXPECT_NE(header.find("from " + helo + " ("), std::string::npos);
  EXPECT_NE(header.find("CN \"" + std::string(64, 'c') + "\""), std::string::npos);
}

TEST(ReceivedHeader, CertificateNamesWithSpacesKeepTheirSpaces) {
  auto t = tls13_verified();
  t.peer->common_name = "Alice Example";
  t.peer->issuer_common_name = "Example CA";
  const std::string header = build_received_header(fields(&t));
  EXPECT_NE(header.find("\t(Client CN \"Alice Example\", Issuer \"Example CA\" (verified OK))\r\n"),
            std::string::npos)
      << header;
}

TEST(SanitizeForHeader, ReplacesAndTruncates) {
  EXPECT_EQ(sanitize_for_header("mail.example-1.org"), "mail.example-1.org");
  EXPECT_EQ(sanitize_for_header("[192.0.2.7]"), "[192.0.2.7]");
  EXPECT_EQ(sanitize_for_header("a(b)c\"d\\e"), "a?b?c?d?e");
  EXPECT_EQ(sanitize_for_header(std::string_view("\0\x01\x1f\x7f\x80\xff", 6)), "??????");
  EXPECT_EQ(sanitize_for_header("!~"), "!~");
  EXPECT_EQ(sanitize_for_header("a b"), "a?b");
  EXPECT_EQ(sanitize_for_header("a b\"", 255, Spaces::keep), "a b?");
  EXPECT_EQ(sanitize_for_header(""), "");
  EXPECT_EQ(sanitize_for_header("abcdef", 3), "abc");
  EXPECT_EQ(sanitize_for_header(std::string(256, 'x')), std::string(255, 'x'));
  EXPECT_EQ(sanitize_for_header(std::string(255, 'x')), std::string(255, 'x'));
}

TEST(WithProtocol, Rfc3848Table) {
  // (extended_helo, tls, authenticated)
  EXPECT_EQ(with_protocol(false, false, false), "SMTP");
  EXPECT_EQ(with_protocol(false, false, true), "SMTP");
  EXPECT_EQ(with_protocol(false, true, false), "SMTPS");
  EXPECT_EQ(with_protocol(false, true, true), "SMTPS");
  EXPECT_EQ(with_protocol(true, false, false), "ESMTP");
  EXPECT_EQ(with_protocol(true, false, true), "ESMTPA");
  EXPECT_EQ(with_protocol(true, true, false), "ESMTPS");
  EXPECT_EQ(with_protocol(true, true, true), "ESMTPSA");
}

TEST(Rfc5322Date, FixedTimes) {
  EXPECT_EQ(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
  EXPECT_EQ(rfc5322_date(kNov25_2026_10h), "Wed, 25 Nov 2026 10:00:00 +0000");
  EXPECT_EQ(rfc5322_date(1772323199), "Sat, 28 Feb 2026 23:59:59 +0000");
  EXPECT_EQ(rfc5322_date(1772355907), "Sun, 01 Mar 2026 09:05:07 +0000");
  EXPECT_EQ(rfc5322_date(951782400), "Tue, 29 Feb 2000 00:00:00 +0000");
}

TEST(Rfc5322Date, IndependentOfTheLocalTimeZone) {
  const char* old = std::getenv("TZ");
  const std::string saved = old ? old : "";
  setenv("TZ", "America/New_York", 1);
  tzset();
  const std::string date = rfc5322_date(0);
  if (old) {
    setenv("TZ", saved.c_str(), 1);
  } else {
    unsetenv("TZ");
  }
  tzset();
  EXPECT_EQ(date, "Thu, 01 Jan 1970 00:00:00 +0000");
}

TEST(StartsWithContinuation, SpaceOrTabFirst) {
  EXPECT_EQ(starts_with_continuation(" indented\r\n", false), true);
  EXPECT_EQ(starts_with_continuation("\tx", false), true);
  EXPECT_EQ(starts_with_continuation("Subject: x\r\n", false), false);
  EXPECT_EQ(starts_with_continuation("\r\nbody", false), false);
  EXPECT_EQ(starts_with_continuation("", false), std::nullopt);
}

TEST(StartsWithContinuation, DotStuffedContentLosesItsLeadingDot) {
  EXPECT_EQ(starts_with_continuation(". x\r\n", true), true);    // the MTA reads " x"
  EXPECT_EQ(starts_with_continuation(". x\r\n", false), false);  // BDAT: no stuffing
  EXPECT_EQ(starts_with_continuation("..x", true), false);
  EXPECT_EQ(starts_with_continuation(".\r\n", true), false);  // an empty message
  EXPECT_EQ(starts_with_continuation(".", true), std::nullopt);
  EXPECT_EQ(starts_with_continuation(" ", true), true);
}

}  // namespace
}  // namespace stp
