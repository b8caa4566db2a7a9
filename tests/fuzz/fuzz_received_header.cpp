// Fuzzes build_received_header (smtp/received_header.hpp) with hostile client text: the HELO
// name, the reverse name, and the client certificate's subject and issuer CNs are any bytes;
// the address is any IPv4/IPv6/v4-mapped address; the TLS facts that OpenSSL supplies are
// realistic names, the hostname a DNS name (as --hostname is validated), the id hexadecimal.
//
// Input: read with libFuzzer's FuzzedDataProvider (flags, address bytes, choices, then the
// strings; the issuer CN is the rest).
//
// Checks:
// - the result is one RFC 5322 header field: "Received: " first, every line ends in CRLF,
//   no CR or LF anywhere else, every line after the first is a fold (starts with a tab and has
//   more than white space), no line over 998 bytes, only printable ASCII and tab;
// - no client text can open or close a comment or a quoted string: parentheses balance and
//   never close below zero, quotes pair up, and unfolded it reads
//   "Received: from <helo> (<name> [<address>])" with <helo> and <name> exactly
//   sanitize_for_header of what was given (the name "unknown" when absent, the HELO the name
//   when absent) and <address> the IPv4 text or "IPv6:" and the IPv6 text;
// - sanitize_for_header itself: at most max_length bytes, one output byte per input byte,
//   printable ASCII without ( ) \ " (and without space unless kept).
#include "fuzz_util.hpp"
#include "smtp/received_header.hpp"

#include <fuzzer/FuzzedDataProvider.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

namespace {

namespace ip = boost::asio::ip;

constexpr std::array<const char*, 3> kProtocols = {"TLSv1.2", "TLSv1.3", "TLSv1.1"};
constexpr std::array<const char*, 4> kCiphers = {
    "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", ""};
constexpr std::array<const char*, 4> kKeyExchanges = {"X25519", "P-256", "", "ffdhe2048"};
constexpr std::array<const char*, 4> kSignatures = {"ECDSA (P-256)", "RSA-PSS (2048 bits)", "",
                                                    "ED25519"};
constexpr std::array<const char*, 3> kDigests = {"SHA256", "SHA384", ""};

template <class Array>
std::string pick(FuzzedDataProvider& in, const Array& values) {
  return values[in.ConsumeIntegralInRange<std::size_t>(0, values.size() - 1)];
}

ip::address consume_address(FuzzedDataProvider& in) {
  const int kind = in.ConsumeIntegralInRange(0, 2);
  if (kind == 1) {
    ip::address_v6::bytes_type b;
    for (auto& x : b) x = in.ConsumeIntegral<unsigned char>();
    return ip::address_v6(b);
  }
  ip::address_v4::bytes_type b;
  for (auto& x : b) x = in.ConsumeIntegral<unsigned char>();
  if (kind == 2) return ip::make_address_v6(ip::v4_mapped, ip::address_v4(b));
  return ip::address_v4(b);
}

std::string dns_name(FuzzedDataProvider& in) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789-.";
  std::string name = "mx";
  const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(0, 60);
  for (std::size_t i = 0; i < n; ++i) {
    name += kChars[in.ConsumeIntegralInRange<std::size_t>(0, sizeof kChars - 2)];
  }
  return name;
}

void check_sanitized(std::string_view text, std::size_t max, stp::Spaces spaces) {
  const std::string out = stp::sanitize_for_header(text, max, spaces);
  FUZZ_CHECK(out.size() == std::min(text.size(), max), out);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const char c = out[i];
    FUZZ_CHECK(c > 0x20 || (c == ' ' && spaces == stp::Spaces::keep), out);
    FUZZ_CHECK(c < 0x7f && c != '(' && c != ')' && c != '\\' && c != '"', out);
    if (c != '?') FUZZ_CHECK(c == text[i], out);
  }
}

std::string expected_address(ip::address a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) a = ip::make_address_v4(ip::v4_mapped, a.to_v6());
  return a.is_v6() ? "IPv6:" + a.to_string() : a.to_string();
}

