// Client-certificate verdict cache; see verify_cache.hpp.
#include "tls/verify_cache.hpp"

#include "tls/openssl_values.hpp"

#include <algorithm>
#include <cstring>
#include <memory>

namespace stp::tls {
namespace {

std::time_t system_now() {
  return std::time(nullptr);
}

bool digest_int(EVP_MD_CTX* md, std::uint64_t value) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
  return EVP_DigestUpdate(md, bytes, sizeof bytes) == 1;
}

// Length-prefixed, so that no two different chains feed the same bytes.
bool digest_certificate(EVP_MD_CTX* md, X509* certificate) {
  unsigned char* der = nullptr;
  const int length = i2d_X509(certificate, &der);
  if (length <= 0) return false;
  const bool ok = digest_int(md, static_cast<std::uint64_t>(length)) &&
                  EVP_DigestUpdate(md, der, static_cast<std::size_t>(length)) == 1;
  OPENSSL_free(der);
  return ok;
}

// The SSL slot where a session's Outcome is left.
int outcome_slot() {
  static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

// The SSL slot for chain_not_after (a std::time_t; 0: none).
int chain_end_slot() {
  static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

void set_chain_end(SSL* ssl, std::time_t t) {
  SSL_set_ex_data(ssl, chain_end_slot(), ex_data_number(t));
}

void set_outcome(SSL* ssl, VerifyCache::Outcome outcome) {
  SSL_set_ex_data(ssl, outcome_slot(), ex_data_number(static_cast<std::intptr_t>(outcome)));
}

struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};

}  // namespace

std::size_t VerifyCache::KeyHash::operator()(const Key& key) const {
  std::size_t out;  // the key is a SHA-256 already: any eight bytes of it are a good hash
  std::memcpy(&out, key.data(), sizeof out);
  return out;
}

VerifyCache::VerifyCache(std::chrono::seconds time_to_live, std::size_t capacity,
                         std::optional<std::time_t> horizon, bool store_reads_files)
    : time_to_live_(time_to_live),
      capacity_(std::max<std::size_t>(capacity, 1)),
      horizon_(horizon),
      store_reads_files_(store_reads_files),
      sha256_(EVP_MD_fetch(nullptr, "SHA256", nullptr)),
      clock_(&system_now) {}

VerifyCache::~VerifyCache() {
  EVP_MD_free(sha256_);
}

// Refusals worth repeating: the chain itself is at fault, and asking again gives the same
// answer until the files change (which brings a new cache). Anything else (memory, a CRL
// that could not be found or is out of date, a signature check that failed inside OpenSSL, a
// certificate not valid yet) is judged afresh each time.
bool VerifyCache::lasting(int error) const {
  switch (error) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      // A CA looked up on disk may be missing because the file could not be read just then.
      return !store_reads_files_;
    case X509_V_OK:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_REVOKED:
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_INVALID_CA:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
    case X509_V_ERR_INVALID_PURPOSE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
    case X509_V_ERR_INVALID_EXTENSION:
    case X509_V_ERR_EE_KEY_TOO_SMALL:
    case X509_V_ERR_CA_KEY_TOO_SMALL:
    case X509_V_ERR_CA_MD_TOO_WEAK:
      return true;
    default:
      return false;
  }
}

int VerifyCache::verify(X509_STORE_CTX* store, void* cache) {
  return static_cast<VerifyCache*>(cache)->check(store);
}

VerifyCache::Outcome VerifyCache::outcome(const SSL* ssl) {
  return static_cast<Outcome>(number_in_ex_data(SSL_get_ex_data(ssl, outcome_slot())));
}

std::optional<std::time_t> VerifyCache::chain_not_after(const SSL* ssl) {
  const std::intptr_t t = number_in_ex_data(SSL_get_ex_data(ssl, chain_end_slot()));
  if (t == 0) return std::nullopt;
  return static_cast<std::time_t>(t);
}

