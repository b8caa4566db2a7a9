// Encryption policy: which commands a client may give in its current TLS state, the common
// decisions Exim's ACLs are used for, as flags (--tls-require-ports, --tls-require-hosts,
// --tls-require-verified-hosts). Pure: the session supplies the facts, this decides.
#pragma once

#include "smtp/smtp_parse.hpp"

#include <cstdint>
#include <optional>
#include <string_view>

namespace stp::acl {

struct PolicyFacts {
  bool port_requires_tls = false;       // the listener's port is in --tls-require-ports
  bool host_requires_tls = false;       // the client is in --tls-require-hosts
  bool host_requires_verified = false;  // the client is in --tls-require-verified-hosts
  bool tls_active = false;
  bool certificate_verified = false;
};

struct Refusal {
  enum class Reason : std::uint8_t {
    must_start_tls,              // 530 5.7.0: the command needs TLS first
    needs_verified_certificate,  // 550 5.7.1: MAIL needs a verified client certificate
  } reason;
  std::string_view rule;  // the flag that made the decision, for the log
};

// nullopt: the command may go on to the MTA.
std::optional<Refusal> check_command(const PolicyFacts& facts, smtp::Verb verb);

}  // namespace stp::acl
