// Fuzzes the EHLO reply path (smtp/smtp_parse.hpp): parse_ehlo_capabilities and
// rewrite_ehlo_reply on the MTA's reply to EHLO, as the session gets it (one complete reply per
// scan_reply with the session's 16 KiB limit).
//
// Input: byte 0 holds the rewrite's flags (bit 0 offer_starttls, bit 1 hide_auth); the rest is
// what the MTA sends.
//
// Checks:
// - parse_ehlo_capabilities: xclient is true exactly when an extension line (not the first)
//   has the keyword XCLIENT; its attributes are non-empty, upper-case and without blanks;
// - rewrite_ehlo_reply of a complete non-250 reply returns it unchanged;
// - of a 250 reply: the result is one complete 250 reply per scan_reply that spans all of it,
//   every line ending in CRLF and no other CR in it; it has no STARTTLS, XCLIENT or XFORWARD
//   line (keyword read up to a blank, up to any white space, or as the leading letters, digits
//   and '-' as lenient clients do), except the one "250 STARTTLS" last line when
//   offer_starttls; no AUTH or AUTH= line (read in the same three ways) when hide_auth; every
//   other extension line is one the MTA sent; parse_ehlo_capabilities finds no XCLIENT in it;
//   rewriting the result again with the same flags gives it back;
// - anything else (incomplete, malformed) may come back in any form but must not crash.
#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using stp::fuzz::iequals;
using stp::smtp::ReplyScan;

constexpr std::size_t kMaxReplyLength = 16 * 1024;  // Upstream::kMaxReplyLength (proxy/upstream.hpp)

// The reply's lines without their terminators (LF, with one CR before it dropped).
std::vector<std::string_view> reply_lines(std::string_view reply) {
  if (!reply.empty() && reply.back() == '\n') reply.remove_suffix(1);
  auto lines = stp::fuzz::split(reply, '\n');
  for (auto& line : lines) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  }
  return lines;
}

std::string_view keyword(std::string_view line) {
  const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
  return text.substr(0, text.find_first_of(" \t"));
}

// The keyword as lenient clients read it: up to any white space, CR included; or, as Python's
// smtplib does, the leading run of letters, digits and '-' ("AUTH=LOGIN" is AUTH to it).
std::string_view lenient_keyword(std::string_view line) {
  const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
  return text.substr(0, text.find_first_of(" \t\r\n\v\f"));
}

std::string_view smtplib_keyword(std::string_view line) {
  const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
  std::size_t end = 0;
  while (end < text.size()) {
    const char c = stp::fuzz::upper(text[end]);
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-')) break;
    ++end;
  }
  return text.substr(0, end);
}

bool hidden_keyword(std::string_view k) {
  return iequals(k, "STARTTLS") || iequals(k, "XCLIENT") || iequals(k, "XFORWARD");
}

void check_capabilities(std::string_view reply) {
  const auto caps = stp::smtp::parse_ehlo_capabilities(reply);
  const auto lines = reply_lines(reply);
  const bool advertised = std::any_of(lines.begin() + 1, lines.end(), [](std::string_view l) {
    return iequals(keyword(l), "XCLIENT");
  });
  FUZZ_CHECK(caps.xclient == advertised, reply);
  if (!caps.xclient) FUZZ_CHECK(caps.xclient_attributes.empty(), reply);
  for (const std::string& attribute : caps.xclient_attributes) {
    FUZZ_CHECK(!attribute.empty(), reply);
    for (const char c : attribute) {
      FUZZ_CHECK(!(c >= 'a' && c <= 'z') && c != ' ' && c != '\t', reply);
    }
    FUZZ_CHECK(caps.advertises(attribute), reply);
  }
}

void check_rewrite(std::string_view reply, const stp::smtp::EhloRewrite& rewrite) {
  const std::string out = stp::smtp::rewrite_ehlo_reply(reply, rewrite);
  const ReplyScan scan = stp::smtp::scan_reply(out, out.size() + 1);
  FUZZ_CHECK(
      scan.status == ReplyScan::Status::complete && scan.length == out.size() && scan.code == 250,
      out);
  // A CR inside an MTA line must not reach the client (it could end the line there for some).
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '\n') FUZZ_CHECK(i > 0 && out[i - 1] == '\r', out);
    if (out[i] == '\r') FUZZ_CHECK(i + 1 < out.size() && out[i + 1] == '\n', out);
  }
  FUZZ_CHECK(out.size() >= 2 && out.substr(out.size() - 2) == "\r\n", out);

  std::vector<std::string_view> sent;  // the MTA's extension lines, as text after the code
  const auto in_lines = reply_lines(reply);
  for (std::size_t i = 1; i < in_lines.size(); ++i) {
    sent.push_back(in_lines[i].size() > 4 ? in_lines[i].substr(4) : std::string_view{});
  }
  const auto lines = reply_lines(out);
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::string_view k = keyword(lines[i]);
    const bool last = i + 1 == lines.size();
    if (rewrite.offer_starttls && last) {
      FUZZ_CHECK(lines[i] == "250 STARTTLS", out);
      continue;
    }
    FUZZ_CHECK(!k.empty(), out);
    FUZZ_CHECK(!hidden_keyword(k), out);
    FUZZ_CHECK(!hidden_keyword(lenient_keyword(lines[i])), out);
    FUZZ_CHECK(!hidden_keyword(smtplib_keyword(lines[i])), out);
    if (rewrite.hide_auth) {
      FUZZ_CHECK(!iequals(k, "AUTH") && !iequals(k.substr(0, 5), "AUTH="), out);
      FUZZ_CHECK(!iequals(lenient_keyword(lines[i]), "AUTH"), out);
      FUZZ_CHECK(!iequals(smtplib_keyword(lines[i]), "AUTH"), out);
    }
    const std::string_view text = lines[i].substr(4);
    FUZZ_CHECK(std::find(sent.begin(), sent.end(), text) != sent.end(), out);
  }
  if (rewrite.offer_starttls) FUZZ_CHECK(lines.size() >= 2, out);
  FUZZ_CHECK(!stp::smtp::parse_ehlo_capabilities(out).xclient, out);
  FUZZ_CHECK(stp::smtp::rewrite_ehlo_reply(out, rewrite) == out, out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const stp::smtp::EhloRewrite rewrite{.offer_starttls = (data[0] & 1) != 0,
                                       .hide_auth = (data[0] & 2) != 0};
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  const ReplyScan scan = stp::smtp::scan_reply(input, kMaxReplyLength);
  if (scan.status != ReplyScan::Status::complete) {
    const std::string out = stp::smtp::rewrite_ehlo_reply(input, rewrite);
    if (input.substr(0, 3) != "250") FUZZ_CHECK(out == input, input);
    stp::smtp::parse_ehlo_capabilities(input);
    return 0;
  }
  const std::string_view reply = input.substr(0, scan.length);
  check_capabilities(reply);
  if (scan.code != 250) {
    FUZZ_CHECK(stp::smtp::rewrite_ehlo_reply(reply, rewrite) == reply, reply);
    return 0;
  }
  check_rewrite(reply, rewrite);
  return 0;
}
