// Routing by MX; see mx_route.hpp.
#include "outbound/mx_route.hpp"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>

namespace stp::outbound {
namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// MX hosts tried for one domain, and addresses in all (Postfix: 5 hosts' addresses, of 2
// sessions): enough for any real domain, bounded for one that lists hundreds.
constexpr std::size_t kMaxMxHosts = 10;
constexpr std::size_t kMaxAddresses = 20;

MxRoute nowhere(int code, std::string enhanced_code, std::string text) {
  return MxRoute{{}, code, std::move(enhanced_code), reply_safe(text)};
}

// "3 1 1 ABCD...", as TLS reports give a TLSA record (RFC 8460 4.4).
std::string presentation(const dns::TlsaRecord& r) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string text = std::to_string(r.usage) + " " + std::to_string(r.selector) + " " +
                     std::to_string(r.matching_type) + " ";
  for (const char c : r.data) {
    text += kHex[static_cast<unsigned char>(c) >> 4];
    text += kHex[static_cast<unsigned char>(c) & 0xf];
  }
  return text;
}

enum class DaneLookup { found, none, failed };

// DANE for one MX host whose name and addresses DNSSEC vouched for (RFC 7672 2.2): its
// TLSA records at _PORT._tcp.BASE. Secure and usable (DANE-TA(2), DANE-EE(3)): TLS required
// and matched against them; secure but none usable: TLS required, unauthenticated; not
// signed, or none: no DANE (`none`). `failed` when the lookup failed (bogus included): the
// host is passed over rather than tried without the protection it may have asked for.
asio::awaitable<DaneLookup> look_up_dane(dns::Resolver& resolver, RelayTarget& target,
                                         const std::string& base) {
  const std::string name = "_" + std::to_string(target.host.port) + "._tcp." + base;
  const auto answer = co_await resolver.lookup(name, dns::RecordType::tlsa);
  if (answer.status == dns::Answer::Status::failure) {
    target.why_none = "TLSA lookup failed: " + answer.why;
    target.policy = TlsPolicy::dane;  // reported as dnssec-invalid
    co_return DaneLookup::failed;
  }
  if (answer.status != dns::Answer::Status::records || answer.security != dns::Security::secure) {
    co_return DaneLookup::none;
  }
  target.tls_required = true;
  if (base != target.host.name) target.tls_base = base;
  target.policy = TlsPolicy::dane;
  auto records = std::make_shared<std::vector<std::string>>();
  for (const auto& rdata : answer.rdata) {
    const auto tlsa = dns::read_tlsa(rdata);
    if (!tlsa) continue;
    records->push_back(presentation(*tlsa));
    // PKIX-TA(0) and PKIX-EE(1) are not for SMTP (RFC 7672 3.1.3); a record OpenSSL could
    // not use is left out here, since OpenSSL would quietly verify by CAs instead.
    if (usable_tlsa(*tlsa)) {
      target.dane.push_back({tlsa->usage, tlsa->selector, tlsa->matching_type, tlsa->data});
    }
  }
  target.policy_strings = std::move(records);
  co_return DaneLookup::found;
}

}  // namespace

std::string reply_safe(std::string_view text) {
  std::string out;
  for (const char c : text.substr(0, 200)) out += c >= 0x20 && c < 0x7f ? c : '?';
  return out;
}

bool usable_tlsa(const dns::TlsaRecord& r) {
  if ((r.usage != 2 && r.usage != 3) || r.selector > 1 || r.matching_type > 2) return false;
  if (r.matching_type != 0) return r.data.size() == (r.matching_type == 1 ? 32u : 64u);
  // Full data (matching type 0): a certificate or a public key that OpenSSL can read, or it
  // would leave the record out and the host would be checked as if it had none.
  const auto* der = reinterpret_cast<const unsigned char*>(r.data.data());
  const long size = static_cast<long>(r.data.size());
  const unsigned char* p = der;
  if (r.selector == 0) {
    X509* certificate = d2i_X509(nullptr, &p, size);
    const bool read = certificate && p == der + size;
    X509_free(certificate);
    return read;
  }
  EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, size);
  const bool read = key && p == der + size;
  EVP_PKEY_free(key);
  return read;
}

std::vector<dns::MxRecord> order_mx(std::vector<dns::MxRecord> records, std::mt19937& random,
                                    std::size_t limit) {
  std::shuffle(records.begin(), records.end(), random);
  std::stable_sort(records.begin(), records.end(),
                   [](const auto& a, const auto& b) { return a.preference < b.preference; });
  if (records.size() > limit) records.resize(limit);
  return records;
}

std::vector<std::string> apply_sts(MxRoute& route, const StsPolicy& policy) {
  std::vector<std::string> left_out;
  if (policy.mode == StsMode::none) return left_out;
  const auto lines = std::make_shared<const std::vector<std::string>>(policy.lines);
  const bool enforce = policy.mode == StsMode::enforce;
  std::erase_if(route.targets, [&](RelayTarget& target) {
    // DANE wins (RFC 8461 2) where its records authenticate the host; TLSA records none of
    // which is usable (RFC 7672 2.2) ask for TLS but authenticate nothing: MTA-STS applies.
    if (!target.dane.empty()) return false;
    if (enforce && !sts_mx_matches(policy, target.host.name)) {
      left_out.push_back(target.host.name);
      return true;
    }
    target.policy = enforce ? TlsPolicy::sts_enforce : TlsPolicy::sts_testing;
    target.tls_required = target.tls_required || enforce;
    target.policy_strings = lines;
    return false;
  });
  if (route.targets.empty()) {
    route.code = 451;
    route.enhanced_code = "4.7.5";
    route.text = reply_safe("no MX host of the domain matches its MTA-STS policy");
  }
  return left_out;
}

