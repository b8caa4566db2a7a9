// The client side's TLS sessions, kept for resumption: the last session made with each
// server, keyed by the server and the terms it was made under (ClientContext builds the key:
// host:port, SNI, the names checked, verify or try-verify), so a reconnect to the same
// smarthost resumes instead of doing a full handshake, as Postfix's tlsmgr and Exim do.
//
// A session is offered again to every new connection with the same key, not once only (RFC
// 8446's advice against reuse is about linking connections, which between one relay and its
// smarthost link anyway), until a newer one replaces it, it expires (the server's ticket
// lifetime, or the client's session timeout), or OpenSSL marks it not resumable (a
// connection that used it ended without close_notify). Trusts OpenSSL's session objects;
// keeps nothing else. Thread-safe; bounded to `capacity` keys, the least recently used
// dropped first.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <ctime>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace stp::tls {

class SessionCache {
 public:
  explicit SessionCache(std::size_t capacity);
  ~SessionCache();
  SessionCache(const SessionCache&) = delete;
  SessionCache& operator=(const SessionCache&) = delete;

  // Takes over the reference to `session` (it is freed when not kept: not resumable, or a
  // capacity of 0), replacing what `key` held.
  void put(const std::string& key, SSL_SESSION* session);
  // A new reference to the session kept for `key` (the caller frees it), or null; one that
  // can no longer be resumed at `now` is forgotten instead.
  SSL_SESSION* get(const std::string& key, std::time_t now);
  // Forgets what `key` holds if it is still `session` (one a handshake failed with).
  void erase(const std::string& key, const SSL_SESSION* session);

  std::size_t size() const;

 private:
  struct Entry {
    SSL_SESSION* session;
    std::list<std::string>::iterator use;  // its place in uses_
  };
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> uses_;  // keys, least recently used first
};

}  // namespace stp::tls
