// Fuzz target: the session ticket key file parser (tls/ticket_key_file.cpp). Any text gives
// keys or std::invalid_argument, never a crash; every key it returns has a name of its own.
#include "tls/ticket_key_file.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto keys = stp::tls::parse_ticket_keys(text);
    std::set<std::array<unsigned char, 16>> names;
    for (const auto& key : keys) {
      if (!names.insert(key.name).second) std::abort();
    }
    if (keys.empty()) std::abort();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
