// DNS record data; see records.hpp.
#include "dns/records.hpp"

#include <array>

namespace stp::dns {
namespace {

constexpr std::size_t kMaxName = 255;  // wire bytes, RFC 1035 3.1
constexpr std::size_t kMaxLabel = 63;

bool host_name_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

std::optional<std::string> read_name(std::string_view wire, std::size_t* consumed) {
  std::string name;
  std::size_t at = 0;
  while (true) {
    if (at >= wire.size() || at >= kMaxName) return std::nullopt;
    const auto length = static_cast<unsigned char>(wire[at++]);
    if (length == 0) break;
    if (length > kMaxLabel || length > wire.size() - at) return std::nullopt;  // or compressed
    if (!name.empty()) name += '.';
    for (const char c : wire.substr(at, length)) {
      const auto lower = static_cast<unsigned char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      if (!host_name_byte(lower)) return std::nullopt;
      name += static_cast<char>(lower);
    }
    at += length;
  }
  if (at > kMaxName) return std::nullopt;
  if (consumed) *consumed = at;
  return name;
}

std::optional<MxRecord> read_mx(std::string_view rdata) {
  if (rdata.size() < 3) return std::nullopt;
  MxRecord mx;
  mx.preference = static_cast<std::uint16_t>(static_cast<unsigned char>(rdata[0]) << 8 |
                                             static_cast<unsigned char>(rdata[1]));
  std::size_t consumed = 0;
  auto exchange = read_name(rdata.substr(2), &consumed);
  if (!exchange || consumed != rdata.size() - 2) return std::nullopt;
  mx.exchange = std::move(*exchange);
  return mx;
}

std::optional<TlsaRecord> read_tlsa(std::string_view rdata) {
  if (rdata.size() < 4) return std::nullopt;  // three octets and some data
  return TlsaRecord{static_cast<std::uint8_t>(rdata[0]), static_cast<std::uint8_t>(rdata[1]),
                    static_cast<std::uint8_t>(rdata[2]), std::string(rdata.substr(3))};
}

std::optional<std::string> read_txt(std::string_view rdata) {
  if (rdata.empty()) return std::nullopt;  // at least one string, perhaps empty
  std::string text;
  while (!rdata.empty()) {
    const auto length = static_cast<unsigned char>(rdata.front());
    if (length > rdata.size() - 1) return std::nullopt;
    text.append(rdata.substr(1, length));
    rdata.remove_prefix(1 + length);
  }
  return text;
}

std::optional<boost::asio::ip::address> read_address(RecordType type, std::string_view rdata) {
  if (type == RecordType::a && rdata.size() == 4) {
    std::array<unsigned char, 4> bytes{};
    std::copy(rdata.begin(), rdata.end(), bytes.begin());
    return boost::asio::ip::address_v4(bytes);
  }
  if (type == RecordType::aaaa && rdata.size() == 16) {
    std::array<unsigned char, 16> bytes{};
    std::copy(rdata.begin(), rdata.end(), bytes.begin());
    return boost::asio::ip::address_v6(bytes);
  }
  return std::nullopt;
}

}  // namespace stp::dns
