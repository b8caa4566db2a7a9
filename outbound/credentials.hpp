// --relay-auth-file: the user name and password the proxy gives each relay host with AUTH.
// One line per host, "HOST USER PASSWORD" (the password is the rest of the line, so it may
// hold spaces; blank lines and lines starting with '#' are skipped). HOST is a relay host as
// configured by --relay-host, its name without the port or with it ("smtp.example.net" or
// "smtp.example.net:587"), compared without regard to case; a line with the port wins.
//
// Trusts the file's content once it has checked the file: it must be a regular file that
// others cannot read (mode 0600 or 0640). Passwords are never logged; their memory is wiped
// when the set is destroyed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace stp::outbound {

struct Credential {
  std::string user;
  std::string password;
};

class Credentials {
 public:
  Credentials() = default;
  ~Credentials();
  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;
  Credentials(Credentials&&) = default;
  Credentials& operator=(Credentials&&) = default;

  // Reads `path`; throws std::invalid_argument("--relay-auth-file: <path>:<line>: why").
  static Credentials load(const std::string& path);
  // The same from text already read (tests); `origin` names it in errors.
  static Credentials parse(std::string_view text, std::string_view origin);

  // For the relay host `host` (its configured name, lower or upper case) on `port`.
  const Credential* find(std::string_view host, std::uint16_t port) const;
  std::size_t size() const { return by_host_.size(); }

 private:
  std::map<std::string, Credential> by_host_;  // "name" or "name:port", lower-cased
};

}  // namespace stp::outbound
