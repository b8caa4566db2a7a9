// Relay host connections kept between sessions; see link_pool.hpp.
#include "outbound/link_pool.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace stp::outbound {

LinkPool::~LinkPool() {
  for (auto& link : idle_) link->on_idle_expired = nullptr;
}

bool LinkPool::reusable(const RelayLink& link) const {
  if (link.upstream.lost() || !link.upstream.open() || link.upstream.has_input()) return false;
  if (relay_.connection_idle.count() == 0) return false;
  if (link.messages >= relay_.connection_max_messages) return false;
  if (link.client_authenticated) return false;  // the next client must not inherit its login
  // Exim's hosts_nopass_tls: a connection that used TLS is not handed on to such a host.
  if (link.tls_facts && relay_.hosts_nopass_tls.matches(link.host.name, link.endpoint.address())) {
    return false;
  }
  return true;
}

std::unique_ptr<RelayLink> LinkPool::put(std::unique_ptr<RelayLink> link) {
  if (!link || !reusable(*link)) return link;
  // Many destinations (routing by MX): the oldest idle connection makes room.
  if (idle_.size() >= kMaxIdle) expire(*idle_.front());
  link->deadline.arm(relay_.connection_idle);
  link->on_idle_expired = [this](RelayLink& expired) { expire(expired); };
  idle_.push_back(std::move(link));
  return nullptr;
}

// Its idle time is up: closed without a word (the relay host sees the connection end, as
// after its own idle timeout).
void LinkPool::expire(RelayLink& link) {
  const auto it = std::find_if(idle_.begin(), idle_.end(),
                               [&](const auto& held) { return held.get() == &link; });
  if (it == idle_.end()) return;
  spdlog::debug("{} relay connection H={} closed after {}s idle", link.log_id, link.label,
                relay_.connection_idle.count());
  link.upstream.close();
  idle_.erase(it);  // destroys `link`: the caller returns at once
}

std::unique_ptr<RelayLink> LinkPool::take(std::string_view destination) {
  while (true) {
    const auto it = std::find_if(idle_.rbegin(), idle_.rend(), [&](const auto& held) {
      return held->destination == destination;
    });
    if (it == idle_.rend()) return nullptr;
    auto link = std::move(*it);
    idle_.erase(std::next(it).base());
    link->on_idle_expired = nullptr;
    link->deadline.cancel();
    if (!link->upstream.quiet()) {
      // It spoke unasked while idle (a 421 before closing, say): whatever it said would be
      // read as the reply to the next session's RSET.
      spdlog::info("{} relay connection H={} sent something while kept; closed", link->log_id,
                   link->label);
      link->upstream.abandon();
      continue;
    }
    link->reset_pending = true;
    return link;
  }
}

}  // namespace stp::outbound
