// Session ticket keys: what encrypts the TLS session tickets that let a client resume. From
// --tls-ticket-key-file (base64 keys, one per line, 80 bytes each in nginx's layout: 16 name,
// 32 HMAC, 32 AES), so that replicas behind one address resume each other's sessions: the
// first key encrypts, every key decrypts, and a ticket under an older key is renewed. Without
// the file the process makes its own, kept across reloads and rotated every 12 hours.
//
// Trusts the key file only after parsing it whole (any bad line refuses the file); a client's
// ticket is only ever matched by key name and checked by HMAC, in OpenSSL.
#pragma once

#include "tls/ticket_key_file.hpp"

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace stp::tls {

class TicketKeys {
 public:
  // The keys of `path`; throws std::invalid_argument("--tls-ticket-key-file: why").
  static std::shared_ptr<TicketKeys> from_file(const std::string& path);
  // The process's own keys (one set per process, whatever reloads make of the contexts).
  static std::shared_ptr<TicketKeys> own();

  explicit TicketKeys(std::vector<TicketKey> keys, bool rotate = false);

  // Makes `ctx` encrypt and decrypt its tickets with these keys; they must outlive it.
  void install(SSL_CTX* ctx);

  // OpenSSL's ticket key callback (SSL_CTX_set_tlsext_ticket_key_evp_cb).
  static int on_ticket(SSL* ssl, unsigned char* name, unsigned char* iv, EVP_CIPHER_CTX* cipher,
                       EVP_MAC_CTX* mac, int encrypt);

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kRotation = std::chrono::hours(12);

  // The key to encrypt with (rotating the own keys when due).
  TicketKey current();
  // The key named `name`, and whether it is the current one; false when none is.
  bool find(const unsigned char* name, TicketKey& key, bool& is_current) const;

  mutable std::mutex mutex_;
  std::vector<TicketKey> keys_;  // the first encrypts
  bool rotate_;
  Clock::time_point made_ = Clock::now();
};

}  // namespace stp::tls