asio::awaitable<MxRoute> route_by_mx(dns::Resolver& resolver, std::string domain,
                                     std::uint16_t port, bool dane, const acl::HostList& refused) {
  thread_local std::mt19937 random{std::random_device{}()};
  const auto mx = co_await resolver.lookup(domain, dns::RecordType::mx);
  // The MX host names are DNSSEC's word only when the MX answer (or its absence) is.
  const bool names_secure = mx.security == dns::Security::secure;
  std::vector<dns::MxRecord> records;
  switch (mx.status) {
    case dns::Answer::Status::failure:
      co_return nowhere(451, "4.4.3", "MX lookup for " + domain + " failed: " + mx.why);
    case dns::Answer::Status::no_domain:
      co_return nowhere(550, "5.1.2", "domain " + domain + " does not exist");
    case dns::Answer::Status::no_records:
      records.push_back({0, domain});  // RFC 5321 5.1: the domain is its own mail host
      break;
    case dns::Answer::Status::records:
      for (const auto& rdata : mx.rdata) {
        if (auto record = dns::read_mx(rdata)) records.push_back(std::move(*record));
      }
      if (std::any_of(records.begin(), records.end(),
                      [](const auto& r) { return r.exchange.empty(); })) {
        co_return nowhere(556, "5.1.10", "domain " + domain + " accepts no mail (null MX)");
      }
      if (records.empty()) {
        co_return nowhere(451, "4.4.3", "no usable MX record for " + domain);
      }
      break;
  }
  MxRoute route;
  std::size_t addresses = 0;
  std::size_t refused_addresses = 0;
  bool lookup_failed = false;  // a host passed over for a lookup that may work later
  std::string why_none;
  for (const auto& record : order_mx(std::move(records), random, kMaxMxHosts)) {
    RelayTarget target;
    target.host = {record.exchange, port};
    target.policy_domain = domain;
    target.endpoints.emplace();
    bool addresses_secure = names_secure;
    std::string canonical;  // the name an alias (CNAME) led to
    // IPv4 first: where both exist it is the one more often reachable from a container.
    for (const auto type : {dns::RecordType::a, dns::RecordType::aaaa}) {
      const auto answer = co_await resolver.lookup(record.exchange, type);
      if (answer.status == dns::Answer::Status::failure) {
        target.why_none = "address lookup failed: " + answer.why;
        lookup_failed = true;
        continue;
      }
      if (answer.status == dns::Answer::Status::records &&
          answer.security != dns::Security::secure) {
        addresses_secure = false;
      }
      if (canonical.empty()) canonical = answer.canonical_name;
      for (const auto& rdata : answer.rdata) {
        const auto address = dns::read_address(type, rdata);
        if (address && refused.matches(*address)) {
          ++refused_addresses;
          if (target.why_none.empty()) target.why_none = "a refused address";
          continue;
        }
        if (address && addresses < kMaxAddresses) {
          target.endpoints->emplace_back(*address, port);
          ++addresses;
        }
      }
    }
    if (dane && !target.endpoints->empty() && addresses_secure) {
      // RFC 7672 2.2.2: an alias's TLSA records are looked for first at the name it leads to
      // (DNSSEC vouched for the whole chain), then at the MX name itself.
      std::vector<std::string> bases;
      if (!canonical.empty()) bases.push_back(canonical);
      bases.push_back(record.exchange);
      for (const auto& base : bases) {
        // Not inside a condition: GCC 12 miscompiles a co_await in a short-circuit operand.
        const DaneLookup looked_up = co_await look_up_dane(resolver, target, base);
        if (looked_up == DaneLookup::failed) {
          addresses -= target.endpoints->size();
          target.endpoints->clear();
          lookup_failed = true;
        }
        if (looked_up != DaneLookup::none) break;
      }
    }
    if (target.endpoints->empty() && target.why_none.empty()) target.why_none = "no address";
    if (target.endpoints->empty()) {
      why_none += (why_none.empty() ? "" : "; ") + record.exchange + ": " + target.why_none;
    }
    route.targets.push_back(std::move(target));
  }
  if (addresses == 0 && refused_addresses > 0 && !lookup_failed) {
    // Postfix's "mail for ... loops back to myself": the domain's own DNS says so (and every
    // host's lookups answered: a failed one may yet give an address that is not refused).
    co_return nowhere(
        554, "5.4.6",
        "the MX of " + domain + " points to a refused address (this host, or an internal network)");
  }
  if (addresses == 0) {
    co_return nowhere(451, "4.4.3", "no reachable address for " + domain + " (" + why_none + ")");
  }
  co_return route;
}

}  // namespace stp::outbound
