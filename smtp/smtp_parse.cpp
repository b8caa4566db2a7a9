// SMTP framing and EHLO rewriting; see smtp_parse.hpp.
#include "smtp/smtp_parse.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace stp::smtp {
namespace {

char to_upper_ascii(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return to_upper_ascii(x) == to_upper_ascii(y);
         });
}

std::string_view first_word(std::string_view line) {
  const auto end = line.find_first_of(" \t");
  return line.substr(0, end);
}

struct VerbEntry {
  std::string_view name;
  Verb verb;
  unsigned flags;
  AfterCommand after;
};
namespace flag = command_flag;
constexpr unsigned kTls = flag::needs_tls;
constexpr unsigned kDetached = flag::answered_while_detached;
using After = AfterCommand;
// The command table.
constexpr std::array<VerbEntry, 19> kVerbs{{
    {"HELO", Verb::helo, kDetached, After::command},
    {"EHLO", Verb::ehlo, kDetached, After::command},
    {"MAIL", Verb::mail, kTls, After::command},
    {"RCPT", Verb::rcpt, kTls, After::command},
    {"DATA", Verb::data, kTls, After::message},
    {"BDAT", Verb::bdat, kTls, After::message},
    {"RSET", Verb::rset, kDetached, After::command},
    {"NOOP", Verb::noop, kDetached, After::command},
    {"QUIT", Verb::quit, kDetached, After::nothing},
    {"VRFY", Verb::vrfy, kTls, After::command},
    {"EXPN", Verb::expn, kTls, After::command},
    {"ETRN", Verb::etrn, kTls, After::command},
    {"HELP", Verb::help, 0, After::command},
    {"AUTH", Verb::auth, kTls, After::reply},
    {"STARTTLS", Verb::starttls, 0, After::tls_handshake},
    {"XCLIENT", Verb::xclient, 0, After::command},
    {"XFORWARD", Verb::xforward, 0, After::command},
    {"TURN", Verb::turn, 0, After::command},
    {"ATRN", Verb::turn, 0, After::command},
}};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// C0 controls and DEL; bytes of UTF-8 (0x80 and up) are text.
bool is_control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

// What follows the first word of an MTA's reply text and the spaces after it.
std::string_view after_first_word(std::string_view text) {
  const auto end = text.find_first_of(" \t");
  if (end == std::string_view::npos) return {};
  const auto start = text.find_first_not_of(" \t", end);
  return start == std::string_view::npos ? std::string_view{} : text.substr(start);
}

// The leading letters, digits and '-' of an EHLO line's text (RFC 5321's ehlo-keyword).
std::string_view ehlo_keyword(std::string_view text) {
  std::size_t end = 0;
  while (end < text.size() &&
         (is_digit(text[end]) || text[end] == '-' ||
          (to_upper_ascii(text[end]) >= 'A' && to_upper_ascii(text[end]) <= 'Z'))) {
    ++end;
  }
  return text.substr(0, end);
}

// The lines of a complete reply, terminators stripped.
template <class Visit>
void for_each_reply_line(std::string_view reply, Visit&& visit) {
  while (!reply.empty()) {
    const auto lf = reply.find('\n');
    std::string_view line = reply.substr(0, lf);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    visit(line);
    if (lf == std::string_view::npos) break;
    reply.remove_prefix(lf + 1);
  }
}

}  // namespace

unsigned command_flags(Verb verb) {
  for (const auto& v : kVerbs) {
    if (v.verb == verb) return v.flags;
  }
  return 0;
}

AfterCommand after_command(Verb verb) {
  for (const auto& v : kVerbs) {
    if (v.verb == verb) return v.after;
  }
  return AfterCommand::command;
}

bool has_control_character(std::string_view text) {
  return std::any_of(text.begin(), text.end(), is_control);
}

ParsedCommand parse_command(std::string_view line) {
  if (line.empty()) return {CommandSyntax::empty, {}};
  if (line.front() == ' ') return {CommandSyntax::leading_space, {}};
  if (has_control_character(line)) {
    return {CommandSyntax::control_character, {}};
  }
  Command command{.verb = Verb::other, .line = line, .arguments = {}};
  const auto verb_end = line.find(' ');
  const auto word = line.substr(0, verb_end);
  for (const auto& v : kVerbs) {
    if (iequals(word, v.name)) {
      command.verb = v.verb;
      break;
    }
  }
  if (verb_end != std::string_view::npos) {
    auto arguments = line.substr(verb_end);
    arguments.remove_prefix(std::min(arguments.find_first_not_of(' '), arguments.size()));
    arguments.remove_suffix(arguments.size() - (arguments.find_last_not_of(' ') + 1));
    command.arguments = arguments;
  }
  if (command.verb == Verb::bdat) command.bdat = parse_bdat_arguments(command.arguments);
  return {CommandSyntax::ok, command};
}

