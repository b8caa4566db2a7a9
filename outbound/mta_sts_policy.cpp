// MTA-STS record and policy texts; see mta_sts_policy.hpp.
#include "outbound/mta_sts_policy.hpp"

#include "smtp/text.hpp"

#include <algorithm>
#include <charconv>

namespace stp::outbound {
namespace {

// RFC 8461's WSP: the blanks around a policy's keys and values.
constexpr std::string_view kWsp = " \t";

bool set_error(std::string* error, std::string why) {
  if (error) *error = std::move(why);
  return false;
}

// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
bool utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t length = 0;
    unsigned low = 0x80, high = 0xbf;  // the second byte's range
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      length = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      length = 3;
      if (c == 0xe0) low = 0xa0;
      if (c == 0xed) high = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      length = 4;
      if (c == 0xf0) low = 0x90;
      if (c == 0xf4) high = 0x8f;
    } else {
      return false;
    }
    if (s.size() - i < length) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < low || b > high) : (b < 0x80 || b > 0xbf)) return false;
    }
    i += length;
  }
  return true;
}

bool alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// RFC 8461's sts-policy-ext-name, also the TXT record's sts-ext-name.
bool extension_name(std::string_view name) {
  if (name.empty() || name.size() > 32 || !alnum(name.front())) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return alnum(c) || c == '_' || c == '-' || c == '.'; });
}

// A domain name as an mx pattern's rest: letters, digits, hyphens, labels of 1 to 63, at
// most 253 in all; one trailing dot dropped.
std::optional<std::string> domain_name(std::string_view text) {
  if (!text.empty() && text.back() == '.') text.remove_suffix(1);
  if (text.empty() || text.size() > 253) return std::nullopt;
  std::size_t label = 0;
  for (const char c : text) {
    if (c == '.') {
      if (label == 0) return std::nullopt;
      label = 0;
    } else if (alnum(c) || c == '-' || c == '_') {
      if (++label > 63) return std::nullopt;
    } else {
      return std::nullopt;
    }
  }
  if (label == 0) return std::nullopt;
  return text::lower(text);
}

}  // namespace

std::string_view to_string(StsMode mode) {
  switch (mode) {
    case StsMode::enforce:
      return "enforce";
    case StsMode::testing:
      return "testing";
    case StsMode::none:
      return "none";
  }
  return "none";
}

std::string sts_policy_file(const StsPolicy& policy) {
  std::string text = "version: STSv1\nmode: " + std::string(to_string(policy.mode)) + "\n";
  for (const auto& mx : policy.mx) text += "mx: " + mx + "\n";
  return text + "max_age: " + std::to_string(policy.max_age.count()) + "\n";
}

std::optional<StsPolicy> parse_sts_policy(std::string_view text, std::string* error) {
  if (text.size() > kMaxStsPolicySize) {
    set_error(error, "longer than 64 KiB");
    return std::nullopt;
  }
  StsPolicy policy;
  std::size_t reported = 0;  // bytes of policy.lines
  bool have_version = false;
  bool have_mode = false;
  bool have_max_age = false;
  while (!text.empty()) {
    const auto end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (text::trim(line, kWsp).empty()) continue;  // blank lines, commonly at the end
    // Extension values may be UTF-8; control characters are never allowed.
    if (std::any_of(line.begin(), line.end(),
                    [](char c) { return (c >= 0 && c < 0x20 && c != '\t') || c == 0x7f; })) {
      set_error(error, "a control character in a line");
      return std::nullopt;
    }
    if (!utf8(line)) {
      set_error(error, "a line that is not UTF-8");
      return std::nullopt;
    }
    if (reported + line.size() <= kMaxStsReportedBytes) {
      policy.lines.emplace_back(line);
      reported += line.size();
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) {
      set_error(error, "a line without a colon");
      return std::nullopt;
    }
    const std::string_view key = line.substr(0, colon);
    const std::string_view value = text::trim(line.substr(colon + 1), kWsp);
    if (key == "version") {
      if (have_version) continue;
      if (value != "STSv1") {
        set_error(error, "version is not STSv1");
        return std::nullopt;
      }
      have_version = true;
    } else if (key == "mode") {
      if (have_mode) continue;
      if (value == "enforce") {
        policy.mode = StsMode::enforce;
      } else if (value == "testing") {
        policy.mode = StsMode::testing;
      } else if (value == "none") {
        policy.mode = StsMode::none;
      } else {
        set_error(error, "mode is not enforce, testing or none");
        return std::nullopt;
      }
      have_mode = true;
    } else if (key == "max_age") {
      if (have_max_age) continue;
      std::uint64_t seconds = 0;
      const auto [end_of_number, ec] =
          std::from_chars(value.data(), value.data() + value.size(), seconds);
      if (ec != std::errc() || end_of_number != value.data() + value.size() || value.empty() ||
          value.size() > 10) {
        set_error(error, "max_age is not 1 to 10 digits");
        return std::nullopt;
      }
      policy.max_age = std::min(std::chrono::seconds(seconds), kMaxStsMaxAge);
      have_max_age = true;
    } else if (key == "mx") {
      const bool wildcard = value.starts_with("*.");
      auto name = domain_name(wildcard ? value.substr(2) : value);
      if (!name) {
        set_error(error, "a malformed mx pattern");
        return std::nullopt;
      }
      if (policy.mx.size() >= kMaxStsMxPatterns) {
        set_error(error, "more than 64 mx patterns");
        return std::nullopt;
      }
      policy.mx.push_back(wildcard ? "*." + *name : *name);
    } else if (!extension_name(key)) {
      set_error(error, "a malformed key");
      return std::nullopt;
    }
  }
  if (!have_version) {
    set_error(error, "no version: STSv1");
    return std::nullopt;
  }
  if (!have_mode) {
    set_error(error, "no mode");
    return std::nullopt;
  }
  if (!have_max_age) {
    set_error(error, "no max_age");
    return std::nullopt;
  }
  if (policy.mode != StsMode::none && policy.mx.empty()) {
    set_error(error, "no mx with mode " + std::string(to_string(policy.mode)));
    return std::nullopt;
  }
  return policy;
}

