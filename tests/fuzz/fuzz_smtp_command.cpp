// Fuzzes what the session does with one command line (proxy/smtp_parse.hpp): classify_verb,
// command_arguments, has_forbidden_command_bytes and parse_bdat_arguments.
//
// Input: one command line as CommandFramer hands it over (any bytes; the framer never leaves
// an LF in it, but these functions must not care).
//
// Checks:
// - classify_verb agrees with a plain reading: the first word (up to a space or tab) equal,
//   ignoring ASCII case, to one of the 17 verb names, else Verb::other;
// - command_arguments returns a suffix of the line that does not start with a space or tab,
//   and what precedes it is the first word and a run of spaces and tabs (empty: no arguments);
// - has_forbidden_command_bytes is true exactly when the line holds a NUL or a CR;
// - parse_bdat_arguments, on the line itself and on a BDAT line's arguments, accepts exactly
//   "<1 to 19 digits>[<spaces/tabs>LAST]" with optional trailing spaces and tabs, gives the
//   number's value, and reads its own canonical rendering back to the same result.
#include "fuzz_util.hpp"
#include "proxy/smtp_parse.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace {

using stp::smtp::BdatArguments;
using stp::smtp::Verb;

constexpr std::array<std::pair<std::string_view, Verb>, 17> kVerbs{{
    {"HELO", Verb::helo},
    {"EHLO", Verb::ehlo},
    {"MAIL", Verb::mail},
    {"RCPT", Verb::rcpt},
    {"DATA", Verb::data},
    {"BDAT", Verb::bdat},
    {"RSET", Verb::rset},
    {"NOOP", Verb::noop},
    {"QUIT", Verb::quit},
    {"VRFY", Verb::vrfy},
    {"EXPN", Verb::expn},
    {"ETRN", Verb::etrn},
    {"HELP", Verb::help},
    {"AUTH", Verb::auth},
    {"STARTTLS", Verb::starttls},
    {"XCLIENT", Verb::xclient},
    {"XFORWARD", Verb::xforward},
}};

bool blank(char c) {
  return c == ' ' || c == '\t';
}

Verb expected_verb(std::string_view line) {
  std::size_t end = 0;
  while (end < line.size() && !blank(line[end])) ++end;
  for (const auto& [name, verb] : kVerbs) {
    if (stp::fuzz::iequals(line.substr(0, end), name)) return verb;
  }
  return Verb::other;
}

std::optional<BdatArguments> expected_bdat(std::string_view text) {
  std::size_t digits = 0;
  std::uint64_t size = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    size = size * 10 + static_cast<std::uint64_t>(text[digits] - '0');  // wraps past 20 digits
    ++digits;
  }
  if (digits == 0 || digits > 19) return std::nullopt;  // 19 digits always fit in 64 bits
  std::string_view rest = text.substr(digits);
  if (!rest.empty() && !blank(rest.front())) return std::nullopt;
  while (!rest.empty() && blank(rest.front())) rest.remove_prefix(1);
  while (!rest.empty() && blank(rest.back())) rest.remove_suffix(1);
  if (!rest.empty() && !stp::fuzz::iequals(rest, "LAST")) return std::nullopt;
  return BdatArguments{size, !rest.empty()};
}

void check_bdat(std::string_view arguments) {
  const auto parsed = stp::smtp::parse_bdat_arguments(arguments);
  const auto expected = expected_bdat(arguments);
  FUZZ_CHECK(parsed.has_value() == expected.has_value(), arguments);
  if (!parsed) return;
  FUZZ_CHECK(parsed->size == expected->size && parsed->last == expected->last, arguments);
  const std::string canonical = std::to_string(parsed->size) + (parsed->last ? " LAST" : "");
  const auto again = stp::smtp::parse_bdat_arguments(canonical);
  FUZZ_CHECK(again && again->size == parsed->size && again->last == parsed->last, canonical);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);

  const Verb verb = stp::smtp::classify_verb(line);
  FUZZ_CHECK(verb == expected_verb(line), line);

  const std::string_view arguments = stp::smtp::command_arguments(line);
  if (arguments.empty()) {
    // No arguments: no blank in the line, or only blanks after the first one.
    std::size_t i = 0;
    while (i < line.size() && !blank(line[i])) ++i;
    while (i < line.size() && blank(line[i])) ++i;
    FUZZ_CHECK(i == line.size(), line);
  } else {
    FUZZ_CHECK(arguments.data() >= line.data() &&
                   arguments.data() + arguments.size() == line.data() + line.size(),
               line);
    FUZZ_CHECK(!blank(arguments.front()), line);
    const std::string_view before = line.substr(0, line.size() - arguments.size());
    std::size_t i = 0;
    while (i < before.size() && !blank(before[i])) ++i;
    FUZZ_CHECK(i < before.size(), line);  // at least one blank separates them
    while (i < before.size() && blank(before[i])) ++i;
    FUZZ_CHECK(i == before.size(), line);
  }

  const bool forbidden =
      line.find('\0') != std::string_view::npos || line.find('\r') != std::string_view::npos;
  FUZZ_CHECK(stp::smtp::has_forbidden_command_bytes(line) == forbidden, line);

  check_bdat(line);
  if (verb == Verb::bdat) check_bdat(arguments);
  return 0;
}