CommandFramer::Result CommandFramer::next(std::string_view input) {
  const auto lf = input.find('\n');
  if (skipping_) {
    if (lf == std::string_view::npos) return {Status::need_more, input.size(), {}};
    skipping_ = false;
    return {Status::line_too_long, lf + 1, {}};
  }
  if (lf == std::string_view::npos) {
    // The terminator has not arrived; the line is already too long if it cannot fit.
    if (input.size() > max_line_length_ + 1) {
      skipping_ = true;
      return {Status::need_more, input.size(), {}};
    }
    return {Status::need_more, 0, {}};
  }
  std::string_view line = input.substr(0, lf);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > max_line_length_) return {Status::line_too_long, lf + 1, {}};
  return {Status::line, lf + 1, line};
}

std::optional<BdatArguments> parse_bdat_arguments(std::string_view arguments) {
  const auto size_end = arguments.find(' ');
  const auto size_text = arguments.substr(0, size_end);
  if (size_text.empty()) return std::nullopt;
  BdatArguments parsed;
  const auto [ptr, ec] =
      std::from_chars(size_text.data(), size_text.data() + size_text.size(), parsed.size);
  if (ec != std::errc{} || ptr != size_text.data() + size_text.size()) return std::nullopt;
  if (size_end != std::string_view::npos) {
    auto rest = arguments.substr(size_end);
    rest.remove_prefix(std::min(rest.find_first_not_of(' '), rest.size()));
    rest.remove_suffix(rest.size() - (rest.find_last_not_of(' ') + 1));
    if (rest.empty()) return parsed;
    if (!iequals(rest, "LAST")) return std::nullopt;
    parsed.last = true;
  }
  return parsed;
}

ReplyScan scan_reply(std::string_view input, std::size_t max_reply_length) {
  std::size_t offset = 0;
  int code = 0;
  while (true) {
    const auto lf = input.find('\n', offset);
    if (lf == std::string_view::npos) {
      if (input.size() > max_reply_length) return {ReplyScan::Status::malformed, 0, 0};
      return {ReplyScan::Status::need_more, 0, 0};
    }
    if (lf + 1 > max_reply_length) return {ReplyScan::Status::malformed, 0, 0};
    std::string_view line = input.substr(offset, lf - offset);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() < 3 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]) ||
        line[0] < '2' || line[0] > '5') {
      return {ReplyScan::Status::malformed, 0, 0};
    }
    const int line_code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code != 0 && line_code != code) return {ReplyScan::Status::malformed, 0, 0};
    code = line_code;
    const bool more = line.size() > 3 && line[3] == '-';
    if (line.size() > 3 && !more && line[3] != ' ') return {ReplyScan::Status::malformed, 0, 0};
    offset = lf + 1;
    if (!more) return {ReplyScan::Status::complete, offset, code};
  }
}

bool MtaCapabilities::advertises(std::string_view attribute) const {
  return std::any_of(xclient_attributes.begin(), xclient_attributes.end(),
                     [&](const std::string& a) { return iequals(a, attribute); });
}

std::string clean_reply(std::string_view reply) {
  std::string out;
  out.reserve(reply.size() + 2);
  for_each_reply_line(reply, [&](std::string_view line) {
    for (const char c : line) out += c >= 0x20 && c < 0x7f ? c : '?';
    out += "\r\n";
  });
  return out;
}

std::string without_body_8bitmime(std::string_view mail_line) {
  std::string out;
  std::size_t start = 0;
  while (start <= mail_line.size()) {
    const auto space = mail_line.find(' ', start);
    const auto word =
        mail_line.substr(start, space == std::string_view::npos ? space : space - start);
    if (start == 0 || !iequals(word, "BODY=8BITMIME")) {
      if (!out.empty()) out += ' ';
      out += word;
    }
    if (space == std::string_view::npos) break;
    start = space + 1;
  }
  return out;
}

