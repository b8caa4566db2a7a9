// Host lists in the style of Exim's hostlist options (--tls-advertise-hosts and friends).
//
// A list is comma-separated; each item is `*`, an IPv4 or IPv6 address, or a CIDR block,
// optionally preceded by `!` to negate it. Lists about relay hosts (the --relay-* flags) may
// also name hosts, exactly (`smtp.example.net`) or by domain (`*.example.net`: any name
// below it); a name item matches a relay host's configured name, without regard to case. Whitespace
// around items is ignored. The first item that matches an address decides (a negated item that
// matches means "no"); when no item matches, the answer is "no", so an empty list matches nothing.
//
// Trusts nothing: the text comes from the operator and is validated here; the address
// comes from the kernel. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, as seen on a
// dual-stack listener) are matched as the IPv4 address they carry.
#pragma once

#include <boost/asio/ip/address.hpp>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace stp::acl {

class HostListError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class HostList {
 public:
  HostList() = default;  // empty: matches nothing

  enum class Names { refused, allowed };
  // Throws HostListError naming the offending item.
  static HostList parse(std::string_view text, Names names = Names::refused);

  bool matches(const boost::asio::ip::address& address) const;
  // A relay host: its configured `name` (a host name, or an address as written) and the
  // address connected to. Name items match the name, address items the address.
  bool matches(std::string_view name, const boost::asio::ip::address& address) const;
  bool empty() const { return items_.empty(); }
  const std::string& text() const { return text_; }

 private:
  struct Item {
    bool negated = false;
    bool any = false;  // `*`
    bool v6 = false;
    unsigned char bytes[16] = {};  // network order; IPv4 uses the first four
    unsigned prefix_length = 0;    // bits that must match
    std::string name;              // a name item, lower-cased: "smtp.example.net"
    bool name_suffix = false;      // "*.example.net": name is ".example.net"
  };
  // One item of the list ("!" and "*" here); throws HostListError naming `item`.
  static Item parse_item(std::string_view item, Names names);
  static bool name_matches(const Item& item, std::string_view name);
  // An address or CIDR block (`network`, from `item`) into `parsed`.
  static void parse_network(std::string_view network, std::string_view item, Item& parsed);

  std::vector<Item> items_;
  std::string text_;
};

}  // namespace stp::acl
