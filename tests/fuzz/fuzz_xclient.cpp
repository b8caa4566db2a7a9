// Fuzzes the XCLIENT encoder (smtp/xclient.hpp): xtext_encode on any bytes, and
// build_xclient_command on any advertised attributes, addresses, ports and names.
//
// Input, as text lines (the xtext check uses the whole input as is):
//   1  the attributes the MTA advertised after XCLIENT, blank-separated (e.g. "ADDR PORT NAME")
//   2  the client's address (text; if it does not parse, its first 16 or 4 bytes, raw)
//   3  the client's port (decimal, modulo 65536)
//   4  the local address, as line 2
//   5  the local port
//   6  the reverse-DNS status ('f' found, 't' temporarily unavailable, else unavailable) and
//      then the confirmed name, with the escapes of fuzz_util.hpp (\n, \r, \0, \xHH...)
//   7  the same for the unverified PTR name; it runs to the end of the input
//
// Checks:
// - xtext_encode output has only '!'..'~' without '=', is at most three times as long, and
//   an RFC 3461 xtext decoder (below) gives back the input;
// - build_xclient_command is one line: "XCLIENT", then " NAME=value" for each attribute the
//   MTA advertised (ignoring case) among ADDR PORT NAME REVERSE_NAME DESTADDR DESTPORT, in that
//   order, each once, and nothing else, then CRLF; every value is valid xtext and decodes to
//   what it stands for: ADDR/DESTADDR parse back to the address (IPv4 for a v4-mapped one,
//   "IPV6:" and RFC 5952 text otherwise), ports in decimal, names as given or Postfix's
//   [UNAVAILABLE] / [TEMPUNAVAIL].
#include "fuzz_util.hpp"
#include "smtp/xclient.hpp"

#include <boost/asio/ip/address.hpp>

#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace ip = boost::asio::ip;
using stp::ClientIdentity;
using stp::ClientName;

