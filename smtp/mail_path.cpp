// The domain of a RCPT; see mail_path.hpp.
#include "smtp/mail_path.hpp"

#include <cctype>

namespace stp::smtp {
namespace {

constexpr std::size_t kMaxDomain = 253;
constexpr std::size_t kMaxLabel = 63;

// Letters, digits and hyphens in labels of 1 to 63 bytes, none starting or ending with a
// hyphen (RFC 1123).
bool domain_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxDomain) return false;
  std::size_t label = 0;
  char previous = '.';
  for (const char c : name) {
    if (c == '.') {
      if (label == 0 || previous == '-') return false;
      label = 0;
    } else {
      const auto u = static_cast<unsigned char>(c);
      if (!(std::isalnum(u) || c == '-') || ++label > kMaxLabel) return false;
      if (c == '-' && label == 1) return false;
    }
    previous = c;
  }
  return label > 0 && previous != '-';
}

}  // namespace

std::optional<std::string> recipient_domain(std::string_view arguments) {
  if (arguments.size() < 3 ||
      !(std::toupper(static_cast<unsigned char>(arguments[0])) == 'T' &&
        std::toupper(static_cast<unsigned char>(arguments[1])) == 'O' && arguments[2] == ':')) {
    return std::nullopt;
  }
  std::string_view rest = arguments.substr(3);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);  // Postfix allows it
  if (rest.empty() || rest.front() != '<') return std::nullopt;
  rest.remove_prefix(1);
  // The mailbox up to the closing bracket outside quotes, and its last '@' outside quotes.
  bool quoted = false;
  std::size_t at = std::string_view::npos;
  std::size_t end = 0;
  for (; end < rest.size(); ++end) {
    const char c = rest[end];
    if (quoted && c == '\\') {
      ++end;  // the escaped character, whatever it is
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == '@') {
      at = end;
    } else if (!quoted && c == '>') {
      break;
    }
  }
  if (end >= rest.size() || quoted) return std::nullopt;
  std::string_view mailbox = rest.substr(0, end);
  if (mailbox.starts_with('@')) {  // a source route (RFC 5321 4.1.2): only the mailbox counts
    const auto colon = mailbox.find(':');
    if (colon == std::string_view::npos || at == std::string_view::npos || at < colon) {
      return std::nullopt;
    }
  }
  if (at == std::string_view::npos) return std::nullopt;
  std::string domain(mailbox.substr(at + 1));
  if (!domain.empty() && domain.back() == '.') domain.pop_back();
  if (!domain_name(domain)) return std::nullopt;
  for (char& c : domain) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return domain;
}

}  // namespace stp::smtp
