// How the proxy writes and tells an address: a client that reached a dual-stack listener over
// IPv4 arrives v4-mapped ([::ffff:192.0.2.7]) and is 192.0.2.7 in logs, the Received header,
// XCLIENT, the PROXY header and name lookups alike.
#pragma once

#include <boost/asio/ip/address.hpp>

namespace stp {

inline boost::asio::ip::address unmapped(const boost::asio::ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, address.to_v6());
  }
  return address;
}

}  // namespace stp
