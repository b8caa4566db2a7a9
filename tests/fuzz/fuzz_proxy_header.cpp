// Fuzzes the PROXY protocol code (smtp/proxy_protocol.hpp): decode() on any bytes a trusted
// load balancer's connection may start with, and encode_v2() followed by decode() on any
// header the proxy may send the MTA.
//
// Input: if byte 0 is 0xEE, the rest describes a V2Header for the round trip (read with
// libFuzzer's FuzzedDataProvider: addresses, ports, which TLVs, their strings, and a repeat
// count that makes a string long enough to overflow a 16-bit length); otherwise the whole
// input is what the balancer sent.
//
// Checks, decode:
// - the result equals a second, independent reading of HAProxy's proxy-protocol.txt (below):
//   v1 "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n" or "PROXY UNKNOWN ...\r\n" within
//   107 bytes, addresses only of the family's characters (no NUL, no scope id), ports without
//   leading zeros; v2 signature, version 2, LOCAL or PROXY, TCP over IPv4/IPv6 with the
//   address block inside the length, UNSPEC read as local; everything else invalid;
// - need_more only while the input could still become a header: every proper prefix of a
//   complete header needs more, a prefix of an invalid input is never complete, and bytes after
//   a complete header change nothing;
// - a complete result has 0 < length <= input size, and a local one no addresses.
// Checks, round trip:
// - encode_v2's header is at most 536 bytes (what the spec advises and Postfix accepts), and
//   decodes to complete, of exactly its size, with the endpoints given (v4-mapped read back as
//   IPv4);
// - its TLVs tile the payload after the address block, each length exact; the AUTHORITY and
//   SSL TLVs and the SSL sub-TLVs carry exactly the strings given, or are left out when a
//   string is too long for the 536-byte bound (never cut); the SSL client flags and verify
//   field say what SslInfo says.
#include "fuzz_util.hpp"
#include "smtp/proxy_protocol.hpp"

