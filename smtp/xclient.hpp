// Encodes who the client is for the MTA: the XCLIENT command of Postfix's XCLIENT_README,
// with xtext (RFC 3461) values and only the attributes the MTA advertised.
//
// Trusts the addresses (they come from the kernel) and the name (it was confirmed by a forward
// lookup); still encodes every value, since a DNS name is text from a third party.
#pragma once

#include "smtp/smtp_parse.hpp"

#include <boost/asio/ip/address.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace stp {

// What reverse DNS said of the client, in Postfix's terms.
struct ClientName {
  enum class Status { found, unavailable, temporarily_unavailable };
  Status status = Status::unavailable;
  std::string name;  // valid with found: the reverse name, confirmed by a forward lookup
  Status reverse_status = Status::unavailable;
  std::string reverse_name;  // valid with reverse_status found: the unverified PTR name
};

struct ClientIdentity {
  boost::asio::ip::address address;
  std::uint16_t port = 0;
  boost::asio::ip::address local_address;  // what the client connected to
  std::uint16_t local_port = 0;
  ClientName name;
};

std::string xtext_encode(std::string_view value);

// IPv4 dotted quad, or "IPV6:" + RFC 5952 text; a v4-mapped v6 address is written as IPv4.
std::string xclient_address(const boost::asio::ip::address& address);

// "XCLIENT ADDR=... PORT=...\r\n" with the attributes the MTA advertised among ADDR, PORT,
// NAME, REVERSE_NAME, DESTADDR, DESTPORT.
std::string build_xclient_command(const smtp::MtaCapabilities& mta, const ClientIdentity& client);

}  // namespace stp
