// Reads and validates the configuration (see config.hpp) from one table, flag_table(), that
// declares every flag once: name, kind, default, help text, and how its text becomes a Config
// field. The command line, the environment and the --config file are all read through it, and
// --help is printed from it; a new flag is one more row.
//
// Trusts nothing it reads: every value is validated here and a bad one stops start-up with a
// ConfigError naming the flag (and the variable or file it came from). It does not open the
// certificate or key files, only the --config file.
#include "proxy/config.hpp"

#include <boost/program_options.hpp>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <ostream>
#include <sstream>
#include <thread>

#ifndef STP_VERSION
#define STP_VERSION "unknown"
#endif

namespace stp {

namespace {

// Control bytes as \xHH; everything else as it is.
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

}  // namespace

ConfigError::ConfigError(std::string_view message)
    : std::invalid_argument(escape_control_bytes(message)) {}

namespace {

namespace po = boost::program_options;
namespace ip = boost::asio::ip;

using Values = std::vector<std::string>;

constexpr std::string_view kProgram = "smtp-tls-proxy";
constexpr std::string_view kEnvPrefix = "SMTP_TLS_PROXY_";
constexpr std::string_view kWhitespace = " \t\r\n";

// A value that does not fit its flag. parse_config adds the flag's name and where the value
// came from, so the code that checks values never has to repeat them.
class BadValue : public std::invalid_argument {
 public:
  BadValue(const std::string& what, std::string_view value)
      : std::invalid_argument(what), value_(value) {}
  const std::string& value() const { return value_; }

 private:
  std::string value_;
};

[[noreturn]] void bad(const std::string& what, std::string_view value) {
  throw BadValue(what, value);
}

// ---- the table ----------------------------------------------------------------------------

enum class Kind {
  value,   // one value: `--hostname NAME`; at most once per source
  list,    // repeatable: `--listen A --listen B`; comma-separated in the environment
  toggle,  // bare on the command line; true/false/yes/no/on/off/1/0 elsewhere
};

enum Source : unsigned { kCommandLine = 1, kEnvironment = 2, kFile = 4, kEverywhere = 7 };

struct Flag {
  std::string name;  // without the leading "--"; the environment and file names follow
  Kind kind = Kind::value;
  std::string argument{};  // shown in --help, e.g. "ADDR:PORT"; unused for toggles
  Values defaults{};       // applied (and validated) like any other value when nothing sets it
  std::string help{};
  std::string default_help{};  // shown by --help instead of `defaults` when not empty
  // Stores the values in the Config; throws BadValue. Null for flags parse_config handles.
  void (*apply)(Config&, const Values&) = nullptr;
  unsigned sources = kEverywhere;
};

// ---- small parsers (each throws BadValue with what is wrong and the offending text) --------

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(kWhitespace) - first + 1);
}

std::string lower(std::string_view text) {
  std::string result(text);
  for (char& c : result) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return result;
}

// Comma-separated items, whitespace around them dropped; an empty text is an empty list.
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

// A whole decimal number in [min, max], or nullopt.
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

// `text` if it is one of `choices` (exactly), else BadValue listing them.
const std::string& one_of(const std::string& text,
                          std::initializer_list<std::string_view> choices) {
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  std::string list;
  for (const auto choice : choices) list += (list.empty() ? "" : ", ") + std::string(choice);
  bad("must be one of " + list, text);
}

// A DNS name: dot-separated labels of letters, digits and `-` (and `_` when allowed, as
// container service names have), at most 253 characters, not all-numeric at the end (which
// a resolver would read as an IPv4 address). One trailing dot is allowed.
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

// "HOST:PORT" or "[IPV6]:PORT" split into the host (brackets removed) and the port.
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

// ---- the flags -----------------------------------------------------------------------------

std::string machine_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

unsigned default_threads() {
  return std::clamp(std::thread::hardware_concurrency(), 1u, 256u);
}

std::chrono::seconds duration_value(const std::string& text,
                                    ZeroDuration zero = ZeroDuration::refused) {
  try {
    return parse_duration(text, zero);
  } catch (const std::invalid_argument& e) {
    bad(e.what(), text);
  }
}

