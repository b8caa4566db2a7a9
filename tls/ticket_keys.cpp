// Session ticket keys; see ticket_keys.hpp.
#include "tls/ticket_keys.hpp"

#include "tls/library_context.hpp"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace stp::tls {
namespace {

constexpr std::size_t kMaxFileBytes = 64 * 1024;
constexpr std::size_t kOwnKeysKept = 2;  // the current one, and the one before for its tickets

int keys_slot() {
  static const int slot = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

const EVP_CIPHER* ticket_cipher() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(tls_library_context(), "AES-256-CBC", nullptr);
  return cipher;
}

bool init_mac(EVP_MAC_CTX* mac, const TicketKey& key) {
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                               OSSL_PARAM_construct_end()};
  return EVP_MAC_init(mac, key.hmac.data(), key.hmac.size(), params) == 1;
}

TicketKey random_key() {
  TicketKey key;
  if (RAND_bytes(key.name.data(), key.name.size()) != 1 ||
      RAND_bytes(key.hmac.data(), key.hmac.size()) != 1 ||
      RAND_bytes(key.aes.data(), key.aes.size()) != 1) {
    throw std::runtime_error("cannot make a session ticket key: no randomness");
  }
  return key;
}

}  // namespace

std::shared_ptr<TicketKeys> TicketKeys::from_file(const std::string& path) {
  const std::string flag = "--tls-ticket-key-file: ";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(flag + "cannot read " + path);
  std::string text(kMaxFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxFileBytes) throw std::invalid_argument(flag + path + ": over 64 KiB");
  try {
    return std::make_shared<TicketKeys>(parse_ticket_keys(text));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(flag + path + ": " + e.what());
  }
}

std::shared_ptr<TicketKeys> TicketKeys::own() {
  static const auto keys = std::make_shared<TicketKeys>(std::vector{random_key()}, true);
  return keys;
}

TicketKeys::TicketKeys(std::vector<TicketKey> keys, bool rotate)
    : keys_(std::move(keys)), rotate_(rotate) {}

void TicketKeys::install(SSL_CTX* ctx) {
  SSL_CTX_set_ex_data(ctx, keys_slot(), this);
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, &TicketKeys::on_ticket);
}

TicketKey TicketKeys::current() {
  std::lock_guard lock(mutex_);
  if (rotate_ && Clock::now() - made_ >= kRotation) {
    keys_.insert(keys_.begin(), random_key());
    keys_.resize(std::min(keys_.size(), kOwnKeysKept));
    made_ = Clock::now();
  }
  return keys_.front();
}

bool TicketKeys::find(const unsigned char* name, TicketKey& key, bool& is_current) const {
  std::lock_guard lock(mutex_);
  for (std::size_t i = 0; i < keys_.size(); ++i) {
    if (std::memcmp(keys_[i].name.data(), name, keys_[i].name.size()) == 0) {
      key = keys_[i];
      is_current = i == 0;
      return true;
    }
  }
  return false;
}

int TicketKeys::on_ticket(SSL* ssl, unsigned char* name, unsigned char* iv, EVP_CIPHER_CTX* cipher,
                          EVP_MAC_CTX* mac, int encrypt) {
  auto* self = static_cast<TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), keys_slot()));
  const EVP_CIPHER* aes = ticket_cipher();
  if (!self || !aes) return -1;
  TicketKey key;
  int result = -1;
  if (encrypt == 1) {
    try {
      key = self->current();
    } catch (const std::runtime_error&) {
      return -1;
    }
    std::memcpy(name, key.name.data(), key.name.size());
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(aes)) == 1 &&
        EVP_EncryptInit_ex2(cipher, aes, key.aes.data(), iv, nullptr) == 1 && init_mac(mac, key)) {
      result = 1;
    }
  } else {
    bool is_current = false;
    if (!self->find(name, key, is_current)) return 0;  // not ours (any more): a full handshake
    // 2: resumed, and a new ticket issued: under the current key for a ticket under an older
    // one, and always in TLS 1.3, whose clients use a ticket once (RFC 8446 C.4), as OpenSSL's
    // own keys do.
    const bool renew = !is_current || SSL_version(ssl) == TLS1_3_VERSION;
    if (init_mac(mac, key) && EVP_DecryptInit_ex2(cipher, aes, key.aes.data(), iv, nullptr) == 1)
      result = renew ? 2 : 1;
  }
  OPENSSL_cleanse(&key, sizeof key);
  return result;
}

}  // namespace stp::tls
