// The session ticket key file's text; see ticket_key_file.hpp.
#include "tls/ticket_key_file.hpp"

#include "smtp/text.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>

namespace stp::tls {
namespace {

constexpr std::size_t kKeyBytes = 80;

bool is_base64(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return false;
  const auto padding = text.size() - std::min(text.find('='), text.size());
  if (padding > 2 || text.find_first_not_of('=', text.size() - padding) != std::string_view::npos)
    return false;
  return std::all_of(text.begin(), text.end() - static_cast<std::ptrdiff_t>(padding), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
  });
}

// The 80 bytes of one line; empty when it is not exactly that in base64.
std::vector<unsigned char> decoded_key(std::string_view text) {
  if (!is_base64(text) || text.size() > 4 * ((kKeyBytes + 2) / 3)) return {};
  std::vector<unsigned char> out(text.size() / 4 * 3);
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return {};
  const auto padding = static_cast<std::size_t>(std::count(text.end() - 2, text.end(), '='));
  out.resize(static_cast<std::size_t>(n) - padding);
  if (out.size() != kKeyBytes) out.clear();
  return out;
}

}  // namespace

std::vector<TicketKey> parse_ticket_keys(std::string_view text) {
  std::vector<TicketKey> keys;
  std::set<std::array<unsigned char, 16>> names;
  std::size_t number = 0;
  while (!text.empty()) {
    const auto end = std::min(text.find('\n'), text.size());
    const auto line = text::trim(text.substr(0, end), " \t\r");
    text.remove_prefix(std::min(end + 1, text.size()));
    ++number;
    if (line.empty() || line.front() == '#') continue;
    const auto bytes = decoded_key(line);
    if (bytes.empty()) {
      throw std::invalid_argument(
          "line " + std::to_string(number) +
          ": not a key (80 bytes in base64 on one line: openssl rand 80 | base64 -w0)");
    }
    TicketKey key;
    std::memcpy(key.name.data(), bytes.data(), 16);
    std::memcpy(key.hmac.data(), bytes.data() + 16, 32);
    std::memcpy(key.aes.data(), bytes.data() + 48, 32);
    if (!names.insert(key.name).second) {
      throw std::invalid_argument("line " + std::to_string(number) +
                                  ": a key named like an earlier one (its first 16 bytes)");
    }
    keys.push_back(key);
  }
  if (keys.empty()) throw std::invalid_argument("no key in it");
  return keys;
}

}  // namespace stp::tls