std::optional<std::string> parse_sts_record(std::string_view text, std::string* error) {
  constexpr std::string_view kVersion = "v=STSv1";
  if (!text.starts_with(kVersion)) {
    set_error(error, "does not begin v=STSv1");
    return std::nullopt;
  }
  text.remove_prefix(kVersion.size());
  if (const auto rest = text::trim(text, kWsp); !rest.empty() && rest.front() != ';') {
    set_error(error, "v=STSv1 not followed by ;");
    return std::nullopt;
  }
  std::optional<std::string> id;
  while (!text.empty()) {
    const auto end = text.find(';');
    const std::string_view field = text::trim(text.substr(0, end), kWsp);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    if (field.empty()) continue;
    const auto equals = field.find('=');
    const std::string_view name = field.substr(0, equals);
    const std::string_view value =
        equals == std::string_view::npos ? std::string_view() : field.substr(equals + 1);
    if (equals == std::string_view::npos || !extension_name(name) || value.empty() ||
        std::any_of(value.begin(), value.end(),
                    [](char c) { return c <= 0x20 || c >= 0x7f || c == '=' || c == ';'; })) {
      set_error(error, "a malformed field");
      return std::nullopt;
    }
    if (name != "id") continue;
    if (id || value.size() > 32 || !std::all_of(value.begin(), value.end(), alnum)) {
      set_error(error, id ? "two ids" : "an id that is not 1 to 32 letters and digits");
      return std::nullopt;
    }
    id = std::string(value);
  }
  if (!id) set_error(error, "no id");
  return id;
}

std::optional<std::string> sts_record_id(const std::vector<std::string>& records,
                                         std::string* error) {
  const std::string* found = nullptr;
  for (const auto& record : records) {
    // RFC 8461 3.1: records that do not begin "v=STSv1;" are not STS records ("v=STSv10;").
    const auto version_end = record.find_first_of("; \t");
    if (record.substr(0, version_end) != "v=STSv1") continue;
    if (found) {
      set_error(error, "more than one v=STSv1 record");
      return std::nullopt;
    }
    found = &record;
  }
  if (!found) {
    set_error(error, "no v=STSv1 record");
    return std::nullopt;
  }
  return parse_sts_record(*found, error);
}

bool sts_mx_matches(const StsPolicy& policy, std::string_view host) {
  const std::string name = text::lower(host);
  const auto dot = name.find('.');
  const std::string_view parent =
      dot == std::string::npos ? std::string_view() : std::string_view(name).substr(dot + 1);
  return std::any_of(policy.mx.begin(), policy.mx.end(), [&](const std::string& pattern) {
    if (pattern.starts_with("*.")) return !parent.empty() && pattern.substr(2) == parent;
    return pattern == name;
  });
}

}  // namespace stp::outbound
