// Differential fuzzing of what a command is: the proxy's parse_command (smtp/smtp_parse.hpp)
// against models of how Postfix and Exim find the verb of the same line. Every place where the
// proxy and the MTA could read a different command from one line is a way past the proxy's
// checks (a client's XCLIENT, AUTH before TLS, MAIL before STARTTLS, an unfiltered DATA).
//
// The models follow the MTAs' own code:
// - Postfix (smtpd.c, smtpd_token.c): the line is a C string (it ends at a NUL); the first
//   token skips leading isspace() bytes (" \t\n\v\f\r") and runs to the next one, with
//   "<...>" and "\"...\"" read as one piece (the quote characters kept in the token), a
//   backslash kept together with the byte after it, and a token ending right after "from:"
//   or "to:"; the verb is that token compared ignoring case.
// - Exim (smtp_in.c smtp_read_command): trailing isspace() bytes dropped; a verb matches when
//   the line starts with its name ignoring case and the name is followed by the end, a space,
//   or the name ends in ':' ("mail from:", "rcpt to:"). No leading white space is skipped.
//
// Input: one command line as CommandFramer hands it over.
//
// Checks, for every line parse_command lets through (CommandSyntax::ok), i.e. every line the
// proxy may forward:
// - Postfix finds the same verb (a name outside the proxy's table counts as "other");
// - Exim finds the same verb, or none at all (it then answers 500 and runs nothing).
#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"
#include "verb_names.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace {

using stp::smtp::Verb;

bool c_isspace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// smtpd_token.c smtp_quoted(): from just after the opening quote to just after its close.
std::size_t postfix_quoted(std::string_view s, std::size_t i, char last, std::string& token) {
  std::string wanted(1, last);
  while (i < s.size()) {
    const char c = s[i++];
    token += c;
    if (c == '\\') {
      if (i >= s.size()) break;
      token += s[i++];
    } else if (c == wanted.back()) {
      if (wanted.size() == 1) return i;
      wanted.pop_back();
    } else if (c == '"') {
      wanted.push_back('"');
    } else if (c == '<' && wanted.back() == '>') {
      wanted.push_back('>');
    }
  }
  return i;
}

// The first token of smtpd_token(), or nullopt when the line has none (Postfix: 500).
std::optional<std::string> postfix_first_token(std::string_view line) {
  line = line.substr(0, line.find('\0'));
  std::string token;
  std::size_t i = 0;
  while (i < line.size()) {
    const char c = line[i++];
    if (c_isspace(c)) {
      while (i < line.size() && c_isspace(line[i])) ++i;
      if (!token.empty()) break;
    } else if (c == '<' || c == '"') {
      token += c;
      i = postfix_quoted(line, i, c == '<' ? '>' : '"', token);
    } else if (c == ':') {
      token += c;
      if (stp::fuzz::iequals(token, "to:") || stp::fuzz::iequals(token, "from:")) break;
    } else {
      if (c == '\\') {
        token += c;
        if (i >= line.size()) break;
        token += line[i++];
        continue;
      }
      token += c;
    }
  }
  if (token.empty()) return std::nullopt;
  return token;
}

// smtp_in.c cmd_list, in its order; nullopt: no command matched (Exim: 500).
std::optional<Verb> exim_verb(std::string_view line) {
  static constexpr std::array<std::pair<std::string_view, Verb>, 18> kExim{{
      {"rset", Verb::rset},
      {"helo", Verb::helo},
      {"ehlo", Verb::ehlo},
      {"auth", Verb::auth},
      {"starttls", Verb::starttls},
      {"xclient", Verb::xclient},
      {"mail from:", Verb::mail},
      {"rcpt to:", Verb::rcpt},
      {"data", Verb::data},
      {"bdat", Verb::bdat},
      {"quit", Verb::quit},
      {"noop", Verb::noop},
      {"atrn", Verb::turn},
      {"etrn", Verb::etrn},
      {"vrfy", Verb::vrfy},
      {"expn", Verb::expn},
      {"help", Verb::help},
      {"wellknown", Verb::other},
  }};
  while (!line.empty() && c_isspace(line.back())) line.remove_suffix(1);
  for (const auto& [name, verb] : kExim) {
    if (line.size() < name.size() || !stp::fuzz::iequals(line.substr(0, name.size()), name)) {
      continue;
    }
    if (name.back() == ':' || line.size() == name.size() || line[name.size()] == ' ') {
      return verb;
    }
  }
  return std::nullopt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const auto parsed = stp::smtp::parse_command(line);
  if (parsed.syntax != stp::smtp::CommandSyntax::ok) return 0;  // answered by the proxy
  const Verb ours = parsed.command.verb;

  const auto postfix_token = postfix_first_token(line);
  FUZZ_CHECK(postfix_token.has_value(), line);
  FUZZ_CHECK(stp::fuzz::verb_named(*postfix_token) == ours, line);

  const auto exim = exim_verb(line);
  FUZZ_CHECK(!exim || *exim == ours, line);
  return 0;
}
