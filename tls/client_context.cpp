// Client TLS context set-up and per-connection terms; see client_context.hpp.
#include "tls/client_context.hpp"

#include "tls/context_setup.hpp"
#include "tls/library_context.hpp"
#include "tls/session_cache.hpp"
#include "tls/session_facts.hpp"
#include "tls/tls_stream.hpp"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <ctime>
#include <new>

namespace stp::tls {
namespace {

constexpr std::string_view kFlags = "--relay-tls-";

// The largest server certificate chain taken (OpenSSL's default is 100 KiB): public mail
// services send 3 to 7 KiB.
constexpr long kMaxServerChainBytes = 64 * 1024;

// How long a TLS 1.2 session is offered again (a TLS 1.3 ticket carries its own lifetime);
// Postfix's smtp_tls_session_cache_timeout. The server decides whether it resumes.
constexpr long kSessionTimeoutSeconds = 3600;

// What an SSL made by prepare() carries (in an ex_data slot, freed with the SSL): whose
// session it may leave behind, and which one it was offered.
struct Connection {
  SessionCache* sessions = nullptr;  // null: nothing is kept
  std::string key;
  const SSL_SESSION* offered = nullptr;  // compared only, never used
};

// A connection whose handshake began with a kept session and failed forgets that session:
// should the server be what refused it, the next connection must not offer it again.
// (OpenSSL itself forgets only sessions of connections that end without close_notify
// after their handshake.) Called by SSL_free, while the SSL is still whole.
void free_connection(void* parent, void* data, CRYPTO_EX_DATA*, int, long, void*) {
  auto* connection = static_cast<Connection*>(data);
  if (!connection) return;
  auto* ssl = static_cast<SSL*>(parent);
  if (connection->sessions && connection->offered && !SSL_in_before(ssl) &&
      !SSL_is_init_finished(ssl)) {
    connection->sessions->erase(connection->key, connection->offered);
  }
  delete connection;
}

int connection_slot() {
  static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_connection);
  return slot;
}

// OpenSSL offers each session here: after a TLS 1.2 handshake, and on every TLS 1.3 ticket
// (read with the server's first reply). The cache takes the reference.
int keep_session(SSL* ssl, SSL_SESSION* session) {
  const auto* connection = static_cast<Connection*>(SSL_get_ex_data(ssl, connection_slot()));
  if (!connection || !connection->sessions) return 0;
  connection->sessions->put(connection->key, session);
  return 1;
}

bool is_address_literal(const std::string& name) {
  unsigned char address[16];
  return inet_pton(AF_INET, name.c_str(), address) == 1 ||
         inet_pton(AF_INET6, name.c_str(), address) == 1;
}

// The names the certificate is checked against, and how.
bool check_names(SSL* ssl, const std::vector<std::string>& names) {
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  for (const auto& name : names) {
    if (name.empty()) continue;
    const int ok = is_address_literal(name)
                       ? X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str())
                       : X509_VERIFY_PARAM_add1_host(param, name.c_str(), name.size());
    if (ok != 1) return false;
  }
  return true;
}

// The terms a kept session must have been made under to be offered: the same server, SNI
// sent, names checked and verify mode (a session made under try-verify, or checked against
// other names, must not stand in for a verification it never had).
std::string session_key(const ConnectParameters& parameters, bool sni_sent) {
  std::string key = parameters.peer;
  key += '\0';
  if (sni_sent) key += parameters.sni;
  key += '\0';
  for (const auto& name : parameters.names) {
    key += name;
    key += '\0';
  }
  key += parameters.verification == ServerVerification::verify ? 'V' : 'T';
  for (const auto& record : parameters.dane) {  // a session verified against these only
    key += '\0';
    key += static_cast<char>(record.usage);
    key += static_cast<char>(record.selector);
    key += static_cast<char>(record.matching_type);
    key += record.data;
  }
  return key;
}

}  // namespace

bool sni_may_be_sent(std::string_view name) {
  if (!is_host_name(name)) return false;
  const std::string_view last = name.substr(name.rfind('.') + 1);  // the whole name if no dot
  return !std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; });
}

ClientContext::~ClientContext() {
  // Before the session cache its callback points at: every SSL made from the context is
  // freed before the TlsStream that owns it lets go of this.
  SSL_CTX_free(ctx_);
}