void apply_listen(Config& config, const Values& values) {
  if (values.empty()) bad("at least one address is needed", "");
  config.listeners.clear();
  for (const std::string& value : values) {
    const Listener listener{parse_listen_endpoint(value)};
    for (const Listener& other : config.listeners) {
      if (other.endpoint == listener.endpoint) bad("listed twice", value);
    }
    config.listeners.push_back(listener);
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

void apply_tls_on_connect_ports(Config& config, const Values& values) {
  config.tls_on_connect_ports = port_list(values);
}

acl::HostList host_list(const Values& values) {
  try {
    return acl::HostList::parse(values.front());
  } catch (const acl::HostListError& e) {
    bad(e.what(), values.front());
  }
}

void apply_backend(Config& config, const Values& values) {
  const std::string& value = values.front();
  // make_address() would read only what comes before a NUL.
  if (value.find('\0') != std::string::npos) bad("contains a NUL byte", value);
  const auto [host, port] = split_host_port(value);
  boost::system::error_code error;
  ip::make_address(host, error);
  if (error && !is_dns_name(host, true)) bad("not a host name or an IP address", value);
  config.backend_host = std::string(host);
  config.backend_port = port;
}

void apply_hostname(Config& config, const Values& values) {
  const std::string& value = values.front();
  if (!is_dns_name(value, false) || value.back() == '.') {
    bad("must be a DNS name (letters, digits, '-' and '.'); set --hostname", value);
  }
  config.hostname = value;
}

Values files(const Values& values) {
  for (const std::string& value : values) {
    if (value.empty()) bad("empty file name", value);
  }
  return values;
}

void apply_tls_advertise_hosts(Config& config, const Values& values) {
  try {
    config.tls_advertise_hosts = acl::HostList::parse(values.front());
  } catch (const acl::HostListError& e) {
    bad(e.what(), values.front());
  }
}

void apply_tls_min_protocol(Config& config, const Values& values) {
  const std::string word = lower(values.front());
  if (word == "tlsv1.2") {
    config.tls_min_protocol = "TLSv1.2";
  } else if (word == "tlsv1.3") {
    config.tls_min_protocol = "TLSv1.3";
  } else {
    bad("must be TLSv1.2 or TLSv1.3", values.front());
  }
}

void apply_tls_dhparam(Config& config, const Values& values) {
  const std::string& value = values.front();
  const bool named = value == "ffdhe2048" || value == "ffdhe3072" || value == "ffdhe4096" ||
                     value == "ffdhe6144" || value == "ffdhe8192";
  if (!named && value.starts_with("ffdhe") && value.find('/') == std::string::npos) {
    bad("unknown group: use ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or ffdhe8192", value);
  }
  config.tls_dhparam = value;
}

// Every flag, once. Order is --help's order; values are applied in this order too.
std::vector<Flag> flag_table() {
  return {
      {.name = "help",
       .kind = Kind::toggle,
       .help = "print this help and exit",
       .default_help = "-",
       .sources = kCommandLine},
      {.name = "version",
       .kind = Kind::toggle,
       .help = "print the version and exit",
       .default_help = "-",
       .sources = kCommandLine},
      {.name = "config",
       .argument = "FILE",
       .help = "read flags from FILE: `name = value` lines (a repeatable flag's name may repeat), "
               "`#` comments",
       .default_help = "none",
       .sources = kCommandLine | kEnvironment},
      {.name = "listen",
       .kind = Kind::list,
       .argument = "ADDR:PORT",
       .defaults = {"0.0.0.0:25", "0.0.0.0:587", "0.0.0.0:465"},
       .help = "accept clients on this address (repeatable; IPv6 as [::]:25)",
       .apply = apply_listen},
      {.name = "tls-on-connect-ports",
       .argument = "LIST",
       .defaults = {"465"},
       .help = "comma-separated ports, among those listened on, that speak TLS from the first "
               "byte",
       .apply = apply_tls_on_connect_ports},
      {.name = "tls-on-connect",
       .kind = Kind::toggle,
       .defaults = {"false"},
       .help = "implicit TLS on every port (overrides --tls-on-connect-ports)",
       .default_help = "off",
       .apply = [](Config& c, const Values& v) { c.tls_on_connect = parse_bool(v.front()); }},
      {.name = "backend",
       .argument = "HOST:PORT",
       .defaults = {"127.0.0.1:10025"},
       .help = "the plain MTA (HOST is a name, an IPv4 address or an [IPv6] address)",
       .apply = apply_backend},
      {.name = "backend-metadata",
       .argument = "xclient|proxy-v2|none",
       .defaults = {"xclient"},
       .help = "how the MTA learns who the client is and what TLS it used: XCLIENT, a PROXY v2 "
               "header with TLS TLVs, or `none` (only for an MTA that trusts no local address)",
       .apply =
           [](Config& c, const Values& v) {
             const auto& mode = one_of(v.front(), {"xclient", "proxy-v2", "none"});
             c.backend_metadata = mode == "xclient"    ? BackendMetadata::xclient
                                  : mode == "proxy-v2" ? BackendMetadata::proxy_v2
                                                       : BackendMetadata::none;
           }},
      {.name = "backend-idle-timeout",
       .argument = "DURATION",
       .defaults = {"5s"},
       .help = "close the MTA connection of a client idle this long outside a mail transaction "
               "(and not authenticated); it is reopened, the client identified and its HELO "
               "replayed, at the client's next command that needs the MTA (0: keep it)",
       .apply =
           [](Config& c, const Values& v) {
             c.backend_idle_timeout = duration_value(v.front(), ZeroDuration::allowed);
           }},
      {.name = "proxy-v2-max-header",
       .argument = "BYTES",
       .defaults = {"232"},
       .help = "longest PROXY v2 header sent to the MTA; TLVs that do not fit are left out "
               "(Exim 4.96 reads 232 bytes at most, Postfix 536)",
       .apply =
           [](Config& c, const Values& v) {
             c.proxy_v2_max_header = number_in_range(v.front(), 64, 536, "a number of bytes");
           }},
      {.name = "hostname",
       .argument = "NAME",
       .defaults = {machine_name()},
       .help = "the name the proxy gives in its greeting",
       .default_help = "this machine's name, " + machine_name(),
       .apply = apply_hostname},
      {.name = "tls-certificate",
       .kind = Kind::list,
       .argument = "FILE",
       .help = "PEM certificate chain, leaf first (repeatable, e.g. one RSA and one ECDSA)",
       .default_help = "a generated self-signed certificate",
       .apply = [](Config& c, const Values& v) { c.tls_certificates = files(v); }},
      {.name = "tls-privatekey",
       .kind = Kind::list,
       .argument = "FILE",
       .help = "PEM private key of the --tls-certificate in the same position (repeatable; "
               "omitted: the key is in the certificate file)",
       .default_help = "in the certificate file",
       .apply = [](Config& c, const Values& v) { c.tls_privatekeys = files(v); }},
      {.name = "tls-advertise-hosts",
       .argument = "HOSTLIST",
       .defaults = {"*"},
       .help = "clients offered STARTTLS: comma-separated *, addresses, CIDRs, `!` negates, "
               "first match decides",
       .apply = apply_tls_advertise_hosts},
      {.name = "tls-require-ciphers",
       .argument = "STRING",
       .defaults = {""},
       .help = "OpenSSL cipher string for TLS 1.2 and below (`_` read as `-`)",
       .default_help = "forward-secret AEAD suites (ECDHE/DHE with AES-GCM or ChaCha20)",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_require_ciphers = v.front();
             std::replace(c.tls_require_ciphers.begin(), c.tls_require_ciphers.end(), '_', '-');
           }},
      {.name = "tls-ciphersuites",
       .argument = "STRING",
       .defaults = {""},
       .help = "OpenSSL TLS 1.3 ciphersuites",
       .default_help = "OpenSSL's defaults",
       .apply = [](Config& c, const Values& v) { c.tls_ciphersuites = v.front(); }},
      {.name = "tls-min-protocol",
       .argument = "VERSION",
       .defaults = {"TLSv1.2"},
       .help = "lowest TLS version accepted: TLSv1.2 or TLSv1.3",
       .apply = apply_tls_min_protocol},
      {.name = "tls-dhparam",
       .argument = "FILE|GROUP",
       .defaults = {""},
       .help = "Diffie-Hellman parameters for DHE: a PEM file, or ffdhe2048, ffdhe3072, "
               "ffdhe4096, ffdhe6144, ffdhe8192",
       .default_help = "none, ECDHE only",
       .apply = apply_tls_dhparam},
      {.name = "tls-verify-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients that must present a certificate that verifies, or are dropped",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_verify_hosts = host_list(v); }},
      {.name = "tls-try-verify-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients asked for a certificate; the session goes on without one, and the "
               "outcome is recorded",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_try_verify_hosts = host_list(v); }},
      {.name = "tls-verify-certificates",
       .argument = "PATH",
       .defaults = {""},
       .help = "CA certificates for client certificates: a PEM file (its CA names are sent), an "
               "OpenSSL hashed directory, or `system`",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_verify_certificates = v.front(); }},
      {.name = "tls-crl",
       .argument = "FILE",
       .defaults = {""},
       .help = "PEM certificate revocation lists (one file may hold several)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_crl = v.front(); }},
      {.name = "tls-verify-depth",
       .argument = "N",
       .defaults = {"9"},
       .help = "most intermediate CAs between a client certificate and a trusted CA",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_verify_depth =
                 static_cast<unsigned>(number_in_range(v.front(), 0, 100, "a number"));
           }},
      {.name = "tls-verify-cache-time",
       .argument = "DURATION",
       .defaults = {"60s"},
       .help = "how long a client certificate chain's verification result is reused for the "
               "same chain (0 turns it off); a change to the CA or CRL files starts afresh",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_verify_cache_time = duration_value(v.front(), ZeroDuration::allowed);
           }},
      {.name = "tls-peerdn-format",
       .argument = "openssl|rfc2253",
       .defaults = {"rfc2253"},
       .help = "how a client certificate's DN is written in logs and headers",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_peerdn_format = one_of(v.front(), {"openssl", "rfc2253"}) == "openssl"
                                       ? PeerDnFormat::openssl
                                       : PeerDnFormat::rfc2253;
           }},
      {.name = "received-header",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "add a Received: trace header with the TLS details to every message",
       .apply = [](Config& c, const Values& v) { c.received_header = parse_bool(v.front()); }},
      {.name = "tls-require-ports",
       .argument = "LIST",
       .defaults = {"587"},
       .help = "ports where mail commands need STARTTLS first (530 5.7.0 otherwise)",
       .apply = [](Config& c, const Values& v) { c.tls_require_ports = port_list(v); }},
      {.name = "tls-require-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients whose mail commands need STARTTLS first",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_require_hosts = host_list(v); }},
      {.name = "tls-require-verified-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients that need a verified certificate before MAIL (550 5.7.1 otherwise)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_require_verified_hosts = host_list(v); }},
      {.name = "client-name-lookup",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "look up the client's name (reverse DNS confirmed by forward DNS) for the MTA",
       .apply = [](Config& c, const Values& v) { c.client_name_lookup = parse_bool(v.front()); }},
      {.name = "smtp-receive-timeout",
       .argument = "DURATION",
       .defaults = {"300s"},
       .help = "drop a client silent this long (seconds, or with an s, m or h suffix)",
       .apply = [](Config& c,
                   const Values& v) { c.smtp_receive_timeout = duration_value(v.front()); }},
      {.name = "tls-handshake-timeout",
       .argument = "DURATION",
       .defaults = {"30s"},
       .help = "drop a client whose TLS handshake takes longer",
       .apply = [](Config& c,
                   const Values& v) { c.tls_handshake_timeout = duration_value(v.front()); }},
      // The MTA must read every line the proxy forwards as one line: Postfix reads 2047 bytes
      // and its CRLF (line_length_limit 2048), Exim 16383. A longer line would be cut into
      // two commands there, one of them never checked here.
      {.name = "max-line-length",
       .argument = "BYTES",
       .defaults = {"2047"},
       .help = "longest command line accepted from a client (at most what the MTA reads whole)",
       .apply =
           [](Config& c, const Values& v) {
             c.max_line_length = number_in_range(v.front(), 512, 16383, "a number of bytes");
           }},
      {.name = "bare-lf",
       .argument = "normalize|reject",
       .defaults = {"normalize"},
       .help = "what to do with a bare LF or CR in message content",
       .apply =
           [](Config& c, const Values& v) {
             c.bare_lf = one_of(v.front(), {"normalize", "reject"}) == "normalize"
                             ? BareLfPolicy::normalize
                             : BareLfPolicy::reject;
           }},
      {.name = "threads",
       .argument = "N",
       .defaults = {std::to_string(default_threads())},
       .help = "threads serving connections",
       .default_help = "the number of cores, " + std::to_string(default_threads()),
       .apply =
           [](Config& c, const Values& v) {
             c.threads = static_cast<unsigned>(number_in_range(v.front(), 1, 256, "a number"));
           }},
      {.name = "max-connections",
       .argument = "N",
       .defaults = {"10000"},
       .help = "sessions at once; past it new clients get 421 4.7.0",
       .apply =
           [](Config& c, const Values& v) {
             c.max_connections = number_in_range(v.front(), 1, 1000000, "a number");
           }},
      {.name = "max-connections-per-host",
       .argument = "N",
       .defaults = {"50"},
       .help = "sessions at once from one client address (one /64 for IPv6)",
       .apply =
           [](Config& c, const Values& v) {
             c.max_connections_per_host =
                 static_cast<unsigned>(number_in_range(v.front(), 1, 1000000, "a number"));
           }},
      {.name = "max-errors",
       .argument = "N",
       .defaults = {"20"},
       .help = "refused or failed commands in a session before 421 4.7.0 and close",
       .apply =
           [](Config& c, const Values& v) {
             c.max_errors =
                 static_cast<unsigned>(number_in_range(v.front(), 1, 100000, "a number"));
           }},
      {.name = "max-pipelined-commands",
       .argument = "N",
       .defaults = {"100"},
       .help = "commands taken from a client before their replies are sent",
       .apply =
           [](Config& c, const Values& v) {
             c.max_pipelined_commands = number_in_range(v.front(), 1, 10000, "a number");
           }},
      {.name = "user",
       .argument = "NAME",
       .defaults = {""},
       .help = "after binding the ports, switch to this user and its group",
       .default_help = "none: stay as started",
       .apply = [](Config& c, const Values& v) { c.user = v.front(); }},
      {.name = "proxy-protocol-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "load balancers whose connections start with a PROXY v1/v2 header giving the "
               "real client",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.proxy_protocol_hosts = host_list(v); }},
      {.name = "log-level",
       .argument = "LEVEL",
       .defaults = {"info"},
       .help = "trace, debug, info, warn or error",
       .apply =
           [](Config& c, const Values& v) {
             c.log_level = one_of(v.front(), {"trace", "debug", "info", "warn", "error"});
           }},
      {.name = "log-format",
       .argument = "text|json",
       .defaults = {"text"},
       .help = "log lines as plain text or as one JSON object each",
       .apply =
           [](Config& c, const Values& v) {
             c.log_format =
                 one_of(v.front(), {"text", "json"}) == "json" ? LogFormat::json : LogFormat::text;
           }},
      {.name = "metrics-listen",
       .argument = "ADDR:PORT",
       .defaults = {"0.0.0.0:9225"},
       .help = "serve /metrics, /healthz and /readyz here; \"\" turns it off",
       .apply =
           [](Config& c, const Values& v) {
             if (v.front().empty()) {
               c.metrics_listen.reset();
             } else {
               c.metrics_listen = parse_listen_endpoint(v.front());
             }
           }},
      {.name = "shutdown-grace",
       .argument = "DURATION",
       .defaults = {"30s"},
       .help = "on SIGTERM, how long sessions in flight may take to finish",
       .apply = [](Config& c, const Values& v) { c.shutdown_grace = duration_value(v.front()); }},
      {.name = "backend-probe-interval",
       .argument = "DURATION",
       .defaults = {"10s"},
       .help = "how often the MTA is probed (connect, greeting, QUIT) for /readyz",
       .apply = [](Config& c,
                   const Values& v) { c.backend_probe_interval = duration_value(v.front()); }},
      {.name = "reload-check-interval",
       .argument = "DURATION",
       .defaults = {"10s"},
       .help = "how often certificate and key files are checked for changes (SIGHUP reloads at "
               "once)",
       .apply = [](Config& c,
                   const Values& v) { c.reload_check_interval = duration_value(v.front()); }},
  };
}

