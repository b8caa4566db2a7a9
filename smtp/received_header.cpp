// Received: header construction; see received_header.hpp.
#include "smtp/received_header.hpp"
#include "smtp/address.hpp"

#include <array>

namespace stp {

std::string sanitize_for_header(std::string_view text, std::size_t max_length, Spaces spaces) {
  std::string out;
  out.reserve(std::min(text.size(), max_length));
  for (const char ch : text.substr(0, max_length)) {
    const auto c = static_cast<unsigned char>(ch);
    const bool printable = (c > 0x20 || (c == 0x20 && spaces == Spaces::keep)) && c < 0x7f;
    out += (printable && ch != '(' && ch != ')' && ch != '\\' && ch != '"') ? ch : '?';
  }
  return out;
}

std::string_view with_protocol(bool extended_helo, bool tls, bool authenticated) {
  if (!extended_helo) return tls ? "SMTPS" : "SMTP";
  if (tls) return authenticated ? "ESMTPSA" : "ESMTPS";
  return authenticated ? "ESMTPA" : "ESMTP";
}

std::string rfc5322_date(std::time_t when) {
  static constexpr std::array<const char*, 7> kDays = {"Sun", "Mon", "Tue", "Wed",
                                                       "Thu", "Fri", "Sat"};
  static constexpr std::array<const char*, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::tm tm{};
  gmtime_r(&when, &tm);
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[tm.tm_wday],
                tm.tm_mday, kMonths[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
  return buffer;
}

std::optional<bool> starts_with_continuation(std::string_view content, bool dot_stuffed) {
  const std::size_t first = dot_stuffed && !content.empty() && content[0] == '.' ? 1 : 0;
  if (content.size() <= first) return std::nullopt;
  return content[first] == ' ' || content[first] == '\t';
}

std::string build_received_header(const ReceivedFields& f) {
  const auto address = unmapped(f.client_address);
  const std::string name = f.client_name.empty() ? "unknown" : sanitize_for_header(f.client_name);
  const std::string helo = f.helo.empty() ? name : sanitize_for_header(f.helo);
  const std::string address_text =
      address.is_v6() ? "IPv6:" + address.to_string() : address.to_string();

  std::string h = "Received: from " + helo + " (" + name + " [" + address_text + "])\r\n";
  if (f.tls) {
    const auto& t = *f.tls;
    h += "\t(using " + t.protocol + " with cipher " + t.cipher + " (" +
         std::to_string(t.cipher_bits) + "/" + std::to_string(t.cipher_algorithm_bits) + " bits)";
    std::string details;
    if (!t.key_exchange.empty()) details += " key-exchange " + t.key_exchange;
    if (!t.server_signature.empty()) details += " server-signature " + t.server_signature;
    if (!t.server_digest.empty()) details += " server-digest " + t.server_digest;
    if (!details.empty()) h += "\r\n\t" + details;
    h += ")\r\n";
    if (t.peer) {
      h += "\t(Client CN \"" + sanitize_for_header(t.peer->common_name, 64, Spaces::keep) +
           "\", Issuer \"" + sanitize_for_header(t.peer->issuer_common_name, 64, Spaces::keep) +
           "\" (" + (t.verified ? "verified OK" : "not verified") + "))\r\n";
    } else if (t.request != tls::ClientCertificateRequest::none) {
      h += "\t(Client did not present a certificate)\r\n";
    } else {
      h += "\t(No client certificate requested)\r\n";
    }
    std::string answered;
    if (!t.sni.empty()) answered = "SNI " + sanitize_for_header(t.sni);
    if (f.name_certificate) {
      answered += (answered.empty() ? "" : ", ") + std::string("certificate CN \"") +
                  sanitize_for_header(t.server_common_name, 64, Spaces::keep) + "\"";
    }
    if (!answered.empty()) h += "\t(" + answered + ")\r\n";
  }
  h += "\tby " + std::string(f.hostname) + " (smtp-tls-proxy) with " +
       std::string(with_protocol(f.extended_helo, f.tls != nullptr, f.authenticated)) + " id " +
       std::string(f.id) + ";\r\n\t" + rfc5322_date(f.now) + "\r\n";
  return h;
}

}  // namespace stp
