// The record data the outbound side reads from DNS answers: names in wire format, MX, TLSA,
// TXT, A and AAAA. Pure functions over the bytes libunbound hands over (each record's rdata, names
// uncompressed), every length checked.
//
// Trusts nothing: the bytes come from the network (validated or not); a malformed record is
// nullopt, never a partial value.
#pragma once

#include <boost/asio/ip/address.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace stp::dns {

// Record types asked for.
enum class RecordType : std::uint16_t {
  a = 1,
  mx = 15,
  txt = 16,
  aaaa = 28,
  dnskey = 48,
  tlsa = 52
};

// A name in DNS wire format (length-prefixed labels, the root last, no compression) as
// lower-case text without the trailing dot ("" for the root); `consumed` gets its length in
// bytes. nullopt when malformed, compressed, or not a host name (letters, digits, hyphens
// and, as in real MX names, underscores).
std::optional<std::string> read_name(std::string_view wire, std::size_t* consumed = nullptr);

struct MxRecord {
  std::uint16_t preference = 0;
  std::string exchange;  // "" for the root: a null MX when it is the only one (RFC 7505)
};
std::optional<MxRecord> read_mx(std::string_view rdata);

// A TLSA record (RFC 6698): certificate usage, selector, matching type, association data.
struct TlsaRecord {
  std::uint8_t usage = 0;
  std::uint8_t selector = 0;
  std::uint8_t matching_type = 0;
  std::string data;
};
std::optional<TlsaRecord> read_tlsa(std::string_view rdata);

// A TXT record's character strings, joined (RFC 7208 3.3's reading; MTA-STS's too).
std::optional<std::string> read_txt(std::string_view rdata);

// An A record's rdata (4 bytes) or an AAAA record's (16 bytes).
std::optional<boost::asio::ip::address> read_address(RecordType type, std::string_view rdata);

}  // namespace stp::dns
