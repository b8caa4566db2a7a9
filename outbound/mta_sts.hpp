// MTA-STS policies (RFC 8461) as delivery by MX needs them: the domain's _mta-sts TXT record
// through the validating resolver, the policy fetched from https://mta-sts.<domain>/.well-known/
// mta-sts.txt (PKIX-verified for that name with the outbound trust store, no redirects, bounded
// in size and time), kept for its max_age in memory and, with --relay-mta-sts-cache, on disk,
// fetched again when the TXT id changes and refreshed in the background once half its life is
// gone. A policy is kept through fetch failures and a missing TXT record, as RFC 8461 5.1 says:
// an attacker who blocks the fetch or strips the record cannot turn a policy off.
//
// A lookup runs on its caller's thread (the TXT record from the resolver's kept answers, the
// policy from the kept ones, under a lock); fetches run on one executor (the one given to
// create), one per domain in flight however many sessions ask.
//
// Trusts: the resolver's answers, OpenSSL's verdict on the policy host's certificate; the
// policy text itself is the network's (parsed by mta_sts_policy.hpp). The cache directory is
// the operator's, and its files are parsed as strictly as a fetched policy.
#pragma once

#include "acl/host_list.hpp"
#include "dns/resolver.hpp"
#include "outbound/mta_sts_policy.hpp"
#include "tls/client_context.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace stp::outbound {

struct StsOptions {
  std::string cache_dir;  // empty: policies are kept in memory only
  // Policy host addresses never connected to (--relay-mx-refuse-addresses): a domain's DNS
  // must not make the proxy fetch from this host or an internal network.
  acl::HostList refused;
  std::chrono::seconds fetch_timeout{30};  // one fetch, every address, connect to last byte
  std::uint16_t port = 443;
};

// What MTA-STS says of a domain now.
struct StsAnswer {
  std::shared_ptr<const StsPolicy> policy;  // null: none applies (mode none counts as one)
  std::string id;                           // the policy's id, from its TXT record
  // A fetch that failed, as RFC 8460 names it ("sts-policy-fetch-error", "sts-policy-invalid",
  // "sts-webpki-invalid"), and why, for the log; empty when none did. With a kept policy the
  // delivery goes on under it.
  std::string failure;
  std::string why;
  bool from_cache = false;
  // The _mta-sts record's answer failed DNSSEC validation and no policy is kept: one may exist
  // that an attacker hides, so nothing is delivered until it can be read (never in the clear
  // for want of a policy).
  bool bogus = false;
};

class StsPolicies : public std::enable_shared_from_this<StsPolicies> {
 public:
  // Throws std::invalid_argument("--relay-mta-sts-cache: why") when the directory cannot be
  // made or written.
  static std::shared_ptr<StsPolicies> create(boost::asio::any_io_executor executor,
                                             std::shared_ptr<dns::Resolver> resolver,
                                             std::shared_ptr<const tls::ClientContext> tls,
                                             StsOptions options);
  StsPolicies(const StsPolicies&) = delete;
  StsPolicies& operator=(const StsPolicies&) = delete;

  // `domain`: lower case, as smtp::recipient_domain gives it. Resumes on the caller's executor.
  boost::asio::awaitable<StsAnswer> lookup(std::string domain);
  // Ends fetches in flight (their lookups answer from the cache or with no policy).
  void stop();

 private:
  struct Kept {
    std::shared_ptr<const StsPolicy> policy;
    std::string id;
    std::chrono::system_clock::time_point fetched;
  };
  struct Fetched {
    std::shared_ptr<const StsPolicy> policy;  // null on failure
    std::string failure;                      // RFC 8460's result type, on failure
    std::string why;
  };
  struct InFlight;
  struct Connection;

  StsPolicies(boost::asio::any_io_executor executor, std::shared_ptr<dns::Resolver> resolver,
              std::shared_ptr<const tls::ClientContext> tls, StsOptions options);
  boost::asio::awaitable<StsAnswer> answer(std::string domain);
  // The kept policy, unless it expired.
  std::optional<Kept> kept(const std::string& domain);
  void keep(const std::string& domain, Kept policy);
  // One fetch per domain: a second caller waits for the first's result. On executor_.
  // `self` keeps this object alive while the coroutine (spawned apart) runs. A failure is
  // remembered for a few minutes per domain and id, and given again without a fetch.
  boost::asio::awaitable<Fetched> fetch_once(std::string domain, std::string id,
                                             std::shared_ptr<StsPolicies> self);
  boost::asio::awaitable<Fetched> fetch(std::string domain);
  boost::asio::awaitable<Fetched> fetch_from(boost::asio::ip::tcp::endpoint endpoint,
                                             std::string host,
                                             std::chrono::steady_clock::time_point deadline);
  boost::asio::awaitable<void> refresh(std::string domain, std::string id,
                                       std::shared_ptr<StsPolicies> self);

  boost::asio::any_io_executor executor_;
  std::shared_ptr<dns::Resolver> resolver_;
  std::shared_ptr<const tls::ClientContext> tls_;
  StsOptions options_;
  std::mutex kept_mutex_;
  std::unordered_map<std::string, Kept> kept_;
  // On executor_ only:
  std::unordered_map<std::string, std::shared_ptr<InFlight>> in_flight_;
  struct Failed {
    std::string id;
    std::chrono::steady_clock::time_point until;
    Fetched result;
  };
  std::unordered_map<std::string, Failed> failed_;
  std::unordered_set<Connection*> connections_;
  std::atomic<bool> stopped_{false};
};

}  // namespace stp::outbound
