// Checking one flag's text: numbers, ports, switches, choices, comma-separated lists, host
// lists, DNS names, HOST:PORT and listen addresses, durations. Internal to the configuration
// (proxy/config*.cpp); no function here knows which flag it checks.
//
// Trusts nothing it is given: each function either returns a valid value or throws BadValue
// with what is wrong and the offending text, to which the caller adds the flag's name and
// where the value came from.
#pragma once

#include "acl/host_list.hpp"
#include "proxy/config.hpp"
#include "smtp/text.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stp::flags {

using Values = std::vector<std::string>;

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

[[noreturn]] void bad(const std::string& what, std::string_view value);

// Control bytes as \xHH; everything else as it is.
std::string escape_control_bytes(std::string_view text);

using text::lower;
using text::trim;  // space, tab, CR and LF

// Comma-separated items, whitespace around them dropped; an empty text is an empty list.
Values split_list(std::string_view text);

// A whole decimal number in [min, max], or nullopt.
std::optional<std::uint64_t> parse_number(std::string_view text, std::uint64_t min,
                                          std::uint64_t max);
// The same, or BadValue("must be UNIT from MIN to MAX").
std::uint64_t number_in_range(std::string_view text, std::uint64_t min, std::uint64_t max,
                              std::string_view unit);
// 1 to 65535; `whole` is the text the port came from, for the message.
std::uint16_t parse_port(std::string_view text, std::string_view whole);
// true/false/yes/no/on/off/1/0, in any case.
bool parse_bool(std::string_view text);
// `text` if it is one of `choices` (exactly), else BadValue listing them.
const std::string& one_of(const std::string& text, std::initializer_list<std::string_view> choices);

// A DNS name: dot-separated labels of letters, digits and `-` (and `_` when allowed, as
// container service names have), at most 253 characters, not all-numeric at the end (which
// a resolver would read as an IPv4 address). One trailing dot is allowed.
bool is_dns_name(std::string_view name, bool allow_underscore);

// "HOST:PORT" or "[IPV6]:PORT" split into the host (brackets removed) and the port.
std::pair<std::string_view, std::uint16_t> split_host_port(std::string_view text);
// ADDR:PORT or [IPV6]:PORT with an IP address, never a name.
boost::asio::ip::tcp::endpoint parse_listen_endpoint(std::string_view text);

// parse_duration, its error as a BadValue.
std::chrono::seconds duration_value(const std::string& text,
                                    ZeroDuration zero = ZeroDuration::refused);
// The ports of a comma-separated list (values.front()), none twice.
std::vector<std::uint16_t> port_list(const Values& values);
// A host list (values.front()), its error as a BadValue; names only in relay host lists.
acl::HostList host_list(const Values& values,
                        acl::HostList::Names names = acl::HostList::Names::refused);
// File names, none empty (the files are opened later, by whoever reads them).
Values files(const Values& values);
// NAME=FILE[,KEYFILE] each: NAME a host name or *.domain (lower-cased), FILE not empty.
std::vector<tls::NamedCertificate> sni_certificates(const Values& values);
// HOSTLIST=FILE[,KEYFILE] each, split at the last `=`: a host list that is not empty.
HostCertificates host_certificates(const Values& values);

}  // namespace stp::flags
