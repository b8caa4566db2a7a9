// Client-side TLS session cache; see session_cache.hpp.
#include "tls/session_cache.hpp"

#include <iterator>

namespace stp::tls {

SessionCache::SessionCache(std::size_t capacity) : capacity_(capacity) {}

SessionCache::~SessionCache() {
  for (auto& [key, entry] : entries_) SSL_SESSION_free(entry.session);
}

void SessionCache::put(const std::string& key, SSL_SESSION* session) {
  if (!session) return;
  if (capacity_ == 0 || SSL_SESSION_is_resumable(session) != 1) {
    SSL_SESSION_free(session);
    return;
  }
  SSL_SESSION* replaced = nullptr;
  SSL_SESSION* dropped = nullptr;
  {
    const std::lock_guard lock(mutex_);
    if (const auto it = entries_.find(key); it != entries_.end()) {
      replaced = it->second.session;
      it->second.session = session;
      uses_.splice(uses_.end(), uses_, it->second.use);
    } else {
      if (entries_.size() >= capacity_) {
        const auto oldest = entries_.find(uses_.front());
        dropped = oldest->second.session;
        entries_.erase(oldest);
        uses_.pop_front();
      }
      uses_.push_back(key);
      entries_.emplace(key, Entry{session, std::prev(uses_.end())});
    }
  }
  // Outside the lock: the last reference may free a session's certificates.
  SSL_SESSION_free(replaced);
  SSL_SESSION_free(dropped);
}

SSL_SESSION* SessionCache::get(const std::string& key, std::time_t now) {
  SSL_SESSION* stale = nullptr;
  SSL_SESSION* found = nullptr;
  {
    const std::lock_guard lock(mutex_);
    const auto it = entries_.find(key);
    if (it == entries_.end()) return nullptr;
    SSL_SESSION* session = it->second.session;
    const std::time_t end = SSL_SESSION_get_time(session) + SSL_SESSION_get_timeout(session);
    if (SSL_SESSION_is_resumable(session) != 1 || end <= now) {
      stale = session;
      uses_.erase(it->second.use);
      entries_.erase(it);
    } else {
      SSL_SESSION_up_ref(session);
      found = session;
      uses_.splice(uses_.end(), uses_, it->second.use);
    }
  }
  SSL_SESSION_free(stale);
  return found;
}

void SessionCache::erase(const std::string& key, const SSL_SESSION* session) {
  SSL_SESSION* kept = nullptr;
  {
    const std::lock_guard lock(mutex_);
    const auto it = entries_.find(key);
    if (it == entries_.end() || it->second.session != session) return;
    kept = it->second.session;
    uses_.erase(it->second.use);
    entries_.erase(it);
  }
  SSL_SESSION_free(kept);
}

std::size_t SessionCache::size() const {
  const std::lock_guard lock(mutex_);
  return entries_.size();
}

}  // namespace stp::tls
