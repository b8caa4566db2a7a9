// Checking one flag's text (see config_values.hpp), and parse_duration (config.hpp).
#include "proxy/config_values.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace stp::flags {
namespace {

namespace ip = boost::asio::ip;

}  // namespace

[[noreturn]] void bad(const std::string& what, std::string_view value) {
  throw BadValue(what, value);
}

std::string escape_control_bytes(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string result;
  result.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7F) {
      result += "\\x";
      result += kHex[byte >> 4];
      result += kHex[byte & 0xF];
    } else {
      result += c;
    }
  }
  return result;
}

Values split_list(std::string_view text) {
  Values items;
  if (trim(text).empty()) return items;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = text.find(',', start);
    const std::string_view item =
        trim(text.substr(start, comma == std::string_view::npos ? comma : comma - start));
    if (item.empty()) bad("empty item in a comma-separated list", text);
    items.emplace_back(item);
    if (comma == std::string_view::npos) return items;
    start = comma + 1;
  }
}

std::optional<std::uint64_t> parse_number(std::string_view text, std::uint64_t min,
                                          std::uint64_t max) {
  std::uint64_t number = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  if (number < min || number > max) return std::nullopt;
  return number;
}

std::uint64_t number_in_range(std::string_view text, std::uint64_t min, std::uint64_t max,
                              std::string_view unit) {
  const auto number = parse_number(text, min, max);
  if (!number) {
    bad("must be " + std::string(unit) + " from " + std::to_string(min) + " to " +
            std::to_string(max),
        text);
  }
  return *number;
}

std::uint16_t parse_port(std::string_view text, std::string_view whole) {
  const auto port = parse_number(text, 1, 65535);
  if (!port) bad("port must be a number from 1 to 65535", whole);
  return static_cast<std::uint16_t>(*port);
}

bool parse_bool(std::string_view text) {
  const std::string word = lower(trim(text));
  if (word == "true" || word == "yes" || word == "on" || word == "1") return true;
  if (word == "false" || word == "no" || word == "off" || word == "0") return false;
  bad("must be true, false, yes, no, on, off, 1 or 0", text);
}

const std::string& one_of(const std::string& text,
                          std::initializer_list<std::string_view> choices) {
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  std::string list;
  for (const auto choice : choices) list += (list.empty() ? "" : ", ") + std::string(choice);
  bad("must be one of " + list, text);
}

bool is_dns_name(std::string_view name, bool allow_underscore) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  std::string_view last_label;
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = name.find('.', start);
    const std::string_view label =
        name.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (const char c : label) {
      const bool ok =
          std::isalnum(static_cast<unsigned char>(c)) || c == '-' || (allow_underscore && c == '_');
      if (!ok) return false;
    }
    last_label = label;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return !std::all_of(last_label.begin(), last_label.end(),
                      [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

std::pair<std::string_view, std::uint16_t> split_host_port(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      bad("expected [IPV6]:PORT", text);
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    boost::system::error_code error;
    ip::make_address_v6(host, error);
    if (error) bad("not an IPv6 address in the brackets", text);
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) bad("expected HOST:PORT", text);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      bad("an IPv6 address must be in brackets, as in [::1]:25", text);
    }
  }
  if (host.empty()) bad("the address is missing", text);
  return {host, parse_port(port, text)};
}

ip::tcp::endpoint parse_listen_endpoint(std::string_view text) {
  const auto [host, port] = split_host_port(text);
  boost::system::error_code error;
  const ip::address address = ip::make_address(host, error);
  if (error) bad("not an IP address (listen on an address, not a name)", text);
  return {address, port};
}

std::chrono::seconds duration_value(const std::string& text, ZeroDuration zero) {
  try {
    return parse_duration(text, zero);
  } catch (const std::invalid_argument& e) {
    bad(e.what(), text);
  }
}

std::vector<std::uint16_t> port_list(const Values& values) {
  std::vector<std::uint16_t> ports;
  for (const std::string& item : split_list(values.front())) {
    const std::uint16_t port = parse_port(item, values.front());
    if (std::count(ports.begin(), ports.end(), port)) {
      bad("port " + item + " listed twice", values.front());
    }
    ports.push_back(port);
  }
  return ports;
}

