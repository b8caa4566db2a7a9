// Fuzzes what the session does with one command line (smtp/smtp_parse.hpp): parse_command
// and parse_bdat_arguments.
//
// Input: one command line as CommandFramer hands it over (any bytes; the framer never leaves
// an LF in it, but these functions must not care).
//
// Checks:
// - parse_command refuses exactly the empty line, a line starting with a space, and a line
//   holding any control byte (0x00-0x1f, 0x7f); otherwise its verb is the first word (up to a
//   space) equal, ignoring ASCII case, to one of the verb names, else Verb::other;
// - its arguments are a part of the line that neither starts nor ends with a space, preceded
//   by the first word and a run of spaces, followed by spaces only (empty: no arguments);
// - parse_bdat_arguments, on the line itself and on a BDAT line's arguments, accepts exactly
//   "<digits whose value fits in 64 bits>[<spaces>LAST]" with optional trailing spaces, gives
//   the number's value, and reads its own canonical rendering back to the same result.
#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"
#include "verb_names.hpp"

#include <algorithm>
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

bool blank(char c) {
  return c == ' ';
}

bool control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

Verb expected_verb(std::string_view line) {
  std::size_t end = 0;
  while (end < line.size() && !blank(line[end])) ++end;
  return stp::fuzz::verb_named(line.substr(0, end));
}

std::optional<BdatArguments> expected_bdat(std::string_view text) {
  std::size_t digits = 0;
  std::uint64_t size = 0;
  bool overflow = false;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    const auto digit = static_cast<std::uint64_t>(text[digits] - '0');
    if (size > (UINT64_MAX - digit) / 10) overflow = true;
    size = size * 10 + digit;
    ++digits;
  }
  if (digits == 0 || overflow) return std::nullopt;
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

  const auto parsed = stp::smtp::parse_command(line);
  using Syntax = stp::smtp::CommandSyntax;
  const Syntax expected = line.empty()          ? Syntax::empty
                          : line.front() == ' ' ? Syntax::leading_space
                          : std::any_of(line.begin(), line.end(), control)
                              ? Syntax::control_character
                              : Syntax::ok;
  FUZZ_CHECK(parsed.syntax == expected, line);
  const Verb verb = parsed.command.verb;
  const std::string_view arguments = parsed.command.arguments;
  if (parsed.syntax == Syntax::ok) {
    FUZZ_CHECK(parsed.command.line == line, line);
    FUZZ_CHECK(verb == expected_verb(line), line);
    std::size_t i = 0;
    while (i < line.size() && !blank(line[i])) ++i;
    while (i < line.size() && blank(line[i])) ++i;
    if (arguments.empty()) {
      // No arguments: no space in the line, or only spaces after the first word.
      FUZZ_CHECK(i == line.size(), line);
    } else {
      FUZZ_CHECK(arguments.data() == line.data() + i, line);
      FUZZ_CHECK(!blank(arguments.front()) && !blank(arguments.back()), line);
      const auto after = line.substr(i + arguments.size());
      FUZZ_CHECK(std::all_of(after.begin(), after.end(), blank), line);
    }
  }

  check_bdat(line);
  if (verb == Verb::bdat) check_bdat(arguments);
  return 0;
}
