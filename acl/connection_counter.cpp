// Per-host session counting; see connection_counter.hpp.
#include "acl/connection_counter.hpp"

#include <cstring>
#include <random>

namespace stp::acl {

ConnectionCounter::Key ConnectionCounter::key_of(const boost::asio::ip::address& address) {
  Key key{};
  if (address.is_v4() || (address.is_v6() && address.to_v6().is_v4_mapped())) {
    const auto v4 = address.is_v4() ? address.to_v4()
                                    : boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped,
                                                                       address.to_v6());
    key[0] = 4;
    const auto bytes = v4.to_bytes();
    std::memcpy(key.data() + 1, bytes.data(), bytes.size());
  } else {
    key[0] = 6;
    const auto bytes = address.to_v6().to_bytes();
    std::memcpy(key.data() + 1, bytes.data(), 8);  // the /64
  }
  return key;
}

std::size_t ConnectionCounter::KeyHash::operator()(const Key& key) const noexcept {
  // FNV-1a from a per-process random start: clients choose their IPv6 /64s, so they must not
  // be able to choose colliding keys either.
  static const std::size_t seed = 14695981039346656037ull ^ std::random_device{}();
  std::size_t hash = seed;
  for (const unsigned char c : key) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

bool ConnectionCounter::acquire(const boost::asio::ip::address& address) {
  const auto key = key_of(address);
  std::lock_guard lock(mutex_);
  auto& count = counts_[key];
  if (count >= limit_) {
    if (count == 0) counts_.erase(key);
    return false;
  }
  ++count;
  return true;
}

void ConnectionCounter::release(const boost::asio::ip::address& address) {
  const auto key = key_of(address);
  std::lock_guard lock(mutex_);
  const auto it = counts_.find(key);
  if (it == counts_.end()) return;
  if (--it->second == 0) counts_.erase(it);
}

unsigned ConnectionCounter::count(const boost::asio::ip::address& address) const {
  std::lock_guard lock(mutex_);
  const auto it = counts_.find(key_of(address));
  return it == counts_.end() ? 0 : it->second;
}

}  // namespace stp::acl