MtaCapabilities parse_ehlo_capabilities(std::string_view reply) {
  MtaCapabilities caps;
  bool first = true;
  for_each_reply_line(reply, [&](std::string_view line) {
    if (first || line.size() < 4) {  // the first line is the greeting, not a keyword
      first = false;
      return;
    }
    const auto text = line.substr(4);
    const auto keyword = first_word(text);
    if (iequals(keyword, "CHUNKING")) {
      caps.chunking = true;
      return;
    }
    if (iequals(keyword, "8BITMIME")) {
      caps.eight_bit_mime = true;
      return;
    }
    if (iequals(keyword, "STARTTLS")) {
      caps.starttls = true;
      return;
    }
    if (iequals(keyword, "PIPELINING")) {
      caps.pipelining = true;
      return;
    }
    if (iequals(keyword, "SIZE")) {
      const auto limit = after_first_word(text);
      std::uint64_t value = 0;
      const auto [ptr, ec] = std::from_chars(limit.data(), limit.data() + limit.size(), value);
      caps.size_limit = ec == std::errc{} && ptr != limit.data() ? value : 0;
      return;
    }
    if (iequals(keyword, "AUTH") || iequals(keyword.substr(0, 5), "AUTH=")) {
      // "AUTH PLAIN LOGIN", or the older "AUTH=PLAIN LOGIN" some servers still send
      auto rest = iequals(keyword, "AUTH") ? after_first_word(text) : text.substr(5);
      while (!rest.empty()) {
        const auto end = rest.find_first_of(" \t");
        const auto mechanism = rest.substr(0, end);
        if (iequals(mechanism, "PLAIN")) caps.auth_plain = true;
        if (iequals(mechanism, "LOGIN")) caps.auth_login = true;
        caps.auth = true;
        if (end == std::string_view::npos) break;
        const auto next = rest.find_first_not_of(" \t", end);
        rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next);
      }
      return;
    }
    if (!iequals(keyword, "XCLIENT")) return;
    caps.xclient = true;
    auto rest = after_first_word(text);
    while (!rest.empty()) {
      const auto end = rest.find_first_of(" \t");
      std::string attribute(rest.substr(0, end));
      for (auto& c : attribute) c = to_upper_ascii(c);
      caps.xclient_attributes.push_back(std::move(attribute));
      if (end == std::string_view::npos) break;
      const auto next = rest.find_first_not_of(" \t", end);
      rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next);
    }
  });
  return caps;
}

std::string rewrite_ehlo_reply(std::string_view reply, const EhloRewrite& rewrite) {
  if (reply.size() < 3 || reply.substr(0, 3) != "250") return std::string(reply);
  std::vector<std::string_view> lines;
  bool first = true;
  for_each_reply_line(reply, [&](std::string_view line) {
    const auto text = line.size() > 4 ? line.substr(4) : std::string_view{};
    if (!first) {
      if (first_word(text).empty()) return;  // an empty extension line says nothing
      // A CR left inside a line could end it early for some clients: such a line is dropped.
      if (text.find('\r') != std::string_view::npos) return;
      // The keyword as RFC 5321 spells it (letters, digits, '-'), which is also how lenient
      // clients read it: "STARTTLS\v" and "AUTH=LOGIN" (the pre-RFC form) are caught too.
      const auto keyword = ehlo_keyword(text);
      if (iequals(keyword, "STARTTLS") || iequals(keyword, "XCLIENT") ||
          iequals(keyword, "XFORWARD")) {
        return;
      }
      if (rewrite.hide_auth && iequals(keyword, "AUTH")) return;
      // BINARYMIME needs BDAT (RFC 3030): it goes with CHUNKING.
      if (rewrite.hide_chunking &&
          (iequals(keyword, "CHUNKING") || iequals(keyword, "BINARYMIME"))) {
        return;
      }
    }
    first = false;
    lines.push_back(text);
  });
  if (rewrite.offer_starttls) lines.push_back("STARTTLS");

  std::string out;
  std::size_t total = 0;
  for (const auto& l : lines) total += l.size() + 6;
  out.reserve(total);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    out += i + 1 < lines.size() ? "250-" : "250 ";
    const auto start = out.size();
    out += lines[i];
    if (i == 0) {  // the greeting text is kept, but no stray CR in it either
      std::replace(out.begin() + static_cast<std::ptrdiff_t>(start), out.end(), '\r', ' ');
    }
    out += "\r\n";
  }
  return out;
}

}  // namespace stp::smtp