int VerifyCache::check(X509_STORE_CTX* store) {
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  Key key;
  const bool keyed = ssl && key_of(store, ssl, key);
  const std::time_t now = clock_();
  if (keyed) {
    if (const std::optional<int> result = replay(key, store, ssl, now)) {
      set_outcome(ssl, Outcome::hit);
      return *result;
    }
  }
  if (ssl) set_outcome(ssl, Outcome::miss);
  const int result = X509_verify_cert(store);
  std::time_t chain_end = 0;  // unknown: an acceptance is then not kept
  if (result == 1 && X509_STORE_CTX_get_error(store) == X509_V_OK) {
    chain_end = earliest_not_after(X509_STORE_CTX_get0_chain(store)).value_or(0);
    if (ssl && chain_end != 0) set_chain_end(ssl, chain_end);
  }
  // Below 0 is OpenSSL failing (memory, a bad argument), not a verdict on the chain.
  if (keyed && result >= 0) remember(key, result, store, now, chain_end);
  return result;
}

bool VerifyCache::key_of(X509_STORE_CTX* store, SSL* ssl, Key& key) const {
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (!leaf || !sha256_) return false;
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  if (!md || EVP_DigestInit_ex2(md.get(), sha256_, nullptr) != 1) return false;

  // What else decides the verdict. The trust store (with its CRLs) is the one of the context
  // this cache lives and dies with (each SSL_CTX has its own callback argument); the
  // parameters X509_verify_cert reads are keyed; host and e-mail checks are never set on the
  // server side.
  const X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(store);
  const auto number = [&](auto value) {
    return digest_int(md.get(), static_cast<std::uint64_t>(value));
  };
  bool ok = number(SSL_get_verify_mode(ssl)) &&
            number(reinterpret_cast<std::uintptr_t>(SSL_get_verify_callback(ssl))) &&
            number(X509_VERIFY_PARAM_get_depth(param)) &&
            number(X509_VERIFY_PARAM_get_flags(param)) &&
            number(X509_VERIFY_PARAM_get_auth_level(param)) && digest_certificate(md.get(), leaf);
  // The rest of what was presented; OpenSSL's TLS code puts the leaf first in it too, which
  // is hashed once (the count tells the two layouts apart).
  const STACK_OF(X509)* untrusted = X509_STORE_CTX_get0_untrusted(store);
  const int count = untrusted ? sk_X509_num(untrusted) : 0;
  const int first = count > 0 && sk_X509_value(untrusted, 0) == leaf ? 1 : 0;
  ok = ok && number(first) && number(count);
  for (int i = first; ok && i < count; ++i) {
    ok = digest_certificate(md.get(), sk_X509_value(untrusted, i));
  }
  unsigned int length = 0;
  return ok && EVP_DigestFinal_ex(md.get(), key.data(), &length) == 1 && length == key.size();
}

std::optional<int> VerifyCache::replay(const Key& key, X509_STORE_CTX* store, SSL* ssl,
                                       std::time_t now) {
  std::lock_guard lock(mutex_);
  const auto it = verdicts_.find(key);
  if (it == verdicts_.end() || it->second.expires <= now) return std::nullopt;
  const Verdict& verdict = it->second;
  // What the TLS library reads of X509_verify_cert's work: the error (the session's verify
  // result and its alert) and its depth. The verified chain is not kept, so a replayed
  // session has none (SSL_get0_verified_chain); nothing here reads it.
  X509_STORE_CTX_set_error(store, verdict.error);
  X509_STORE_CTX_set_error_depth(store, verdict.error_depth);
  if (verdict.chain_not_after != 0) set_chain_end(ssl, verdict.chain_not_after);
  return verdict.result;
}

void VerifyCache::remember(const Key& key, int result, X509_STORE_CTX* store, std::time_t now,
                           std::time_t chain_not_after) {
  Verdict verdict;
  verdict.result = result;
  verdict.error = X509_STORE_CTX_get_error(store);
  verdict.error_depth = X509_STORE_CTX_get_error_depth(store);
  if (!lasting(verdict.error)) return;
  verdict.expires = now + time_to_live_.count();
  if (result == 1 && verdict.error == X509_V_OK) {
    // An acceptance must not outlive a certificate of the chain or the CRLs it was checked
    // against; a refusal lasts its time to live.
    if (horizon_) verdict.expires = std::min(verdict.expires, *horizon_);
    verdict.expires = chain_not_after != 0 ? std::min(verdict.expires, chain_not_after) : now;
    verdict.chain_not_after = chain_not_after;
  }

  std::lock_guard lock(mutex_);
  auto [it, inserted] = verdicts_.try_emplace(key);
  it->second = verdict;
  if (inserted) order_.push_back(key);
  while (verdicts_.size() > capacity_) {
    verdicts_.erase(order_.front());
    order_.pop_front();
  }
}

}  // namespace stp::tls
