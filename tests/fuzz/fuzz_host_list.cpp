// Fuzzes acl::HostList (acl/host_list.hpp): parse() on any operator text, then matches() on
// addresses chosen to sit on the edges of what the list says.
//
// Input: the host list text, as it would come from a flag, a variable or a config file.
//
// Checks:
// - parse either throws HostListError (nothing else) with a one-line printable message (the
//   item escaped), or returns a list whose text() is the input; an all-blank text gives an
//   empty list;
// - every item of an accepted list is `*` or an address made of hex digits, '.' and ':' with
//   an optional "/<digits>" prefix length, possibly after '!' (nothing else may slip through);
// - first match decides: for every address tried, matches() equals what the items say one by
//   one (each item without its '!', parsed alone: the first that matches decides, and a '!'
//   makes it a no; none matching is a no);
// - each CIDR item matches its own network address and the same address with every host bit
//   set, and not the address with the last prefix bit flipped (unless a v6 item would have to
//   match a v4-mapped address, which matches() reads as IPv4 by design);
// - an IPv4 address and its v4-mapped IPv6 form always get the same answer.
#include "acl/host_list.hpp"
#include "fuzz_util.hpp"

#include <boost/asio/ip/address.hpp>

#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace ip = boost::asio::ip;
using stp::acl::HostList;
using stp::acl::HostListError;

constexpr std::string_view kBlank = " \t\r\n";
constexpr std::size_t kMaxItemsExamined = 16;
constexpr std::size_t kMaxAddresses = 64;

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(kBlank);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(kBlank) - first + 1);
}

std::optional<HostList> parse(std::string_view text) {
  try {
    return HostList::parse(text);
  } catch (const HostListError& e) {
    const std::string_view message = e.what();
    FUZZ_CHECK(!message.empty(), text);
    // The operator's text comes back escaped: the message is one printable line.
    for (const char c : message) {
      FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f, message);
    }
    return std::nullopt;
  }
}

bool address_text(std::string_view text) {
  if (text.empty()) return false;
  for (const char c : text) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                    c == '.' || c == ':';
    if (!ok) return false;
  }
  return true;
}

struct Item {
  bool negated = false;
  HostList alone;  // the item without its '!'
  std::optional<ip::address> network;
  unsigned prefix = 0;
};

ip::address with_bytes(const ip::address& like, const std::array<unsigned char, 16>& bytes) {
  if (like.is_v4()) return ip::address_v4({bytes[0], bytes[1], bytes[2], bytes[3]});
  return ip::address_v6(bytes);
}

std::array<unsigned char, 16> bytes_of(const ip::address& address) {
  std::array<unsigned char, 16> bytes{};
  if (address.is_v4()) {
    const auto v4 = address.to_v4().to_bytes();
    std::copy(v4.begin(), v4.end(), bytes.begin());
  } else {
    bytes = address.to_v6().to_bytes();
  }
  return bytes;
}

