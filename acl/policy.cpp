// Encryption policy decisions; see policy.hpp.
#include "acl/policy.hpp"

namespace stp::acl {
namespace {

// The commands that carry or probe mail, and AUTH: what a cleartext session must not reach.
bool needs_tls_when_required(smtp::Verb verb) {
  return (smtp::command_flags(verb) & smtp::command_flag::needs_tls) != 0;
}

}  // namespace

std::optional<Refusal> check_command(const PolicyFacts& facts, smtp::Verb verb) {
  constexpr auto kMustStartTls = Refusal::Reason::must_start_tls;
  constexpr auto kNeedsCertificate = Refusal::Reason::needs_verified_certificate;
  if (!facts.tls_active && needs_tls_when_required(verb)) {
    if (facts.port_requires_tls) return Refusal{kMustStartTls, "--tls-require-ports"};
    if (facts.host_requires_tls) return Refusal{kMustStartTls, "--tls-require-hosts"};
  }
  if (verb == smtp::Verb::mail && facts.host_requires_verified && !facts.certificate_verified) {
    return Refusal{kNeedsCertificate, "--tls-require-verified-hosts"};
  }
  return std::nullopt;
}

}  // namespace stp::acl