std::shared_ptr<const ClientContext> ClientContext::create(const ClientOptions& options) {
  std::shared_ptr<ClientContext> self(new ClientContext);
  ERR_clear_error();
  self->ctx_ = SSL_CTX_new_ex(tls_library_context(), nullptr, TLS_client_method());
  SSL_CTX* ctx = self->ctx_;
  if (!ctx || !TlsStream::prepare() || connection_slot() < 0) {
    setup::fail("--relay-tls-certificate", "cannot create a TLS context");
  }
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // As the server side (tls_context.cpp): writes from moving buffers, in pieces; idle
  // connections free their record buffers; whole flights read in one system call.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 1);
  setup::use_protocols_and_ciphers(ctx, kFlags, options.min_protocol, options.require_ciphers,
                                   options.ciphersuites);

  if (!options.certificate.empty()) {
    const auto& key = options.privatekey.empty() ? options.certificate : options.privatekey;
    setup::use_certificate_and_key(ctx, kFlags, options.certificate, key);
    self->has_certificate_ = true;
  } else if (!options.privatekey.empty()) {
    setup::fail("--relay-tls-privatekey", "given without --relay-tls-certificate");
  }

  if (!options.verify_certificates.empty()) {
    setup::use_trusted_cas(ctx, kFlags, options.verify_certificates);
  }
  if (!options.crl.empty()) setup::use_crls(ctx, kFlags, options.crl);
  SSL_CTX_set_verify_depth(ctx, static_cast<int>(options.verify_depth));
  if (SSL_CTX_dane_enable(ctx) <= 0) setup::fail("--relay-tls-certificate", "cannot set up DANE");
  SSL_CTX_set_max_cert_list(ctx, kMaxServerChainBytes);

  if (options.session_cache_size > 0) {
    self->sessions_ = std::make_unique<SessionCache>(options.session_cache_size);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, keep_session);
    SSL_CTX_set_timeout(ctx, kSessionTimeoutSeconds);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
  return self;
}

bool ClientContext::prepare(SSL* ssl, const ConnectParameters& parameters) const {
  const bool send_sni = sni_may_be_sent(parameters.sni);
  if (send_sni && SSL_set_tlsext_host_name(ssl, parameters.sni.c_str()) != 1) return false;
  const bool dane = !parameters.dane.empty();
  if (dane) {
    // Before the names: SSL_dane_enable makes the first the reference name.
    const char* base = parameters.names.empty() ? nullptr : parameters.names.front().c_str();
    if (SSL_dane_enable(ssl, base) <= 0) return false;
    SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);  // RFC 7672 3.1.1
    for (const auto& r : parameters.dane) {
      const int added =
          SSL_dane_tlsa_add(ssl, r.usage, r.selector, r.matching_type,
                            reinterpret_cast<const unsigned char*>(r.data.data()), r.data.size());
      if (added < 0) return false;  // 0: unusable, left out
    }
  }
  if (!check_names(ssl, parameters.names)) return false;
  SSL_set_verify(ssl,
                 dane || parameters.verification == ServerVerification::verify ? SSL_VERIFY_PEER
                                                                               : SSL_VERIFY_NONE,
                 nullptr);  // client side, SSL_VERIFY_NONE still verifies, and records
  if (!sessions_ || parameters.peer.empty()) return true;

  auto* connection = new (std::nothrow) Connection{sessions_.get(), {}, nullptr};
  if (!connection) return false;
  try {
    connection->key = session_key(parameters, send_sni);
  } catch (...) {  // out of memory
    delete connection;
    return false;
  }
  if (SSL_set_ex_data(ssl, connection_slot(), connection) != 1) {
    delete connection;
    return false;
  }
  if (SSL_SESSION* kept = sessions_->get(connection->key, std::time(nullptr))) {
    const int set = SSL_set_session(ssl, kept);  // the SSL takes its own reference
    if (set == 1) connection->offered = kept;
    SSL_SESSION_free(kept);
  }
  return true;
}

std::size_t ClientContext::kept_sessions() const {
  return sessions_ ? sessions_->size() : 0;
}

}  // namespace stp::tls
