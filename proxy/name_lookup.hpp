// The client's DNS name, the way Postfix establishes it: the reverse (PTR) name, accepted only
// if a forward lookup of that name gives back the client's address.
//
// The C library's resolver blocks, so lookups run on a small pool of threads of their own and
// the answer is posted back to the session's executor; a session waits for it only up to its
// own time limit. The pool's queue is bounded: past it, a lookup answers "temporarily
// unavailable" at once rather than delaying every later client.
//
// Trusts nothing from DNS: a name that is not a syntactically valid host name is treated as
// no name.
#pragma once

#include "smtp/xclient.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <functional>

namespace stp {

class NameResolver {
 public:
  explicit NameResolver(unsigned threads = 4, unsigned max_queued = 1024);
  ~NameResolver();

  // Calls `done` on `executor` exactly once with the result.
  void lookup(const boost::asio::ip::address& address, boost::asio::any_io_executor executor,
              std::function<void(ClientName)> done);

  // The blocking lookup itself (for tests).
  static ClientName lookup_blocking(const boost::asio::ip::address& address);

 private:
  boost::asio::thread_pool pool_;
  std::atomic<unsigned> queued_{0};
  unsigned max_queued_;
};

// A host name as RFC 1123 allows: letters, digits, `-`, dots between labels.
bool valid_host_name(std::string_view name);

}  // namespace stp
