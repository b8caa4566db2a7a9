// Where mail for a domain goes when the proxy delivers it itself (--relay-route mx, issue 23):
// the domain's MX hosts by preference, ties in random order (RFC 5321 5.1), each with its
// addresses; no MX: the domain itself; a null MX (RFC 7505): nowhere. Looked up through the
// validating resolver.
//
// Trusts the resolver's verdicts; the names and addresses are the network's (read by
// dns/records.hpp). A failed lookup is a temporary failure, never a refusal.
#pragma once

#include "acl/host_list.hpp"
#include "dns/resolver.hpp"
#include "outbound/mta_sts_policy.hpp"
#include "outbound/relay_link.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace stp::outbound {

struct MxRoute {
  std::vector<RelayTarget> targets;  // in the order to try them; empty: see the reply
  // When there is nowhere to go: the reply a RCPT for the domain gets.
  int code = 0;               // 451 (try later), 550 (no such domain), 556 (null MX)
  std::string enhanced_code;  // "4.4.3"
  std::string text;           // one line, safe to send
};

// Whether a TLSA record can authenticate a host (RFC 7672 2.2): DANE-TA(2) or DANE-EE(3), a
// known selector and matching type, a digest of the right length or full data OpenSSL reads.
bool usable_tlsa(const dns::TlsaRecord& record);

// MX records by preference, ties shuffled with `random`; at most `limit` of them.
std::vector<dns::MxRecord> order_mx(std::vector<dns::MxRecord> records, std::mt19937& random,
                                    std::size_t limit);

// `dane`: the TLSA records of DNSSEC-signed MX hosts are looked up (RFC 7672). Addresses
// that `refused` matches are left out.
boost::asio::awaitable<MxRoute> route_by_mx(dns::Resolver& resolver, std::string domain,
                                            std::uint16_t port, bool dane,
                                            const acl::HostList& refused);

// An MTA-STS policy (RFC 8461 4, 5) over `route`. Enforce: MX hosts its mx patterns do not
// match are left out (their names returned, for the log), the others need TLS verified by
// PKIX for their name; none left: the route is nowhere (451 4.7.5). Testing: each host is
// tried as before, the verification only recorded. None: nothing changes. Hosts DANE
// authenticates keep it: DANE wins (RFC 8461 2); those whose TLSA records are all unusable
// (TLS required, nothing authenticated) come under the policy, TLS still required.
std::vector<std::string> apply_sts(MxRoute& route, const StsPolicy& policy);

// Text from the network or the resolver made fit for a reply line: printable ASCII, bounded.
std::string reply_safe(std::string_view text);

}  // namespace stp::outbound
