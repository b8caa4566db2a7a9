// XCLIENT and xtext encoding; see xclient.hpp.
#include "smtp/xclient.hpp"
#include "smtp/address.hpp"

namespace stp {
namespace {

std::string_view name_value(ClientName::Status status, const std::string& name) {
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

void append_attribute(std::string& out, std::string_view attribute, std::string_view value) {
  out += ' ';
  out += attribute;
  out += '=';
  out += xtext_encode(value);
}

}  // namespace

std::string xtext_encode(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (const char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= '!' && c <= '~' && c != '+' && c != '=') {
      out += ch;
    } else {
      out += '+';
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    }
  }
  return out;
}

std::string xclient_address(const boost::asio::ip::address& address) {
  const auto a = unmapped(address);
  if (a.is_v4()) return a.to_string();
  return "IPV6:" + a.to_string();
}

std::string build_xclient_command(const smtp::MtaCapabilities& mta, const ClientIdentity& client) {
  std::string out = "XCLIENT";
  if (mta.advertises("ADDR")) append_attribute(out, "ADDR", xclient_address(client.address));
  if (mta.advertises("PORT")) append_attribute(out, "PORT", std::to_string(client.port));
  if (mta.advertises("NAME")) {
    append_attribute(out, "NAME", name_value(client.name.status, client.name.name));
  }
  if (mta.advertises("REVERSE_NAME")) {
    append_attribute(out, "REVERSE_NAME",
                     name_value(client.name.reverse_status, client.name.reverse_name));
  }
  if (mta.advertises("DESTADDR")) {
    append_attribute(out, "DESTADDR", xclient_address(client.local_address));
  }
  if (mta.advertises("DESTPORT")) {
    append_attribute(out, "DESTPORT", std::to_string(client.local_port));
  }
  out += "\r\n";
  return out;
}

}  // namespace stp