#include <fuzzer/FuzzedDataProvider.h>

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace {

namespace ip = boost::asio::ip;
namespace pp = stp::proxy_protocol;
using tcp = ip::tcp;
using Status = pp::Decoded::Status;

constexpr std::size_t kMaxV1 = 107;
constexpr std::size_t kMaxHeader = 536;
const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

std::string status_text(const pp::Decoded& d) {
  std::string s = d.status == Status::need_more  ? "need_more"
                  : d.status == Status::complete ? "complete"
                                                 : "invalid";
  s += " length=" + std::to_string(d.length) + (d.local ? " local" : "");
  if (d.status == Status::complete && !d.local) {
    s += " " + d.source.address().to_string() + ":" + std::to_string(d.source.port()) + " " +
         d.destination.address().to_string() + ":" + std::to_string(d.destination.port());
  }
  return s;
}

bool same(const pp::Decoded& a, const pp::Decoded& b) {
  if (a.status != b.status) return false;
  if (a.status != Status::complete) return true;
  if (a.length != b.length || a.local != b.local) return false;
  return a.local || (a.source == b.source && a.destination == b.destination);
}

pp::Decoded make(Status status, std::size_t length = 0, bool local = false) {
  pp::Decoded d;
  d.status = status;
  d.length = length;
  d.local = local;
  return d;
}

std::optional<ip::address> v1_address(std::string_view text, bool v4) {
  if (text.empty()) return std::nullopt;
  for (const char c : text) {
    const bool digit = c >= '0' && c <= '9';
    const bool hex = (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!(digit || c == '.' || (!v4 && (hex || c == ':')))) return std::nullopt;
  }
  boost::system::error_code error;
  const ip::address a = ip::make_address(std::string(text), error);
  if (error || a.is_v4() != v4) return std::nullopt;
  return a;
}

std::optional<std::uint16_t> v1_port(std::string_view text) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return std::nullopt;
  unsigned value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

pp::Decoded reference_v1(std::string_view input) {
  const std::size_t crlf = input.find("\r\n");
  if (crlf == std::string_view::npos) {
    return make(input.size() >= kMaxV1 ? Status::invalid : Status::need_more);
  }
  if (crlf + 2 > kMaxV1) return make(Status::invalid);
  const std::string_view line = input.substr(0, crlf);
  const auto words = stp::fuzz::split(line, ' ');
  // "PROXY UNKNOWN": whatever follows (after a space) is to be ignored.
  if (words.size() >= 2 && words[0] == "PROXY" && words[1] == "UNKNOWN") {
    return make(Status::complete, crlf + 2, true);
  }
  if (words.size() != 6 || words[0] != "PROXY" || (words[1] != "TCP4" && words[1] != "TCP6")) {
    return make(Status::invalid);
  }
  const bool v4 = words[1] == "TCP4";
  const auto source = v1_address(words[2], v4);
  const auto destination = v1_address(words[3], v4);
  const auto source_port = v1_port(words[4]);
  const auto destination_port = v1_port(words[5]);
  if (!source || !destination || !source_port || !destination_port) return make(Status::invalid);
  pp::Decoded d = make(Status::complete, crlf + 2);
  d.source = {*source, *source_port};
  d.destination = {*destination, *destination_port};
  return d;
}

ip::address unmap(const ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return ip::make_address_v4(ip::v4_mapped, a.to_v6());
  return a;
}

unsigned byte(std::string_view s, std::size_t i) {
  return static_cast<unsigned char>(s[i]);
}

unsigned be16(std::string_view s, std::size_t i) {
  return byte(s, i) << 8 | byte(s, i + 1);
}

pp::Decoded reference_v2(std::string_view input) {
  if (input.size() < 16) return make(Status::need_more);
  const unsigned ver_cmd = byte(input, 12);
  const unsigned fam = byte(input, 13);
  const std::size_t length = be16(input, 14);
  if (ver_cmd != 0x20 && ver_cmd != 0x21) return make(Status::invalid);
  if (input.size() < 16 + length) return make(Status::need_more);
  if (ver_cmd == 0x20) return make(Status::complete, 16 + length, true);  // LOCAL
  if (fam >> 4 == 0) return make(Status::complete, 16 + length, true);    // UNSPEC
  pp::Decoded d = make(Status::complete, 16 + length);
  if (fam == 0x11 && length >= 12) {
    ip::address_v4::bytes_type s, t;
    for (std::size_t i = 0; i < 4; ++i) {
      s[i] = static_cast<unsigned char>(input[16 + i]);
      t[i] = static_cast<unsigned char>(input[20 + i]);
    }
    d.source = {ip::address_v4(s), static_cast<std::uint16_t>(be16(input, 24))};
    d.destination = {ip::address_v4(t), static_cast<std::uint16_t>(be16(input, 26))};
    return d;
  }
  if (fam == 0x21 && length >= 36) {
    ip::address_v6::bytes_type s, t;
    for (std::size_t i = 0; i < 16; ++i) {
      s[i] = static_cast<unsigned char>(input[16 + i]);
      t[i] = static_cast<unsigned char>(input[32 + i]);
    }
    d.source = {unmap(ip::address_v6(s)), static_cast<std::uint16_t>(be16(input, 48))};
    d.destination = {unmap(ip::address_v6(t)), static_cast<std::uint16_t>(be16(input, 50))};
    return d;
  }
  return make(Status::invalid);
}

pp::Decoded reference(std::string_view input) {
  const std::size_t n = std::min(input.size(), kSignature.size());
  if (input.substr(0, n) == std::string_view(kSignature).substr(0, n)) {
    return n < kSignature.size() ? make(Status::need_more) : reference_v2(input);
  }
  constexpr std::string_view kV1 = "PROXY ";
  const std::size_t m = std::min(input.size(), kV1.size());
  if (input.substr(0, m) != kV1.substr(0, m)) return make(Status::invalid);
  return m < kV1.size() ? make(Status::need_more) : reference_v1(input);
}

void check_decode(std::string_view input) {
  const pp::Decoded d = pp::decode(input);
  const pp::Decoded expected = reference(input);
  FUZZ_CHECK(same(d, expected),
             status_text(d) + " expected " + status_text(expected) + " for " + std::string(input));
  if (d.status != Status::complete) {
    FUZZ_CHECK(d.length == 0);
  } else {
    FUZZ_CHECK(d.length > 0 && d.length <= input.size());
  }

  // Prefixes: a complete header is need_more up to its last byte; an invalid input is never
  // complete on a prefix (it may need more before it is seen to be wrong, or be invalid).
  const std::size_t end = d.status == Status::complete ? d.length : input.size();
  const std::size_t step = end > 256 ? end / 64 : 1;
  for (std::size_t n = 0; n < end; n += step) {
    const pp::Decoded p = pp::decode(input.substr(0, n));
    if (d.status == Status::complete) {
      FUZZ_CHECK(p.status == Status::need_more, std::to_string(n) + ": " + status_text(p));
    } else {
      FUZZ_CHECK(p.status != Status::complete, std::to_string(n) + ": " + status_text(p));
    }
    if (d.status == Status::need_more) FUZZ_CHECK(p.status == Status::need_more);
  }
  if (d.status == Status::complete) {
    FUZZ_CHECK(same(pp::decode(input.substr(0, d.length)), d));
    FUZZ_CHECK(same(pp::decode(std::string(input) + "EHLO x\r\n"), d));
  }
}

// ---- round trip ------------------------------------------------------------------------------

ip::address consume_address(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 2)) {
    case 0: {
      ip::address_v4::bytes_type b;
      for (auto& x : b) x = in.ConsumeIntegral<unsigned char>();
      return ip::address_v4(b);
    }
    case 1: {
      ip::address_v6::bytes_type b;
      for (auto& x : b) x = in.ConsumeIntegral<unsigned char>();
      return ip::address_v6(b);
    }
    default: {  // v4-mapped
      ip::address_v4::bytes_type b;
      for (auto& x : b) x = in.ConsumeIntegral<unsigned char>();
      return ip::make_address_v6(ip::v4_mapped, ip::address_v4(b));
    }
  }
}

