// Server names; see server_name.hpp.
#include "tls/server_name.hpp"

#include <algorithm>
#include <cctype>

namespace stp::tls {

bool is_host_name(std::string_view name) {
  constexpr std::size_t kMaxName = 255;
  constexpr std::size_t kMaxLabel = 63;
  if (name.empty() || name.size() > kMaxName) return false;
  std::size_t label = 0;
  for (const char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ldh =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (!ldh || ++label > kMaxLabel) return false;
  }
  return label > 0;
}

bool name_covers(std::string_view pattern, std::string_view name) {
  if (pattern.starts_with("*.")) {
    const auto dot = name.find('.');
    return dot != std::string_view::npos && dot > 0 && name.substr(dot) == pattern.substr(1);
  }
  return pattern == name;
}

std::optional<std::string> server_name_of(const unsigned char* body, std::size_t size) {
  const auto u16 = [&](std::size_t at) {
    return static_cast<std::size_t>(body[at] << 8 | body[at + 1]);
  };
  if (size < 2 || u16(0) != size - 2) return std::nullopt;
  std::size_t at = 2;
  while (at + 3 <= size) {
    const unsigned type = body[at];
    const std::size_t length = u16(at + 1);
    at += 3;
    if (length > size - at) return std::nullopt;
    if (type == 0) {  // host_name
      std::string name(reinterpret_cast<const char*>(body + at), length);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (!name.empty() && name.back() == '.') name.pop_back();
      if (!is_host_name(name)) return std::nullopt;
      return name;
    }
    at += length;
  }
  return std::nullopt;
}

}  // namespace stp::tls
