// The session ticket key file's text: base64 keys, one per line, 80 bytes each in nginx's
// layout (16 name, 32 HMAC, 32 AES). Pure parsing, no TLS: the fuzz target's whole world.
//
// Trusts nothing in the text: a line is a key only when it is exactly that.
#pragma once

#include <array>
#include <string_view>
#include <vector>

namespace stp::tls {

struct TicketKey {
  std::array<unsigned char, 16> name{};
  std::array<unsigned char, 32> hmac{};
  std::array<unsigned char, 32> aes{};
};

// The keys of a key file's text, in order; throws std::invalid_argument("line N: why") for a
// line that is not 80 bytes of base64, a repeated key name, or no key at all. Blank lines
// and lines starting with '#' are skipped.
std::vector<TicketKey> parse_ticket_keys(std::string_view text);

}  // namespace stp::tls
