// Certificates chosen per SNI name; see certificate_sets.hpp.
#include "tls/certificate_sets.hpp"

#include "tls/context_setup.hpp"
#include "tls/library_context.hpp"
#include "tls/session_facts.hpp"

#include "smtp/text.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace stp::tls {
namespace {

[[noreturn]] void fail(const std::string& flag, const std::string& why) {
  ERR_clear_error();
  throw std::invalid_argument(flag + ": " + why);
}

// The SSL slot holding 1 + the index of the host set a session answers with (0: none).
int host_set_slot() {
  static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

std::vector<std::string> dns_names_of(X509* certificate) {
  std::vector<std::string> names;
  auto* sans = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans, i);
    if (name->type != GEN_DNS) continue;
    const auto* text = reinterpret_cast<const char*>(ASN1_STRING_get0_data(name->d.dNSName));
    names.push_back(
        text::lower({text, static_cast<std::size_t>(ASN1_STRING_length(name->d.dNSName))}));
  }
  GENERAL_NAMES_free(sans);
  return names;
}

bool any_covers(const std::vector<std::string>& patterns, std::string_view name) {
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::string& pattern) { return name_covers(pattern, name); });
}

}  // namespace

void answer_with_host_set(SSL* ssl, std::size_t index) {
  SSL_set_ex_data(ssl, host_set_slot(), reinterpret_cast<void*>(index + 1));
}

struct CertificateSets::Loaded {
  std::string file;
  X509* leaf = nullptr;
  EVP_PKEY* key = nullptr;
  STACK_OF(X509) * chain = nullptr;
  ~Loaded() {
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
  }
};

struct CertificateSets::Set {
  std::vector<std::string> patterns;   // the names it was given for
  std::vector<std::string> dns_names;  // its certificates' own
  std::vector<std::unique_ptr<Loaded>> certificates;
  SessionContexts session_contexts;  // of the policy and the set's name
};

CertificateSets::SessionContexts CertificateSets::session_contexts(const std::string& flag,
                                                                   const std::string& text) {
  SessionContexts contexts;
  for (const auto request : {ClientCertificateRequest::none, ClientCertificateRequest::try_verify,
                             ClientCertificateRequest::verify}) {
    const std::string input = text + "\nrequest:" + std::to_string(static_cast<int>(request));
    unsigned char digest[EVP_MAX_MD_SIZE];
    std::size_t length = 0;
    if (EVP_Q_digest(tls_library_context(), "SHA256", nullptr, input.data(), input.size(), digest,
                     &length) != 1) {
      fail(flag, "cannot make the session ID context");
    }
    contexts[static_cast<std::size_t>(request)].assign(
        digest, digest + std::min<std::size_t>(length, SSL_MAX_SID_CTX_LENGTH));
  }
  return contexts;
}

CertificateSets::CertificateSets(const std::vector<NamedCertificate>& by_name,
                                 const std::vector<NamedCertificate>& by_host, SSL_CTX* defaults,
                                 const std::string& policy) {
  for (long more = SSL_CTX_set_current_cert(defaults, SSL_CERT_SET_FIRST); more == 1;
       more = SSL_CTX_set_current_cert(defaults, SSL_CERT_SET_NEXT)) {
    if (X509* certificate = SSL_CTX_get0_certificate(defaults)) {
      for (auto& name : dns_names_of(certificate)) default_names_.push_back(std::move(name));
    }
  }
  ERR_clear_error();
  default_contexts_ = session_contexts("--tls-certificate", policy);
  load(by_name, "--tls-sni-certificate", "sni", policy, sets_);
  load(by_host, "--tls-host-certificate", "host", policy, host_sets_);
  ERR_clear_error();
}

