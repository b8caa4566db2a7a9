// The proxy's verbs by name, written out here apart from smtp/smtp_parse.cpp's command table,
// so that the fuzz targets check the parser against an independent statement of it.
#pragma once

#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"

#include <array>
#include <string_view>
#include <utility>

namespace stp::fuzz {

inline constexpr std::array<std::pair<std::string_view, smtp::Verb>, 19> kVerbNames{{
    {"HELO", smtp::Verb::helo},         {"EHLO", smtp::Verb::ehlo},
    {"MAIL", smtp::Verb::mail},         {"RCPT", smtp::Verb::rcpt},
    {"DATA", smtp::Verb::data},         {"BDAT", smtp::Verb::bdat},
    {"RSET", smtp::Verb::rset},         {"NOOP", smtp::Verb::noop},
    {"QUIT", smtp::Verb::quit},         {"VRFY", smtp::Verb::vrfy},
    {"EXPN", smtp::Verb::expn},         {"ETRN", smtp::Verb::etrn},
    {"HELP", smtp::Verb::help},         {"AUTH", smtp::Verb::auth},
    {"STARTTLS", smtp::Verb::starttls}, {"XCLIENT", smtp::Verb::xclient},
    {"XFORWARD", smtp::Verb::xforward}, {"TURN", smtp::Verb::turn},
    {"ATRN", smtp::Verb::turn},
}};

// The verb a word names, ignoring ASCII case; Verb::other for any other word.
inline smtp::Verb verb_named(std::string_view word) {
  for (const auto& [name, verb] : kVerbNames) {
    if (iequals(word, name)) return verb;
  }
  return smtp::Verb::other;
}

}  // namespace stp::fuzz