std::optional<std::string> xtext_decode(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;  // RFC 3461: upper case only
  };
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '+') {
      if (i + 2 >= text.size() || hex(text[i + 1]) < 0 || hex(text[i + 2]) < 0) {
        return std::nullopt;
      }
      out += static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2]));
      i += 2;
    } else if (c >= '!' && c <= '~' && c != '=') {
      out += c;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

void check_xtext(std::string_view value) {
  const std::string encoded = stp::xtext_encode(value);
  FUZZ_CHECK(encoded.size() <= 3 * value.size(), value);
  for (const char c : encoded) FUZZ_CHECK(c >= '!' && c <= '~' && c != '=', encoded);
  FUZZ_CHECK(xtext_decode(encoded) == std::string(value), value);
}

ip::address address_from(std::string_view text) {
  boost::system::error_code error;
  const ip::address parsed = ip::make_address(std::string(text), error);
  if (!error) return parsed;
  if (text.size() >= 16) {
    ip::address_v6::bytes_type bytes;
    for (std::size_t i = 0; i < 16; ++i) bytes[i] = static_cast<unsigned char>(text[i]);
    return ip::address_v6(bytes);
  }
  if (text.size() >= 4) {
    ip::address_v4::bytes_type bytes;
    for (std::size_t i = 0; i < 4; ++i) bytes[i] = static_cast<unsigned char>(text[i]);
    return ip::address_v4(bytes);
  }
  return ip::address_v4::any();
}

std::uint16_t port_from(std::string_view text) {
  unsigned long value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return static_cast<std::uint16_t>(value);
}

ClientName::Status status_from(std::string_view field) {
  if (field.empty()) return ClientName::Status::unavailable;
  if (field.front() == 'f') return ClientName::Status::found;
  if (field.front() == 't') return ClientName::Status::temporarily_unavailable;
  return ClientName::Status::unavailable;
}

std::string expected_name(ClientName::Status status, const std::string& name) {
  switch (status) {
    case ClientName::Status::found:
      return name;
    case ClientName::Status::temporarily_unavailable:
      return "[TEMPUNAVAIL]";
    case ClientName::Status::unavailable:
      break;
  }
  return "[UNAVAILABLE]";
}

// The address as the MTA reads ADDR= back, compared with the one the proxy meant.
void check_address(std::string_view value, const ip::address& address) {
  ip::address meant = address;
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    meant = ip::make_address_v4(ip::v4_mapped, address.to_v6());
  }
  boost::system::error_code error;
  if (meant.is_v4()) {
    const auto back = ip::make_address_v4(std::string(value), error);
    FUZZ_CHECK(!error && back == meant.to_v4(), value);
  } else {
    FUZZ_CHECK(value.substr(0, 5) == "IPV6:", value);
    const std::string text(value.substr(5));
    const auto back = ip::make_address_v6(text, error);
    FUZZ_CHECK(!error && back == meant.to_v6(), value);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check_xtext(input);

  std::vector<std::string_view> fields = stp::fuzz::split(input, '\n');
  if (fields.size() < 7) fields.resize(7);
  if (fields.size() > 7) {  // the last field runs to the end
    const char* start = fields[6].data();
    fields[6] = std::string_view(start, static_cast<std::size_t>(input.data() + size - start));
    fields.resize(7);
  }

  stp::smtp::MtaCapabilities mta;
  mta.xclient = true;
  for (const std::string_view word : stp::fuzz::split(fields[0], ' ')) {
    if (!word.empty()) mta.xclient_attributes.emplace_back(word);
  }
  ClientIdentity client;
  client.address = address_from(fields[1]);
  client.port = port_from(fields[2]);
  client.local_address = address_from(fields[3]);
  client.local_port = port_from(fields[4]);
  client.name.status = status_from(fields[5]);
  client.name.name = stp::fuzz::unescape(fields[5].substr(fields[5].empty() ? 0 : 1));
  client.name.reverse_status = status_from(fields[6]);
  client.name.reverse_name = stp::fuzz::unescape(fields[6].substr(fields[6].empty() ? 0 : 1));
  check_xtext(client.name.name);

  const std::string command = stp::build_xclient_command(mta, client);
  FUZZ_CHECK(command.starts_with("XCLIENT") && command.ends_with("\r\n"), command);
  const std::string_view body(command.data(), command.size() - 2);
  for (const char c : body) FUZZ_CHECK(c >= ' ' && c <= '~', command);

  constexpr std::array<std::string_view, 6> kOrder = {"ADDR",         "PORT",     "NAME",
                                                      "REVERSE_NAME", "DESTADDR", "DESTPORT"};
  auto words = stp::fuzz::split(body, ' ');
  FUZZ_CHECK(words.front() == "XCLIENT", command);
  words.erase(words.begin());
  std::size_t next = 0;
  for (const std::string_view attribute : kOrder) {
    if (!mta.advertises(attribute)) continue;
    FUZZ_CHECK(next < words.size(), command);
    const std::string_view word = words[next++];
    FUZZ_CHECK(word.substr(0, attribute.size() + 1) == std::string(attribute) + "=", command);
    const auto value = xtext_decode(word.substr(attribute.size() + 1));
    FUZZ_CHECK(value.has_value(), command);
    if (attribute == "ADDR") check_address(*value, client.address);
    if (attribute == "DESTADDR") check_address(*value, client.local_address);
    if (attribute == "PORT") FUZZ_CHECK(*value == std::to_string(client.port), command);
    if (attribute == "DESTPORT") FUZZ_CHECK(*value == std::to_string(client.local_port), command);
    if (attribute == "NAME") {
      FUZZ_CHECK(*value == expected_name(client.name.status, client.name.name), command);
    }
    if (attribute == "REVERSE_NAME") {
      FUZZ_CHECK(*value == expected_name(client.name.reverse_status, client.name.reverse_name),
                 command);
    }
  }
  FUZZ_CHECK(next == words.size(), command);
  return 0;
}