acl::HostList host_list(const Values& values, acl::HostList::Names names) {
  try {
    return acl::HostList::parse(values.front(), names);
  } catch (const acl::HostListError& e) {
    bad(e.what(), values.front());
  }
}

Values files(const Values& values) {
  for (const std::string& value : values) {
    if (value.empty()) bad("empty file name", value);
  }
  return values;
}

namespace {

// The FILE[,KEYFILE] part of `value` (from `files_at`) for `name`.
tls::NamedCertificate certificate_files(std::string name, const std::string& value,
                                        std::size_t files_at) {
  const std::string files = value.substr(files_at);
  const auto comma = files.find(',');
  tls::NamedCertificate named{
      .name = std::move(name), .certificate = files.substr(0, comma), .privatekey = {}};
  if (comma != std::string::npos) named.privatekey = files.substr(comma + 1);
  if (named.certificate.empty() || (comma != std::string::npos && named.privatekey.empty())) {
    bad("empty file name", value);
  }
  return named;
}

}  // namespace

std::vector<tls::NamedCertificate> sni_certificates(const Values& values) {
  std::vector<tls::NamedCertificate> out;
  for (const std::string& value : values) {
    const auto equals = value.find('=');
    if (equals == std::string::npos) bad("not NAME=FILE[,KEYFILE]", value);
    const std::string name = lower(std::string_view(value).substr(0, equals));
    const std::string_view host = name.starts_with("*.") ? std::string_view(name).substr(2) : name;
    if (host.empty() || host.find('*') != std::string_view::npos ||
        host.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-_") != std::string::npos ||
        host.front() == '.' || host.back() == '.') {
      bad("not a host name or *.domain", value);
    }
    out.push_back(certificate_files(std::move(name), value, equals + 1));
  }
  return out;
}

HostCertificates host_certificates(const Values& values) {
  HostCertificates out;
  for (const std::string& value : values) {
    const auto equals = value.rfind('=');
    if (equals == std::string::npos) bad("not HOSTLIST=FILE[,KEYFILE]", value);
    acl::HostList hosts = host_list({value.substr(0, equals)});
    if (hosts.empty()) bad("empty host list", value);
    std::string name = hosts.text();
    if (std::none_of(out.hosts.begin(), out.hosts.end(),
                     [&](const acl::HostList& known) { return known.text() == name; })) {
      out.hosts.push_back(std::move(hosts));
    }
    out.certificates.push_back(certificate_files(std::move(name), value, equals + 1));
  }
  return out;
}

}  // namespace stp::flags

namespace stp {

std::chrono::seconds parse_duration(std::string_view text, ZeroDuration zero) {
  constexpr std::uint64_t kMaxSeconds = 365ull * 24 * 3600;  // timers stay far from overflow
  const std::size_t digits = text.find_first_not_of("0123456789");
  const std::string_view number_text = text.substr(0, digits);
  const std::string_view suffix =
      digits == std::string_view::npos ? std::string_view{} : text.substr(digits);
  std::uint64_t unit = 0;
  if (suffix.empty() || suffix == "s") {
    unit = 1;
  } else if (suffix == "m") {
    unit = 60;
  } else if (suffix == "h") {
    unit = 3600;
  }
  if (number_text.empty() || unit == 0) {
    throw std::invalid_argument("not a duration: seconds, or a number with an s, m or h suffix");
  }
  std::uint64_t number = 0;
  const auto [end, ec] =
      std::from_chars(number_text.data(), number_text.data() + number_text.size(), number);
  if (ec == std::errc::result_out_of_range || number > kMaxSeconds / unit) {
    throw std::invalid_argument("too long: at most 8760h (a year)");
  }
  if (number == 0 && zero == ZeroDuration::refused) {
    throw std::invalid_argument("must be more than zero");
  }
  return std::chrono::seconds(static_cast<std::int64_t>(number * unit));
}

}  // namespace stp