// Checks between flags, once every flag is applied.
void check_together(Config& config, bool ports_given) {
  if (config.tls_privatekeys.size() > config.tls_certificates.size()) {
    throw ConfigError("--tls-privatekey: more keys than --tls-certificate files (" +
                      std::to_string(config.tls_privatekeys.size()) + " > " +
                      std::to_string(config.tls_certificates.size()) + ")");
  }
  const auto implicit = [&](std::uint16_t port) {
    return std::count(config.tls_on_connect_ports.begin(), config.tls_on_connect_ports.end(),
                      port) > 0;
  };
  if (ports_given) {
    for (const std::uint16_t port : config.tls_on_connect_ports) {
      const bool listened =
          std::any_of(config.listeners.begin(), config.listeners.end(),
                      [&](const Listener& l) { return l.endpoint.port() == port; });
      if (!listened) {
        throw ConfigError("--tls-on-connect-ports: port is not among the --listen addresses (" +
                          std::to_string(port) + ")");
      }
    }
  }
  for (Listener& listener : config.listeners) {
    listener.implicit_tls = config.tls_on_connect || implicit(listener.endpoint.port());
  }
  const bool asks_for_certificates = !config.tls_verify_hosts.empty() ||
                                     !config.tls_try_verify_hosts.empty() ||
                                     !config.tls_require_verified_hosts.empty();
  if (asks_for_certificates && config.tls_verify_certificates.empty()) {
    throw ConfigError(
        "--tls-verify-certificates: needed to verify client certificates (set because of "
        "--tls-verify-hosts, --tls-try-verify-hosts or --tls-require-verified-hosts)");
  }
}