std::string consume_string(FuzzedDataProvider& in) {
  std::string s = in.ConsumeRandomLengthString(300);
  const unsigned repeat =
      in.ConsumeIntegralInRange(0, 3) == 3 ? in.ConsumeIntegral<std::uint8_t>() : 1;
  std::string out;
  for (unsigned i = 0; i < repeat && out.size() < 70000; ++i) out += s;
  return out;
}

// Type -> values, in order; nullopt if the TLVs do not tile `data` exactly.
std::optional<std::multimap<unsigned, std::string>> tlvs(std::string_view data) {
  std::multimap<unsigned, std::string> out;
  std::size_t i = 0;
  while (i < data.size()) {
    if (data.size() - i < 3) return std::nullopt;
    const unsigned type = byte(data, i);
    const std::size_t length = be16(data, i + 1);
    if (data.size() - i - 3 < length) return std::nullopt;
    out.emplace(type, std::string(data.substr(i + 3, length)));
    i += 3 + length;
  }
  return out;
}

// The value of a TLV that appears at most once; empty when absent.
std::optional<std::string> single(const std::multimap<unsigned, std::string>& map, unsigned type,
                                  std::string_view context) {
  FUZZ_CHECK(map.count(type) <= 1, context);
  const auto it = map.find(type);
  if (it == map.end()) return std::nullopt;
  return it->second;
}