void CertificateSets::load(const std::vector<NamedCertificate>& named, const std::string& flag,
                           const std::string& kind, const std::string& policy,
                           std::vector<std::unique_ptr<Set>>& sets) {
  for (const auto& entry : named) {
    const auto it = std::find_if(sets.begin(), sets.end(), [&](const auto& set) {
      return set->patterns.front() == entry.name;
    });
    Set& set = it != sets.end() ? **it : *sets.emplace_back(std::make_unique<Set>());
    if (set.patterns.empty()) {
      set.patterns.push_back(entry.name);
      set.session_contexts = session_contexts(flag, policy + "\n" + kind + ":" + entry.name);
    }
    auto loaded = std::make_unique<Loaded>();
    loaded->file = entry.certificate;
    BIO* in = BIO_new_file(entry.certificate.c_str(), "r");
    if (!in) fail(flag, "cannot read " + entry.certificate);
    loaded->leaf = PEM_read_bio_X509_AUX(in, nullptr, nullptr, nullptr);
    loaded->chain = sk_X509_new_null();
    while (X509* extra = PEM_read_bio_X509(in, nullptr, nullptr, nullptr)) {
      sk_X509_push(loaded->chain, extra);
    }
    BIO_free(in);
    if (!loaded->leaf) fail(flag, "no certificate in " + entry.certificate);
    const std::string& key_file = entry.privatekey.empty() ? entry.certificate : entry.privatekey;
    BIO* key_in = BIO_new_file(key_file.c_str(), "r");
    if (key_in) loaded->key = PEM_read_bio_PrivateKey(key_in, nullptr, nullptr, nullptr);
    BIO_free(key_in);
    if (!loaded->key) fail(flag, "cannot load private key from " + key_file);
    if (X509_check_private_key(loaded->leaf, loaded->key) != 1) {
      fail(flag, "key in " + key_file + " does not match certificate " + entry.certificate);
    }
    setup::check_chain_order(flag, entry.certificate, loaded->leaf, loaded->chain);
    for (auto& name : dns_names_of(loaded->leaf)) set.dns_names.push_back(std::move(name));
    set.certificates.push_back(std::move(loaded));
  }
}

CertificateSets::~CertificateSets() = default;

void CertificateSets::install(SSL_CTX* ctx) const {
  SSL_CTX_set_client_hello_cb(ctx, &CertificateSets::on_client_hello,
                              const_cast<CertificateSets*>(this));
  // The name is chosen by on_client_hello; accepting it here is what makes OpenSSL keep it in
  // the session, so a resumed TLS 1.2 session still has its SNI (logs, Received, AUTHORITY).
  SSL_CTX_set_tlsext_servername_callback(
      ctx, +[](SSL*, int*, void*) { return SSL_TLSEXT_ERR_OK; });
}

const CertificateSets::Set* CertificateSets::choose(std::string_view name) const {
  for (const auto& set : sets_) {
    if (set->patterns.front() == name) return set.get();
  }
  for (const auto& set : sets_) {
    if (any_covers(set->patterns, name)) return set.get();
  }
  if (any_covers(default_names_, name)) return nullptr;
  for (const auto& set : sets_) {
    if (any_covers(set->dns_names, name)) return set.get();
  }
  return nullptr;
}

int CertificateSets::on_client_hello(SSL* ssl, int* alert, void* arg) {
  const auto* self = static_cast<const CertificateSets*>(arg);
  const Set* set = nullptr;
  const auto host_set = reinterpret_cast<std::uintptr_t>(SSL_get_ex_data(ssl, host_set_slot()));
  const unsigned char* body = nullptr;
  std::size_t size = 0;
  if (host_set > 0 && host_set <= self->host_sets_.size()) {
    set = self->host_sets_[host_set - 1].get();
  } else if (!self->sets_.empty() &&
             SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &body, &size) == 1) {
    const auto name = server_name_of(body, size);
    set = name ? self->choose(*name) : nullptr;
  }
  if (set) {
    SSL_certs_clear(ssl);
    for (const auto& c : set->certificates) {
      if (SSL_use_cert_and_key(ssl, c->leaf, c->key, c->chain, 1) != 1) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
      }
    }
  }
  // Set before OpenSSL looks for the session to resume, which happens after this callback.
  const int mode = SSL_get_verify_mode(ssl);
  const auto request = (mode & SSL_VERIFY_PEER) == 0 ? ClientCertificateRequest::none
                       : (mode & SSL_VERIFY_FAIL_IF_NO_PEER_CERT) != 0
                           ? ClientCertificateRequest::verify
                           : ClientCertificateRequest::try_verify;
  const auto& context =
      (set ? set->session_contexts : self->default_contexts_)[static_cast<std::size_t>(request)];
  if (SSL_set_session_id_context(ssl, context.data(), static_cast<unsigned int>(context.size())) !=
      1) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

std::vector<CertificateSets::Leaf> CertificateSets::certificates() const {
  std::vector<Leaf> out;
  for (const auto* sets : {&host_sets_, &sets_}) {
    for (const auto& set : *sets) {
      for (const auto& c : set->certificates) out.push_back({c->leaf, c->file});
    }
  }
  return out;
}

}  // namespace stp::tls
