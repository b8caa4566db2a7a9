// A short-lived memo of client-certificate chain verification. An MTA peer or a submission
// client presents the same chain on every connection; verifying it (chain building, the CA's
// signature, CRL look-ups) is 15 % of a client-certificate session's CPU (bench/README.md,
// run 5), so OpenSSL's verdict is kept for a while, keyed by a SHA-256 over everything the verdict
// depends on: the presented chain's DER bytes and the verify settings (mode, depth, callback,
// flags, security level). One cache per TLS context, so one trust store.
//
// Trusts OpenSSL's X509_verify_cert for every verdict it stores; keeps nothing a client sent
// but a hash (a verdict is a few integers: no certificate is held, whatever its size). A
// verdict is forgotten at the earliest of: its time to live, the earliest notAfter in the
// verified chain, and the horizon (the earliest nextUpdate of the loaded CRLs); errors that
// may not repeat (out of memory, a CRL missing or out of date) are not kept at all. A change
// to the CA or CRL files reloads the TLS context, and with it comes a new, empty cache.
// Thread-safe; bounded to `capacity` verdicts (oldest dropped first).
#pragma once

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>

namespace stp::tls {

class VerifyCache {
 public:
  // `horizon`: no verdict outlives it (Unix time); nullopt when nothing bounds it.
  // `store_reads_files`: the trust store looks CAs up on disk during verification (a hashed
  // directory, the system's), where "issuer not found" may be a passing failure to read.
  VerifyCache(std::chrono::seconds time_to_live, std::size_t capacity,
              std::optional<std::time_t> horizon, bool store_reads_files = false);
  ~VerifyCache();
  VerifyCache(const VerifyCache&) = delete;
  VerifyCache& operator=(const VerifyCache&) = delete;

  // For SSL_CTX_set_cert_verify_callback(ctx, &VerifyCache::verify, cache).
  static int verify(X509_STORE_CTX* store, void* cache);

  // How the chain of this TLS session was judged, for its metrics.
  enum class Outcome { none, hit, miss };
  static Outcome outcome(const SSL* ssl);
  // The earliest notAfter of the chain this session's certificate was accepted with (the
  // trust anchor included), when this cache judged it; SSL_get0_verified_chain is empty
  // when the verdict was replayed.
  static std::optional<std::time_t> chain_not_after(const SSL* ssl);

  // The clock, for tests that age verdicts without waiting.
  using Clock = std::time_t (*)();
  void set_clock_for_test(Clock clock) { clock_ = clock; }

 private:
  using Key = std::array<unsigned char, 32>;
  struct KeyHash {
    std::size_t operator()(const Key& key) const;
  };
  struct Verdict {
    int result = 0;  // X509_verify_cert's return: 1 accepted, 0 refused
    int error = X509_V_OK;
    int error_depth = 0;
    std::time_t expires = 0;
    std::time_t chain_not_after = 0;  // accepted verdicts: the verified chain's earliest
  };

  int check(X509_STORE_CTX* store);
  bool key_of(X509_STORE_CTX* store, SSL* ssl, Key& key) const;
  std::optional<int> replay(const Key& key, X509_STORE_CTX* store, SSL* ssl, std::time_t now);
  void remember(const Key& key, int result, X509_STORE_CTX* store, std::time_t now,
                std::time_t chain_not_after);
  bool lasting(int error) const;

  const std::chrono::seconds time_to_live_;
  const std::size_t capacity_;
  const std::optional<std::time_t> horizon_;
  const bool store_reads_files_;
  EVP_MD* sha256_ = nullptr;
  Clock clock_;

  std::mutex mutex_;
  std::unordered_map<Key, Verdict, KeyHash> verdicts_;
  std::deque<Key> order_;  // insertion order: the front is dropped first when full
};

}  // namespace stp::tls
