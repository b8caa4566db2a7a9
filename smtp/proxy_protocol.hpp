// HAProxy's PROXY protocol (doc/proxy-protocol.txt): the version 2 header the proxy sends
// the MTA in --backend-metadata proxy-v2 mode, with the PP2_TYPE_SSL TLV describing the TLS
// session; and a decoder for version 1 and 2 headers, for trusted load balancers in front.
//
// Pure functions over bytes. The decoder trusts nothing: every length is checked against
// the bytes present and against the protocol's limits before anything is read.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace stp::proxy_protocol {

// PP2 TLV types and SSL sub-types, as the spec numbers them.
inline constexpr std::uint8_t kTypeAuthority = 0x02;
inline constexpr std::uint8_t kTypeSsl = 0x20;
inline constexpr std::uint8_t kSubtypeSslVersion = 0x21;
inline constexpr std::uint8_t kSubtypeSslCn = 0x22;
inline constexpr std::uint8_t kSubtypeSslCipher = 0x23;
inline constexpr std::uint8_t kSubtypeSslSigAlg = 0x24;
inline constexpr std::uint8_t kSubtypeSslKeyAlg = 0x25;
inline constexpr std::uint8_t kClientSsl = 0x01;
inline constexpr std::uint8_t kClientCertConn = 0x02;
inline constexpr std::uint8_t kClientCertSess = 0x04;

struct SslInfo {
  bool certificate_presented = false;
  bool certificate_verified = false;
  bool resumed = false;   // the certificate came with the resumed session, not on this connection
  std::string version;    // "TLSv1.3"
  std::string cipher;     // OpenSSL name
  std::string sig_alg;    // signature algorithm of the proxy's certificate, e.g. "SHA256"
  std::string key_alg;    // key of the proxy's certificate, e.g. "EC256", "RSA2048"
  std::string client_cn;  // only with a certificate
};

struct V2Header {
  boost::asio::ip::tcp::endpoint source;       // the client
  boost::asio::ip::tcp::endpoint destination;  // what the client connected to
  std::optional<SslInfo> ssl = {};             // absent: the client did not use TLS
  std::string authority = {};                  // SNI; empty: no AUTHORITY TLV
};

// The longest header a receiver reads: Postfix 536 bytes, Exim 4.96 232 (16 + 216).
inline constexpr std::size_t kPostfixMaxHeader = 536;
inline constexpr std::size_t kEximMaxHeader = 232;
// The smallest budget that always holds the addresses and the SSL TLV's flags.
inline constexpr std::size_t kMinHeaderBudget = 16 + 36 + 3 + 5;

// The binary header. Mixed families are sent as IPv6 (IPv4 addresses v4-mapped). A TLV value
// longer than its bound (authority 253, client CN 64, version 16, cipher and algorithms 40
// bytes) is left out, never cut. The header never exceeds `max_length` (at least
// kMinHeaderBudget, at most kPostfixMaxHeader): the addresses and the SSL TLV's client flags
// and verify result always go; then, while they fit and in this order, the TLS version, the
// cipher, the client certificate's CN, the SNI (AUTHORITY), the signature and key algorithms.
// A receiver that reads less than the header sends fails the whole session.
std::string encode_v2(const V2Header& header, std::size_t max_length = kPostfixMaxHeader);

struct Decoded {
  enum class Status { need_more, complete, invalid } status = Status::need_more;
  std::size_t length = 0;  // bytes of header, with Status::complete
  bool local = false;      // v2 LOCAL or v1 UNKNOWN: no addresses, use the connection's own
  boost::asio::ip::tcp::endpoint source;
  boost::asio::ip::tcp::endpoint destination;
};

// Decodes the header at the start of `input` (either version).
Decoded decode(std::string_view input);

// "PROXY" alone or followed by a space, in any case: a load balancer's v1 header sent where a
// command is read. Never passed on: only a trusted load balancer may say who the client is.
bool is_header_line(std::string_view line);

}  // namespace stp::proxy_protocol