// ---- reading the sources -------------------------------------------------------------------

// What one source said about one flag.
struct Setting {
  Values values;
  std::string origin;  // for messages: empty for the command line
};
using Settings = std::map<std::string, Setting, std::less<>>;

std::string env_name(std::string_view flag) {
  std::string name(kEnvPrefix);
  for (const char c : flag) {
    name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return name;
}

// Operator text inside a message: control bytes escaped (ConfigError does it again, to no
// effect, for the whole message), long values cut.
std::string printable(std::string_view text) {
  constexpr std::size_t kLimit = 200;
  std::string result = escape_control_bytes(text.substr(0, kLimit));
  if (text.size() > kLimit) result += "...";
  return result;
}

ConfigError flag_error(std::string_view flag, const std::string& what) {
  return ConfigError("--" + std::string(flag) + ": " + what);
}

// Adds one occurrence; a flag that is not repeatable may occur once per source.
void add(Settings& settings, const Flag& flag, std::string value, const std::string& origin) {
  Setting& setting = settings[flag.name];
  if (!setting.values.empty() && flag.kind != Kind::list) {
    throw flag_error(flag.name, "given more than once (" + printable(value) + ")" +
                                    (origin.empty() ? "" : " [in " + origin + "]"));
  }
  setting.values.push_back(std::move(value));
  setting.origin = origin;
}

const Flag* find_flag(const std::vector<Flag>& table, std::string_view name) {
  const auto it =
      std::find_if(table.begin(), table.end(), [&](const Flag& f) { return f.name == name; });
  return it == table.end() ? nullptr : &*it;
}

// Description for --help and the parsers: every flag readable from `source`.
po::options_description describe(const std::vector<Flag>& table, unsigned source) {
  po::options_description description("Flags", 100, 50);
  for (const Flag& flag : table) {
    if (!(flag.sources & source)) continue;
    const po::value_semantic* semantic = nullptr;
    if (flag.kind == Kind::toggle && source == kCommandLine) {
      semantic = new po::untyped_value(/*zero_tokens=*/true);
    } else {
      semantic =
          po::value<std::string>()->value_name(flag.argument.empty() ? "BOOL" : flag.argument);
    }
    std::string shown = flag.default_help;
    if (shown.empty()) {
      for (const std::string& value : flag.defaults) shown += (shown.empty() ? "" : ", ") + value;
    }
    std::string help = flag.help;
    if (shown != "-") help += " (default: " + shown + ")";
    description.add_options()(flag.name.c_str(), semantic, help.c_str());
  }
  return description;
}

// `e`'s option as the user wrote it, or the flag's name with `--`. "--=x" names none.
std::string option_of(const po::error_with_option_name& e) {
  std::string name = e.get_option_name();
  if (name.empty() || name == "--") return "--: an option name is missing before '=';";
  if (name.front() != '-') name = "--" + name;
  return name;
}

Settings read_command_line(const std::vector<Flag>& table, int argc, const char* const argv[]) {
  const po::options_description description = describe(table, kCommandLine);
  const auto style = po::command_line_style::unix_style ^ po::command_line_style::allow_guessing;
  po::parsed_options parsed(&description);
  try {
    parsed = po::command_line_parser(argc, argv)
                 .options(description)
                 .style(style)
                 .allow_unregistered()
                 .run();
  } catch (const po::invalid_command_line_syntax& e) {
    switch (e.kind()) {
      case po::invalid_command_line_syntax::missing_parameter:
      case po::invalid_command_line_syntax::empty_adjacent_parameter:
        throw ConfigError(option_of(e) + ": needs a value");
      case po::invalid_command_line_syntax::extra_parameter:
        throw ConfigError(option_of(e) + ": is a switch and takes no value");
      default:
        throw ConfigError(option_of(e) + ": " + e.what());
    }
  } catch (const po::error_with_option_name& e) {
    throw ConfigError(option_of(e) + ": " + e.what());
  } catch (const po::error& e) {
    throw ConfigError(std::string("command line: ") + e.what());
  }

  Settings settings;
  for (const po::option& option : parsed.options) {
    if (option.unregistered) {
      const std::string written =
          option.original_tokens.empty() ? option.string_key : option.original_tokens.front();
      throw ConfigError(printable(written.substr(0, written.find('='))) + ": unknown flag");
    }
    if (option.position_key >= 0 || option.string_key.empty()) {
      const std::string written = option.value.empty() ? "" : option.value.front();
      throw ConfigError(printable(written) + ": unexpected argument (flags start with --)");
    }
    const Flag& flag = *find_flag(table, option.string_key);
    std::string value = flag.kind == Kind::toggle ? "true" : option.value.front();
    // Program_options takes `--b` as the value in `--a --b`; no value of ours looks like a flag.
    if (value.starts_with("--") && find_flag(table, value.substr(2, value.find('=') - 2))) {
      throw flag_error(flag.name, "needs a value");
    }
    add(settings, flag, std::move(value), "");
  }
  return settings;
}

Settings read_environment(const std::vector<Flag>& table, const EnvLookup& env) {
  Settings settings;
  for (const Flag& flag : table) {
    if (!(flag.sources & kEnvironment)) continue;
    const std::string name = env_name(flag.name);
    const std::optional<std::string> text = env(name);
    if (!text) continue;
    Setting& setting = settings[flag.name];
    setting.origin = name;
    if (flag.kind == Kind::list) {
      try {
        setting.values = split_list(*text);
      } catch (const BadValue& e) {
        throw flag_error(flag.name,
                         std::string(e.what()) + " (" + printable(*text) + ") [in " + name + "]");
      }
    } else {
      setting.values = {*text};
    }
  }
  return settings;
}

Settings read_file(const std::vector<Flag>& table, const std::string& path) {
  std::ifstream file(path);
  if (!file) throw ConfigError("--config: cannot read the file (" + printable(path) + ")");
  const po::options_description description = describe(table, kFile);
  po::parsed_options parsed(&description);
  try {
    parsed = po::parse_config_file(file, description, /*allow_unregistered=*/false);
  } catch (const po::unknown_option& e) {
    throw ConfigError("--config: unknown key (" + printable(e.get_option_name()) + ") [in " +
                      printable(path) + "]");
  } catch (const po::invalid_config_file_syntax& e) {
    throw ConfigError("--config: not a `name = value` line (" + printable(e.tokens()) + ") [in " +
                      printable(path) + "]");
  } catch (const po::error& e) {
    throw ConfigError("--config: " + std::string(e.what()) + " [in " + printable(path) + "]");
  }
  if (file.bad()) throw ConfigError("--config: error reading the file (" + printable(path) + ")");

  Settings settings;
  for (const po::option& option : parsed.options) {
    add(settings, *find_flag(table, option.string_key),
        option.value.empty() ? "" : option.value.front(), path);
  }
  return settings;
}

std::string help_text(const std::vector<Flag>& table) {
  std::ostringstream text;
  text << "Usage: " << kProgram << " [FLAG]...\n"
       << "An SMTP TLS front for a plain MTA: terminates STARTTLS and implicit TLS and hands the "
          "MTA\nthe real client over XCLIENT.\n\n"
       << "Each flag is also read from the environment as SMTP_TLS_PROXY_<NAME> "
          "(--tls-advertise-hosts\n"
       << "is SMTP_TLS_PROXY_TLS_ADVERTISE_HOSTS; a repeatable flag takes a comma-separated value, "
          "a\n"
       << "switch true/false/yes/no/on/off/1/0) and from --config FILE as `name = value` lines.\n"
       << "Precedence: command line, then environment, then file.\n\n"
       << describe(table, kCommandLine);
  return text.str();
}

}  // namespace

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

