// PROXY protocol encoding and decoding; see proxy_protocol.hpp.
#include "smtp/proxy_protocol.hpp"

#include "smtp/address.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>

namespace stp::proxy_protocol {
namespace asio = boost::asio;

namespace {

constexpr std::array<unsigned char, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr std::size_t kV1MaxLength = 107;  // the spec's bound, CRLF included
constexpr std::size_t kV2MaxPayload = 65535;

// The longest value sent in each TLV. All of them together fit in 536 bytes, the bound the
// spec advises and Postfix enforces (HAPROXY_HEADER_MAX_LEN), and stay far from the 16-bit
// length fields: a longer value (a hostile client certificate's CN) is left out, never cut.
// encode_v2's budget may leave out more.
constexpr std::size_t kMaxAuthority = 253;  // a DNS name
constexpr std::size_t kMaxClientCn = 64;    // X.509's upper bound for a common name
constexpr std::size_t kMaxVersion = 16;     // "TLSv1.3"
constexpr std::size_t kMaxCipher = 40;      // OpenSSL's names, e.g. "TLS_AES_256_GCM_SHA384"
constexpr std::size_t kMaxAlgorithm = 40;   // e.g. "ecdsa-with-SHA256", "RSA4096"
static_assert(16 + 36 + (3 + kMaxAuthority) + (3 + 5) + (3 + kMaxVersion) + (3 + kMaxClientCn) +
                  (3 + kMaxCipher) + 2 * (3 + kMaxAlgorithm) <=
              kPostfixMaxHeader);

void put16(std::string& out, std::size_t value) {
  out += static_cast<char>((value >> 8) & 0xff);
  out += static_cast<char>(value & 0xff);
}

void put_tlv(std::string& out, std::uint8_t type, std::string_view value) {
  out += static_cast<char>(type);
  put16(out, value.size());
  out += value;
}

asio::ip::address_v6 as_v6(const asio::ip::address& a) {
  return a.is_v6() ? a.to_v6() : asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4());
}

std::uint16_t get16(const unsigned char* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

Decoded invalid() {
  Decoded d;
  d.status = Decoded::Status::invalid;
  return d;
}

Decoded decode_v1(std::string_view input) {
  const auto crlf = input.find("\r\n");
  if (crlf == std::string_view::npos) {
    return input.size() >= kV1MaxLength ? invalid() : Decoded{};
  }
  if (crlf + 2 > kV1MaxLength) return invalid();
  std::string_view line = input.substr(0, crlf);
  Decoded d;
  d.status = Decoded::Status::complete;
  d.length = crlf + 2;
  // "PROXY UNKNOWN": the spec says to ignore whatever follows, however many words.
  if (line == "PROXY UNKNOWN" || line.starts_with("PROXY UNKNOWN ")) {
    d.local = true;
    return d;
  }
  // Otherwise exactly six words, one space apart (an empty word is a stray space).
  std::array<std::string_view, 6> words;
  std::size_t count = 0;
  for (;;) {
    const auto space = line.find(' ');
    if (count == words.size()) return invalid();
    words[count++] = line.substr(0, space);
    if (space == std::string_view::npos) break;
    line.remove_prefix(space + 1);
  }
  if (count != 6 || words[0] != "PROXY" || (words[1] != "TCP4" && words[1] != "TCP6")) {
    return invalid();
  }
  // make_address() reads a C string and takes scope ids: allow only the address's own
  // characters, so "192.0.2.7\0junk" or "fe80::1%eth0" cannot pass.
  for (const auto word : {words[2], words[3]}) {
    if (word.find_first_not_of("0123456789abcdefABCDEF.:") != std::string_view::npos) {
      return invalid();
    }
  }
  boost::system::error_code ec;
  const auto source = asio::ip::make_address(std::string(words[2]), ec);
  if (ec) return invalid();
  const auto destination = asio::ip::make_address(std::string(words[3]), ec);
  if (ec) return invalid();
  if (source.is_v4() != (words[1] == "TCP4") || destination.is_v4() != (words[1] == "TCP4")) {
    return invalid();
  }
  auto port = [](std::string_view text) -> std::optional<std::uint16_t> {
    unsigned value = 0;
    if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return {};
    const auto [ptr, err] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (err != std::errc{} || ptr != text.data() + text.size() || value > 65535) return {};
    return static_cast<std::uint16_t>(value);
  };
  const auto source_port = port(words[4]);
  const auto destination_port = port(words[5]);
  if (!source_port || !destination_port) return invalid();
  d.source = {source, *source_port};
  d.destination = {destination, *destination_port};
  return d;
}

Decoded decode_v2(std::string_view input) {
  if (input.size() < 16) return {};
  const auto* p = reinterpret_cast<const unsigned char*>(input.data());
  const unsigned version = p[12] >> 4;
  const unsigned command = p[12] & 0x0f;
  const unsigned family = p[13] >> 4;
  const unsigned transport = p[13] & 0x0f;
  const std::size_t payload = get16(p + 14);
  if (version != 2 || command > 1 || payload > kV2MaxPayload) return invalid();
  if (input.size() < 16 + payload) return {};
  Decoded d;
  d.status = Decoded::Status::complete;
  d.length = 16 + payload;
  if (command == 0) {  // LOCAL: a health check from the balancer itself
    d.local = true;
    return d;
  }
  const unsigned char* a = p + 16;
  if (family == 1 && transport == 1) {
    if (payload < 12) return invalid();
    asio::ip::address_v4::bytes_type src, dst;
    std::memcpy(src.data(), a, 4);
    std::memcpy(dst.data(), a + 4, 4);
    d.source = {asio::ip::make_address_v4(src), get16(a + 8)};
    d.destination = {asio::ip::make_address_v4(dst), get16(a + 10)};
  } else if (family == 2 && transport == 1) {
    if (payload < 36) return invalid();
    asio::ip::address_v6::bytes_type src, dst;
    std::memcpy(src.data(), a, 16);
    std::memcpy(dst.data(), a + 16, 16);
    d.source = {unmapped(asio::ip::make_address_v6(src)), get16(a + 32)};
    d.destination = {unmapped(asio::ip::make_address_v6(dst)), get16(a + 34)};
  } else if (family == 0) {  // UNSPEC: the spec says to use the connection's own addresses
    d.local = true;
  } else {
    return invalid();  // UNIX sockets and UDP have no meaning for SMTP
  }
  return d;
}

}  // namespace

std::string encode_v2(const V2Header& header, std::size_t max_length) {
  const auto source = unmapped(header.source.address());
  const auto destination = unmapped(header.destination.address());
  const bool v4 = source.is_v4() && destination.is_v4();

  std::string addresses;
  if (v4) {
    const auto s = source.to_v4().to_bytes();
    const auto d = destination.to_v4().to_bytes();
    addresses.append(reinterpret_cast<const char*>(s.data()), s.size());
    addresses.append(reinterpret_cast<const char*>(d.data()), d.size());
  } else {
    const auto s = as_v6(source).to_bytes();
    const auto d = as_v6(destination).to_bytes();
    addresses.append(reinterpret_cast<const char*>(s.data()), s.size());
    addresses.append(reinterpret_cast<const char*>(d.data()), d.size());
  }
  put16(addresses, header.source.port());
  put16(addresses, header.destination.port());

  // What is left of the budget after the fixed part and the addresses; each TLV takes
  // 3 bytes of type and length besides its value.
  const std::size_t budget = std::clamp(max_length, kMinHeaderBudget, kPostfixMaxHeader);
  std::size_t room = budget - 16 - addresses.size();
  auto wanted = [](std::string_view value, std::size_t limit) {
    return !value.empty() && value.size() <= limit;
  };
  auto take = [&room](std::string_view value) {
    if (3 + value.size() > room) return false;
    room -= 3 + value.size();
    return true;
  };

  std::string ssl_tlv;
  std::string authority;
  if (header.ssl) {
    const auto& ssl = *header.ssl;
    std::uint8_t client = kClientSsl;
    // CERT_CONN: sent on this connection; CERT_SESS: belongs to the session (resumed or not).
    if (ssl.certificate_presented) client |= kClientCertSess | (ssl.resumed ? 0 : kClientCertConn);
    ssl_tlv += static_cast<char>(client);
    // verify: zero only when a certificate was presented and verified.
    const std::uint32_t verify = ssl.certificate_presented && ssl.certificate_verified ? 0 : 1;
    for (int shift = 24; shift >= 0; shift -= 8)
      ssl_tlv += static_cast<char>((verify >> shift) & 0xff);
    room -= 3 + ssl_tlv.size();  // kMinHeaderBudget holds it
    // Chosen in order of value to a receiver, written in the order of their type numbers.
    auto fits = [&](std::string_view value, std::size_t limit) {
      return wanted(value, limit) && take(value);
    };
    // VERSION and CIPHER go even when empty, as the spec has them on every TLS session.
    const bool version = ssl.version.size() <= kMaxVersion && take(ssl.version);
    const bool cipher = ssl.cipher.size() <= kMaxCipher && take(ssl.cipher);
    const bool cn = ssl.certificate_presented && fits(ssl.client_cn, kMaxClientCn);
    if (fits(header.authority, kMaxAuthority)) {
      put_tlv(authority, kTypeAuthority, header.authority);
    }
    const bool sig_alg = fits(ssl.sig_alg, kMaxAlgorithm);
    const bool key_alg = fits(ssl.key_alg, kMaxAlgorithm);
    if (version) put_tlv(ssl_tlv, kSubtypeSslVersion, ssl.version);
    if (cn) put_tlv(ssl_tlv, kSubtypeSslCn, ssl.client_cn);
    if (cipher) put_tlv(ssl_tlv, kSubtypeSslCipher, ssl.cipher);
    if (sig_alg) put_tlv(ssl_tlv, kSubtypeSslSigAlg, ssl.sig_alg);
    if (key_alg) put_tlv(ssl_tlv, kSubtypeSslKeyAlg, ssl.key_alg);
  } else if (wanted(header.authority, kMaxAuthority) && take(header.authority)) {
    put_tlv(authority, kTypeAuthority, header.authority);
  }
  std::string tlvs = authority;
  if (header.ssl) put_tlv(tlvs, kTypeSsl, ssl_tlv);

  std::string out(reinterpret_cast<const char*>(kV2Signature.data()), kV2Signature.size());
  out += static_cast<char>(0x21);              // version 2, PROXY
  out += static_cast<char>(v4 ? 0x11 : 0x21);  // TCP over IPv4 / IPv6
  put16(out, addresses.size() + tlvs.size());
  out += addresses;
  out += tlvs;
  return out;
}

Decoded decode(std::string_view input) {
  const std::size_t known = std::min(input.size(), kV2Signature.size());
  // Not memcmp(): an empty view may have no data pointer at all.
  const std::string_view signature(reinterpret_cast<const char*>(kV2Signature.data()), known);
  if (input.substr(0, known) == signature) {
    return known < kV2Signature.size() ? Decoded{} : decode_v2(input);
  }
  constexpr std::string_view kV1Prefix = "PROXY ";
  const std::size_t prefix = std::min(input.size(), kV1Prefix.size());
  if (input.substr(0, prefix) != kV1Prefix.substr(0, prefix)) return invalid();
  return prefix < kV1Prefix.size() ? Decoded{} : decode_v1(input);
}

bool is_header_line(std::string_view line) {
  constexpr std::string_view kProxy = "PROXY";
  if (line.size() < kProxy.size() || (line.size() > kProxy.size() && line[5] != ' ')) return false;
  return std::equal(kProxy.begin(), kProxy.end(), line.begin(), [](char a, char b) {
    return a == std::toupper(static_cast<unsigned char>(b));
  });
}

}  // namespace stp::proxy_protocol
