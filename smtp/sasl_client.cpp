// SMTP AUTH client codecs; see sasl_client.hpp.
#include "smtp/sasl_client.hpp"

#include <openssl/evp.h>

#include <algorithm>

namespace stp::smtp {

std::optional<SaslMechanism> choose_sasl_mechanism(const MtaCapabilities& capabilities) {
  if (capabilities.auth_plain) return SaslMechanism::plain;
  if (capabilities.auth_login) return SaslMechanism::login;
  return std::nullopt;
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string auth_plain_command(std::string_view user, std::string_view password) {
  std::string message;
  message.reserve(user.size() + password.size() + 2);
  message.push_back('\0');  // no authorisation identity: the user's own
  message.append(user);
  message.push_back('\0');
  message.append(password);
  std::string line = "AUTH PLAIN " + base64_encode(message) + "\r\n";
  std::fill(message.begin(), message.end(), '\0');
  return line;
}

std::string sasl_response_line(std::string_view bytes) {
  return base64_encode(bytes) + "\r\n";
}

}  // namespace stp::smtp
