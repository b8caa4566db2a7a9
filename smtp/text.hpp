// ASCII text helpers for protocol and configuration text, shared by every layer: case folding
// and trimming that never depend on the locale. Bytes outside ASCII pass unchanged.
#pragma once

#include <string>
#include <string_view>

namespace stp::text {

// Space, tab, CR and LF.
inline constexpr std::string_view kWhitespace = " \t\r\n";

// `text` with A-Z folded to a-z.
inline std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// `text` without the bytes of `blanks` at either end.
inline std::string_view trim(std::string_view text, std::string_view blanks = kWhitespace) {
  const auto first = text.find_first_not_of(blanks);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(blanks) - first + 1);
}

}  // namespace stp::text
