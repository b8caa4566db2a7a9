// The client side of SMTP AUTH (RFC 4954) with a user name and a password: the PLAIN
// (RFC 4616) and LOGIN mechanisms, which is what relay hosts offer over TLS. Pure functions:
// the caller sends the lines and reads the replies.
//
// Trusts the credentials (the operator's file); the server's 334 challenges are not read
// (PLAIN sends everything in the first line; LOGIN's two prompts are fixed by convention).
#pragma once

#include "smtp/smtp_parse.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace stp::smtp {

enum class SaslMechanism { plain, login };

// The mechanism to use with a server that offers `capabilities`: PLAIN before LOGIN; none when
// it offers neither.
std::optional<SaslMechanism> choose_sasl_mechanism(const MtaCapabilities& capabilities);

std::string base64_encode(std::string_view bytes);

// "AUTH PLAIN <base64 of NUL user NUL password>\r\n": the whole exchange in one line.
std::string auth_plain_command(std::string_view user, std::string_view password);
// LOGIN: "AUTH LOGIN\r\n", then the base64 user name and the base64 password, each a line
// sent after a 334.
inline constexpr std::string_view kAuthLoginCommand = "AUTH LOGIN\r\n";
std::string sasl_response_line(std::string_view bytes);  // base64 of `bytes`, CRLF

}  // namespace stp::smtp
