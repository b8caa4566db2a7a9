// Host lists (--tls-advertise-hosts and friends): parsing the operator's text into items, and
// matching a client address against them; see host_list.hpp for the rules.
//
// Trusts nothing in the text: every item is validated and a bad one is reported by name. The
// address comes from the kernel; matches() only reads it, never allocates, never throws.
#include "acl/host_list.hpp"

#include "smtp/text.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace stp::acl {
namespace {

// The operator's text in a message: control bytes as \xHH, so the message stays one line.
std::string escaped(std::string_view text) {
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

// A host name or "*.domain" (letters, digits, '-' and '.', with a letter somewhere, and not
// an address); anything else is read as an address or CIDR block and checked as one.
bool looks_like_name(std::string_view text) {
  if (text.starts_with("*.")) text.remove_prefix(2);
  if (text.empty() || text.front() == '.' || text.back() == '.' ||
      text.find("..") != std::string_view::npos) {
    return false;
  }
  bool letter = false;
  for (const char c : text) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    letter = letter || alpha;
    if (!alpha && !(c >= '0' && c <= '9') && c != '-' && c != '.') return false;
  }
  boost::system::error_code error;
  boost::asio::ip::make_address(text, error);
  return letter && error;  // "fe80::1" has letters but is an address (and has ':')
}

[[noreturn]] void bad_item(std::string_view item, std::string_view why) {
  throw HostListError("item \"" + escaped(item) + "\": " + std::string(why));
}

// True when the first `bits` bits of `a` and `b` are equal.
bool same_prefix(const unsigned char* a, const unsigned char* b, unsigned bits) {
  const unsigned whole = bits / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  const unsigned rest = bits % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<unsigned char>(0xFFu << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

// True when any bit after the first `bits` of the `size`-byte address is set.
bool has_host_bits(const unsigned char* bytes, std::size_t size, unsigned bits) {
  for (std::size_t bit = bits; bit < size * 8; ++bit) {
    if (bytes[bit / 8] & (0x80u >> (bit % 8))) return true;
  }
  return false;
}

std::string network_text(bool v6, const unsigned char* bytes, unsigned bits) {
  std::array<unsigned char, 16> masked{};
  const std::size_t size = v6 ? 16 : 4;
  for (std::size_t bit = 0; bit < bits && bit < size * 8; ++bit) {
    masked[bit / 8] |= static_cast<unsigned char>(bytes[bit / 8] & (0x80u >> (bit % 8)));
  }
  std::string address;
  if (v6) {
    address = boost::asio::ip::address_v6(masked).to_string();
  } else {
    address = boost::asio::ip::address_v4({masked[0], masked[1], masked[2], masked[3]}).to_string();
  }
  return address + "/" + std::to_string(bits);
}

}  // namespace

HostList HostList::parse(std::string_view text, Names names) {
  HostList list;
  list.text_ = std::string(text);
  if (text::trim(text).empty()) return list;

  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = text.find(',', start);
    const std::string_view item =
        text::trim(text.substr(start, comma == std::string_view::npos ? comma : comma - start));
    if (item.empty()) {
      throw HostListError("empty item at position " + std::to_string(list.items_.size() + 1) +
                          " (two commas in a row, or a comma at an end)");
    }
    list.items_.push_back(parse_item(item, names));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return list;
}

HostList::Item HostList::parse_item(std::string_view item, Names names) {
  Item parsed;
  std::string_view rest = item;
  if (rest.front() == '!') {
    parsed.negated = true;
    rest = text::trim(rest.substr(1));
    if (rest.empty()) bad_item(item, "nothing after '!'");
  }
  if (rest == "*") {
    parsed.any = true;
  } else if (names == Names::allowed && looks_like_name(rest)) {
    parsed.name_suffix = rest.starts_with("*.");
    parsed.name = text::lower(parsed.name_suffix ? rest.substr(1) : rest);
  } else {
    parse_network(rest, item, parsed);
  }
  return parsed;
}

bool HostList::name_matches(const Item& item, std::string_view name) {
  if (item.name.empty() || name.size() < item.name.size()) return false;
  const auto tail = name.substr(name.size() - item.name.size());
  const bool same = std::equal(tail.begin(), tail.end(), item.name.begin(), [](char a, char b) {
    return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
  });
  // "*.example.net" wants a label before ".example.net"; a plain name wants all of it.
  return same && (item.name_suffix ? name.size() > item.name.size() : name.size() == tail.size());
}

void HostList::parse_network(std::string_view network, std::string_view item, Item& parsed) {
  const std::size_t slash = network.find('/');
  const std::string_view address_text = network.substr(0, slash);
  if (address_text.find_first_of("[]%") != std::string_view::npos) {
    bad_item(item, "write an address without brackets or a scope id");
  }
  // make_address() reads its text as a C string: "192.0.2.1\0junk" would pass as 192.0.2.1.
  if (address_text.find('\0') != std::string_view::npos) {
    bad_item(item, "not *, an IPv4 or IPv6 address, or a CIDR block");
  }
  boost::system::error_code error;
  const auto address = boost::asio::ip::make_address(address_text, error);
  if (error) bad_item(item, "not *, an IPv4 or IPv6 address, or a CIDR block");

  parsed.v6 = address.is_v6();
  if (parsed.v6) {
    const auto bytes = address.to_v6().to_bytes();
    std::copy(bytes.begin(), bytes.end(), parsed.bytes);
  } else {
    const auto bytes = address.to_v4().to_bytes();
    std::copy(bytes.begin(), bytes.end(), parsed.bytes);
  }

  const unsigned max_length = parsed.v6 ? 128 : 32;
  parsed.prefix_length = max_length;
  if (slash != std::string_view::npos) {
    const std::string_view length_text = network.substr(slash + 1);
    unsigned length = 0;
    const auto [end, ec] =
        std::from_chars(length_text.data(), length_text.data() + length_text.size(), length);
    if (length_text.empty() || ec != std::errc{} ||
        end != length_text.data() + length_text.size() || length > max_length) {
      bad_item(item, "prefix length must be a number from 0 to " + std::to_string(max_length));
    }
    parsed.prefix_length = length;
  }
  if (has_host_bits(parsed.bytes, parsed.v6 ? 16 : 4, parsed.prefix_length)) {
    bad_item(item, "bits set after the prefix; did you mean " +
                       network_text(parsed.v6, parsed.bytes, parsed.prefix_length) + "?");
  }

  // ::ffff:a.b.c.d/N (N >= 96) covers IPv4 addresses only; matches() sees those as IPv4.
  if (parsed.v6 && address.to_v6().is_v4_mapped() && parsed.prefix_length >= 96) {
    parsed.v6 = false;
    std::memmove(parsed.bytes, parsed.bytes + 12, 4);
    std::fill(parsed.bytes + 4, parsed.bytes + 16, 0);
    parsed.prefix_length -= 96;
  }
}

bool HostList::matches(const boost::asio::ip::address& address) const {
  return matches({}, address);
}

bool HostList::matches(std::string_view name, const boost::asio::ip::address& address) const {
  unsigned char bytes[16] = {};
  bool v6 = false;
  if (address.is_v4()) {
    const auto v4 = address.to_v4().to_bytes();
    std::copy(v4.begin(), v4.end(), bytes);
  } else {
    const auto v6_bytes = address.to_v6().to_bytes();
    if (address.to_v6().is_v4_mapped()) {
      std::copy(v6_bytes.begin() + 12, v6_bytes.end(), bytes);
    } else {
      v6 = true;
      std::copy(v6_bytes.begin(), v6_bytes.end(), bytes);
    }
  }

  for (const Item& item : items_) {
    const bool hit =
        !item.name.empty()
            ? name_matches(item, name)
            : item.any || (item.v6 == v6 && same_prefix(item.bytes, bytes, item.prefix_length));
    if (hit) return !item.negated;
  }
  return false;
}

}  // namespace stp::acl