void check_header(const std::string& h, const std::string& first_line_expected) {
  FUZZ_CHECK(h.starts_with("Received: from "), h);
  FUZZ_CHECK(h.size() >= 2 && h.ends_with("\r\n"), h);
  std::size_t start = 0;
  bool first = true;
  int depth = 0;
  std::size_t quotes = 0;
  while (start < h.size()) {
    const std::size_t end = h.find("\r\n", start);
    FUZZ_CHECK(end != std::string::npos, h);
    const std::string_view line(h.data() + start, end - start);
    FUZZ_CHECK(line.size() <= 998, h);
    if (!first) {
      FUZZ_CHECK(line.starts_with("\t"), h);
      FUZZ_CHECK(line.find_first_not_of(" \t") != std::string_view::npos, h);
    }
    for (const char c : line) {
      FUZZ_CHECK(c == '\t' || (c >= 0x20 && c < 0x7f), h);
      if (c == '(' && quotes % 2 == 0) ++depth;
      if (c == ')' && quotes % 2 == 0) FUZZ_CHECK(--depth >= 0, h);
      if (c == '"') ++quotes;
    }
    first = false;
    start = end + 2;
  }
  FUZZ_CHECK(depth == 0 && quotes % 2 == 0, h);
  // Unfolded, the first part is exactly what the fields say.
  const std::string_view head(h.data(), h.find("\r\n"));
  FUZZ_CHECK(head == first_line_expected, h + " expected " + first_line_expected);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const bool extended = in.ConsumeBool();
  const bool authenticated = in.ConsumeBool();
  const bool has_name = in.ConsumeBool();
  const bool encrypted = in.ConsumeBool();
  const int peer = in.ConsumeIntegralInRange(0, 2);  // none requested, none sent, certificate
  const bool verified = in.ConsumeBool();
  const ip::address address = consume_address(in);
  const auto now = static_cast<std::time_t>(in.ConsumeIntegralInRange<std::int64_t>(0, 1LL << 40));
  const std::string hostname = dns_name(in);
  const std::string protocol = pick(in, kProtocols);
  const std::string cipher = pick(in, kCiphers);
  const std::string key_exchange = pick(in, kKeyExchanges);
  const std::string signature = pick(in, kSignatures);
  const std::string digest = pick(in, kDigests);
  const std::size_t issuer_max = in.ConsumeIntegralInRange<std::size_t>(0, 300);
  const std::string helo = in.ConsumeRandomLengthString(600);
  const std::string name = has_name ? in.ConsumeRandomLengthString(600) : std::string();
  const std::string cn = in.ConsumeRandomLengthString(200);
  const std::string issuer = in.ConsumeRemainingBytesAsString();

  stp::tls::SessionFacts facts;
  if (encrypted) {
    facts.protocol = protocol;
    facts.cipher = cipher;
    facts.cipher_bits = 256;
    facts.cipher_algorithm_bits = 256;
    facts.key_exchange = key_exchange;
    facts.server_signature = signature;
    facts.server_digest = digest;
    facts.verified = verified;
    if (peer == 2) {
      facts.peer = std::make_unique<stp::tls::PeerCertificate>();
      facts.peer->common_name = cn;
      facts.peer->issuer_common_name = issuer;
    }
    facts.request = peer == 0 ? stp::tls::ClientCertificateRequest::none
                              : stp::tls::ClientCertificateRequest::try_verify;
  }

  const std::string header = stp::build_received_header({
      .helo = helo,
      .extended_helo = extended,
      .authenticated = authenticated,
      .client_name = name,
      .client_address = address,
      .tls = encrypted ? &facts : nullptr,
      .hostname = hostname,
      .id = "4F1C2A000001",
      .now = now,
  });

  const std::string shown_name = name.empty() ? "unknown" : stp::sanitize_for_header(name);
  const std::string shown_helo = helo.empty() ? shown_name : stp::sanitize_for_header(helo);
  check_header(header, "Received: from " + shown_helo + " (" + shown_name + " [" +
                           expected_address(address) + "])");
  if (encrypted && peer == 2) {
    const std::string cn_part =
        "\t(Client CN \"" + stp::sanitize_for_header(cn, 64, stp::Spaces::keep) + "\", Issuer \"" +
        stp::sanitize_for_header(issuer, 64, stp::Spaces::keep) + "\" (" +
        (verified ? "verified OK" : "not verified") + "))\r\n";
    FUZZ_CHECK(header.find(cn_part) != std::string::npos, header);
  }
  FUZZ_CHECK(
      header.find(" (smtp-tls-proxy) with " +
                  std::string(stp::with_protocol(extended, encrypted, authenticated)) +
                  " id 4F1C2A000001;\r\n\t" + stp::rfc5322_date(now) + "\r\n") != std::string::npos,
      header);

  check_sanitized(helo, 255, stp::Spaces::replace);
  check_sanitized(cn, 64, stp::Spaces::keep);
  check_sanitized(issuer, issuer_max, stp::Spaces::keep);
  return 0;
}