void check_round_trip(FuzzedDataProvider& in) {
  pp::V2Header h;
  h.source = {consume_address(in), in.ConsumeIntegral<std::uint16_t>()};
  h.destination = {consume_address(in), in.ConsumeIntegral<std::uint16_t>()};
  if (in.ConsumeBool()) h.authority = consume_string(in);
  if (in.ConsumeBool()) {
    pp::SslInfo ssl;
    ssl.certificate_presented = in.ConsumeBool();
    ssl.certificate_verified = in.ConsumeBool();
    ssl.version = consume_string(in);
    ssl.cipher = consume_string(in);
    ssl.sig_alg = consume_string(in);
    ssl.key_alg = consume_string(in);
    ssl.client_cn = consume_string(in);
    h.ssl = std::move(ssl);
  }

  // Any budget (--proxy-v2-max-header) is kept, and the header stays readable.
  const auto budget = in.ConsumeIntegralInRange<std::size_t>(0, 600);
  const std::string small = pp::encode_v2(h, budget);
  FUZZ_CHECK(small.size() <= std::clamp(budget, pp::kMinHeaderBudget, kMaxHeader), small);
  FUZZ_CHECK(pp::decode(small).status == Status::complete, small);

  const std::string header = pp::encode_v2(h);
  const std::string& shown = header;  // fail() escapes it
  FUZZ_CHECK(header.size() <= kMaxHeader, shown);
  const pp::Decoded d = pp::decode(header);
  FUZZ_CHECK(d.status == Status::complete && d.length == header.size() && !d.local,
             status_text(d) + " " + shown);
  FUZZ_CHECK(d.source == tcp::endpoint(unmap(h.source.address()), h.source.port()), shown);
  FUZZ_CHECK(d.destination == tcp::endpoint(unmap(h.destination.address()), h.destination.port()),
             shown);
  FUZZ_CHECK(header.substr(0, 12) == kSignature && byte(header, 12) == 0x21, shown);
  const bool v4 = byte(header, 13) == 0x11;
  FUZZ_CHECK(v4 || byte(header, 13) == 0x21, shown);
  FUZZ_CHECK(v4 == (unmap(h.source.address()).is_v4() && unmap(h.destination.address()).is_v4()),
             shown);

  const auto top = tlvs(std::string_view(header).substr(16 + (v4 ? 12 : 36)));
  FUZZ_CHECK(top.has_value(), shown);
  for (const auto& [type, value] : *top) {
    FUZZ_CHECK(type == pp::kTypeAuthority || type == pp::kTypeSsl, shown);
  }
  const auto authority = single(*top, pp::kTypeAuthority, shown);
  if (authority) FUZZ_CHECK(!authority->empty(), shown);
  if (!h.authority.empty() && h.authority.size() <= 253) FUZZ_CHECK(authority.has_value(), shown);
  if (authority) FUZZ_CHECK(*authority == h.authority, shown);

  const auto ssl_value = single(*top, pp::kTypeSsl, shown);
  FUZZ_CHECK(ssl_value.has_value() == h.ssl.has_value(), shown);
  if (!h.ssl) return;
  const auto& ssl = *h.ssl;
  FUZZ_CHECK(ssl_value->size() >= 5, shown);
  const unsigned client = byte(*ssl_value, 0);
  const std::uint32_t verify =
      static_cast<std::uint32_t>(be16(*ssl_value, 1)) << 16 | be16(*ssl_value, 3);
  const unsigned cert_flags = pp::kClientCertConn | pp::kClientCertSess;
  FUZZ_CHECK(client == (pp::kClientSsl | (ssl.certificate_presented ? cert_flags : 0u)), shown);
  FUZZ_CHECK((verify == 0) == (ssl.certificate_presented && ssl.certificate_verified), shown);
  const auto sub = tlvs(std::string_view(*ssl_value).substr(5));
  FUZZ_CHECK(sub.has_value(), shown);
  for (const auto& [type, value] : *sub) {
    FUZZ_CHECK(type >= pp::kSubtypeSslVersion && type <= pp::kSubtypeSslKeyAlg, shown);
  }
  const auto version = single(*sub, pp::kSubtypeSslVersion, shown);
  const auto cn = single(*sub, pp::kSubtypeSslCn, shown);
  const auto cipher = single(*sub, pp::kSubtypeSslCipher, shown);
  const auto sig_alg = single(*sub, pp::kSubtypeSslSigAlg, shown);
  const auto key_alg = single(*sub, pp::kSubtypeSslKeyAlg, shown);
  if (cn) FUZZ_CHECK(ssl.certificate_presented && !cn->empty() && *cn == ssl.client_cn, shown);
  if (ssl.certificate_presented && !ssl.client_cn.empty() && ssl.client_cn.size() <= 64) {
    FUZZ_CHECK(cn.has_value(), shown);
  }
  if (version) FUZZ_CHECK(*version == ssl.version, shown);
  if (ssl.version.size() <= 16) FUZZ_CHECK(version.has_value(), shown);
  if (cipher) FUZZ_CHECK(*cipher == ssl.cipher, shown);
  if (ssl.cipher.size() <= 40) FUZZ_CHECK(cipher.has_value(), shown);
  if (sig_alg) FUZZ_CHECK(!sig_alg->empty() && *sig_alg == ssl.sig_alg, shown);
  if (!ssl.sig_alg.empty() && ssl.sig_alg.size() <= 40) FUZZ_CHECK(sig_alg.has_value(), shown);
  if (key_alg) FUZZ_CHECK(!key_alg->empty() && *key_alg == ssl.key_alg, shown);
  if (!ssl.key_alg.empty() && ssl.key_alg.size() <= 40) FUZZ_CHECK(key_alg.has_value(), shown);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // An empty view may have no data pointer at all.
  FUZZ_CHECK(pp::decode(std::string_view()).status == Status::need_more);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0 && data[0] == 0xEE) {
    FuzzedDataProvider in(data + 1, size - 1);
    check_round_trip(in);
    return 0;
  }
  check_decode(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
