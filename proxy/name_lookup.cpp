// Reverse-then-forward client name lookup; see name_lookup.hpp.
#include "proxy/name_lookup.hpp"
#include "smtp/address.hpp"

#include <boost/asio/post.hpp>

#include <netdb.h>
#include <sys/socket.h>

#include <cstring>

namespace stp {
namespace asio = boost::asio;

namespace {

ClientName::Status status_of(int gai_error) {
  return gai_error == EAI_AGAIN ? ClientName::Status::temporarily_unavailable
                                : ClientName::Status::unavailable;
}

}  // namespace

bool valid_host_name(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  if (name.back() == '.') name.remove_suffix(1);
  std::size_t label = 0;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '.') {
      if (label == 0 || name[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0)) return false;
    if (++label > 63) return false;
  }
  return label > 0 && name.back() != '-';
}

NameResolver::NameResolver(unsigned threads, unsigned max_queued)
    : pool_(threads), max_queued_(max_queued) {}

NameResolver::~NameResolver() {
  pool_.stop();
  pool_.join();
}

void NameResolver::lookup(const asio::ip::address& address, asio::any_io_executor executor,
                          std::function<void(ClientName)> done) {
  if (queued_.fetch_add(1) >= max_queued_) {
    queued_.fetch_sub(1);
    ClientName busy;
    busy.status = busy.reverse_status = ClientName::Status::temporarily_unavailable;
    asio::post(executor, [done = std::move(done), busy]() mutable { done(std::move(busy)); });
    return;
  }
  asio::post(pool_, [this, address, executor, done = std::move(done)]() mutable {
    ClientName name = lookup_blocking(address);
    queued_.fetch_sub(1);
    asio::post(executor, [done = std::move(done), name = std::move(name)]() mutable {
      done(std::move(name));
    });
  });
}

ClientName NameResolver::lookup_blocking(const asio::ip::address& client_address) {
  ClientName result;
  const auto address = unmapped(client_address);

  sockaddr_storage storage{};
  socklen_t length = 0;
  if (address.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
    sin->sin_family = AF_INET;
    const auto bytes = address.to_v4().to_bytes();
    std::memcpy(&sin->sin_addr, bytes.data(), bytes.size());
    length = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
    sin6->sin6_family = AF_INET6;
    const auto bytes = address.to_v6().to_bytes();
    std::memcpy(&sin6->sin6_addr, bytes.data(), bytes.size());
    length = sizeof(sockaddr_in6);
  }

  char host[NI_MAXHOST];
  const int reverse = getnameinfo(reinterpret_cast<sockaddr*>(&storage), length, host, sizeof host,
                                  nullptr, 0, NI_NAMEREQD);
  if (reverse != 0) {
    result.status = result.reverse_status = status_of(reverse);
    return result;
  }
  if (!valid_host_name(host)) return result;  // both unavailable
  result.reverse_status = ClientName::Status::found;
  result.reverse_name = host;

  addrinfo hints{};
  hints.ai_family = address.is_v4() ? AF_INET : AF_INET6;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* answers = nullptr;
  const int forward = getaddrinfo(host, nullptr, &hints, &answers);
  if (forward != 0) {
    result.status = status_of(forward);
    return result;
  }
  for (const addrinfo* a = answers; a; a = a->ai_next) {
    bool same = false;
    if (a->ai_family == AF_INET && address.is_v4()) {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
      same = std::memcmp(&sin->sin_addr, address.to_v4().to_bytes().data(), 4) == 0;
    } else if (a->ai_family == AF_INET6 && address.is_v6()) {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
      same = std::memcmp(&sin6->sin6_addr, address.to_v6().to_bytes().data(), 16) == 0;
    }
    if (same) {
      result.status = ClientName::Status::found;
      result.name = host;
      break;
    }
  }
  freeaddrinfo(answers);
  return result;
}

}  // namespace stp
