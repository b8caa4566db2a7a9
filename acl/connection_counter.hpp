// Sessions at once per client host, for --max-connections-per-host. A host is one IPv4
// address, or one IPv6 /64 (what a single customer usually gets, so rotating through its
// addresses does not escape the limit). IPv4-mapped IPv6 addresses count as IPv4.
//
// Shared by every worker thread: one mutex around a small map, touched once when a session
// starts and once when it ends.
#pragma once

#include <boost/asio/ip/address.hpp>

#include <array>
#include <cstddef>
#include <mutex>
#include <unordered_map>

namespace stp::acl {

class ConnectionCounter {
 public:
  explicit ConnectionCounter(unsigned limit_per_host) : limit_(limit_per_host) {}

  // Counts one more session for the host; false (and nothing counted) at the limit.
  bool acquire(const boost::asio::ip::address& address);
  void release(const boost::asio::ip::address& address);
  // Sessions counted for the host (for tests and logs).
  unsigned count(const boost::asio::ip::address& address) const;

  using Key = std::array<unsigned char, 17>;  // family byte, then the address (v6: its /64)
  static Key key_of(const boost::asio::ip::address& address);

 private:
  struct KeyHash {
    std::size_t operator()(const Key& key) const noexcept;
  };
  unsigned limit_;
  mutable std::mutex mutex_;
  std::unordered_map<Key, unsigned, KeyHash> counts_;
};

}  // namespace stp::acl
