// Relay host connections kept open between local sessions (the seed's connection reuse,
// without its limitation: one process, so a TLS connection is kept as it is). One pool per
// worker thread, touched only on that thread: a connection's socket belongs to that thread's
// event loop. A connection waits at most --relay-connection-idle and carries at most
// --relay-connection-max-messages; before it is used again it owes the relay host an RSET
// (RelayLink::reset_pending), which the session sends with its first commands. Routing by MX
// a connection is kept for its destination domain, and at most kMaxIdle are kept.
#pragma once

#include "outbound/relay_link.hpp"

#include <memory>
#include <vector>

namespace stp::outbound {

class LinkPool {
 public:
  static constexpr std::size_t kMaxIdle = 256;

  explicit LinkPool(const RelayConfig& relay) : relay_(relay) {}
  ~LinkPool();
  LinkPool(const LinkPool&) = delete;
  LinkPool& operator=(const LinkPool&) = delete;

  // The most recently kept connection to `destination` (RelayLink::destination), its RSET
  // pending; null when none is kept. One whose relay host sent anything while it was kept is
  // closed and passed over (Upstream::quiet).
  std::unique_ptr<RelayLink> take(std::string_view destination = {});
  // Keeps `link` for the next session if it may be reused; otherwise leaves it to the caller
  // (to QUIT): returned non-null.
  std::unique_ptr<RelayLink> put(std::unique_ptr<RelayLink> link);

  std::size_t size() const { return idle_.size(); }

 private:
  bool reusable(const RelayLink& link) const;
  void expire(RelayLink& link);

  const RelayConfig& relay_;
  std::vector<std::unique_ptr<RelayLink>> idle_;  // oldest first
};

}  // namespace stp::outbound