std::optional<Config> parse_config(int argc, const char* const argv[], const EnvLookup& env,
                                   std::ostream& out) {
  const std::vector<Flag> table = flag_table();
  const char* const no_arguments[] = {kProgram.data()};
  if (argc < 1) {
    argc = 1;
    argv = no_arguments;
  }

  const Settings command_line = read_command_line(table, argc, argv);
  if (command_line.contains("help")) {
    out << help_text(table);
    return std::nullopt;
  }
  if (command_line.contains("version")) {
    out << kProgram << ' ' << STP_VERSION << '\n';
    return std::nullopt;
  }
  const Settings environment = read_environment(table, env);

  Settings file;
  for (const Settings* source : std::array{&command_line, &environment}) {
    if (const auto it = source->find("config"); it != source->end()) {
      const std::string& path = it->second.values.front();
      if (path.empty()) throw ConfigError("--config: empty file name");
      file = read_file(table, path);
      break;
    }
  }

  Config config;
  bool ports_given = false;
  for (const Flag& flag : table) {
    if (!flag.apply) continue;
    const Setting* setting = nullptr;
    for (const Settings* source :
         std::array<const Settings*, 3>{&command_line, &environment, &file}) {
      if (const auto it = source->find(flag.name); it != source->end()) {
        setting = &it->second;
        break;
      }
    }
    if (flag.name == "tls-on-connect-ports") ports_given = setting != nullptr;
    try {
      flag.apply(config, setting ? setting->values : flag.defaults);
    } catch (const BadValue& e) {
      std::string origin;
      if (!setting) {
        origin = " [the default]";
      } else if (!setting->origin.empty()) {
        origin = " [in " + setting->origin + "]";
      }
      throw flag_error(flag.name,
                       std::string(e.what()) + " (" + printable(e.value()) + ")" + origin);
    }
  }
  check_together(config, ports_given);
  return config;
}

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

tls::ServerOptions server_tls_options(const Config& config) {
  return {
      .hostname = config.hostname,
      .certificates = config.tls_certificates,
      .privatekeys = config.tls_privatekeys,
      .min_protocol = config.tls_min_protocol,
      .require_ciphers = config.tls_require_ciphers,
      .ciphersuites = config.tls_ciphersuites,
      .dhparam = config.tls_dhparam,
      .verify_certificates = config.tls_verify_certificates,
      .crl = config.tls_crl,
      .verify_depth = config.tls_verify_depth,
      .verify_cache_time = config.tls_verify_cache_time,
  };
}

}  // namespace stp