bool v4_mapped(const ip::address& address) {
  return address.is_v6() && address.to_v6().is_v4_mapped();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::optional<HostList> list;
  try {
    list = parse(text);
  } catch (const std::exception& e) {
    stp::fuzz::fail("HostList::parse threw something else than HostListError", __FILE__, __LINE__,
                    e.what());
  }
  if (!list) {
    FUZZ_CHECK(!trim(text).empty(), text);
    return 0;
  }
  FUZZ_CHECK(list->text() == text, text);
  FUZZ_CHECK(list->empty() == trim(text).empty(), text);

  std::vector<Item> items;
  std::vector<ip::address> addresses = {
      ip::make_address("0.0.0.0"),     ip::make_address("255.255.255.255"),
      ip::make_address("127.0.0.1"),   ip::make_address("192.0.2.1"),
      ip::make_address("10.1.2.3"),    ip::make_address("::"),
      ip::make_address("::1"),         ip::make_address("2001:db8::1"),
      ip::make_address("fe80::1"),     ip::make_address("::ffff:192.0.2.1"),
      ip::make_address("::192.0.2.1"), ip::make_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
  };
  if (!list->empty()) {
    for (const std::string_view raw : stp::fuzz::split(text, ',')) {
      const std::string_view item = trim(raw);
      Item parsed;
      std::string_view positive = item;
      FUZZ_CHECK(!positive.empty(), text);
      if (positive.front() == '!') {
        parsed.negated = true;
        positive = trim(positive.substr(1));
      }
      const auto alone = parse(positive);
      FUZZ_CHECK(alone.has_value(), positive);  // it was accepted inside the list
      parsed.alone = *alone;
      if (positive != "*") {
        const std::size_t slash = positive.find('/');
        const std::string_view address = positive.substr(0, slash);
        // make_address() reads its text as a C string: a NUL must not hide what follows it.
        FUZZ_CHECK(address_text(address), item);
        const std::string_view length =
            slash == std::string_view::npos ? std::string_view{} : positive.substr(slash + 1);
        if (slash != std::string_view::npos) {
          FUZZ_CHECK(
              !length.empty() && length.find_first_not_of("0123456789") == std::string_view::npos,
              item);
        }
        boost::system::error_code error;
        parsed.network = ip::make_address(std::string(address), error);
        FUZZ_CHECK(!error, item);
        const unsigned bits = parsed.network->is_v4() ? 32 : 128;
        parsed.prefix = bits;
        if (!length.empty())
          std::from_chars(length.data(), length.data() + length.size(), parsed.prefix);
        FUZZ_CHECK(parsed.prefix <= bits, item);
      }
      items.push_back(std::move(parsed));
    }
  }

  // Addresses on the edges of the first items.
  for (std::size_t i = 0; i < items.size() && i < kMaxItemsExamined; ++i) {
    const Item& item = items[i];
    if (!item.network) continue;
    const ip::address network = *item.network;
    const unsigned bits = network.is_v4() ? 32 : 128;
    auto all_host_bits = bytes_of(network);
    for (unsigned bit = item.prefix; bit < bits; ++bit) {
      all_host_bits[bit / 8] |= static_cast<unsigned char>(0x80u >> (bit % 8));
    }
    const ip::address top = with_bytes(network, all_host_bits);
    // A v6 item reaches v4-mapped addresses only as ::ffff:a.b.c.d/N with N >= 96.
    const bool mapped_item = v4_mapped(network) && item.prefix >= 96;
    const bool reaches = !v4_mapped(top) || mapped_item;
    FUZZ_CHECK(item.alone.matches(network), text);
    if (reaches) FUZZ_CHECK(item.alone.matches(top), text);
    addresses.push_back(network);
    addresses.push_back(top);
    if (item.prefix > 0) {
      auto flipped_bytes = bytes_of(network);
      const unsigned bit = item.prefix - 1;
      flipped_bytes[bit / 8] ^= static_cast<unsigned char>(0x80u >> (bit % 8));
      const ip::address flipped = with_bytes(network, flipped_bytes);
      FUZZ_CHECK(!item.alone.matches(flipped), text);
      addresses.push_back(flipped);
    }
  }
  stp::fuzz::Random random(stp::fuzz::hash(text));
  while (addresses.size() < kMaxAddresses) {
    std::array<unsigned char, 16> bytes{};
    for (auto& b : bytes) b = static_cast<unsigned char>(random.next());
    addresses.push_back(random.below(2) ? ip::address(ip::address_v6(bytes))
                                        : with_bytes(ip::address_v4::any(), bytes));
  }

  for (const ip::address& address : addresses) {
    const bool answer = list->matches(address);
    bool expected = false;
    for (const Item& item : items) {
      if (item.alone.matches(address)) {
        expected = !item.negated;
        break;
      }
    }
    const std::string where = std::string(text) + " @ " + address.to_string();
    FUZZ_CHECK(answer == expected, where);
    if (address.is_v4()) {
      const ip::address mapped = ip::make_address_v6(ip::v4_mapped, address.to_v4());
      FUZZ_CHECK(list->matches(mapped) == answer, where);
    }
  }
  return 0;
}
