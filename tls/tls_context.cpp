// Server TLS context set-up; see tls_context.hpp.
#include "tls/tls_context.hpp"

#include "tls/certificate_sets.hpp"
#include "tls/context_setup.hpp"
#include "tls/library_context.hpp"
#include "tls/openssl_values.hpp"
#include "tls/ticket_keys.hpp"
#include "tls/tls_stream.hpp"
#include "tls/verify_cache.hpp"

#include <fmt/format.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <memory>
#include <optional>
#include <string_view>

namespace stp::tls {
namespace {

// Distinct client certificate chains whose verification results are kept (a few integers
// each, no certificate).
constexpr std::size_t kVerifyCacheCapacity = 1024;

// The largest client certificate chain taken (OpenSSL's default is 100 KiB): five RSA 4096
// certificates are about 10 KiB.
constexpr long kMaxClientChainBytes = 32 * 1024;

struct Deleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Deleter>;

using setup::fail;

// A throw-away ECDSA P-256 certificate for `hostname`, valid for a year.
void use_self_signed(SSL_CTX* ctx, const std::string& hostname) {
  Owned<EVP_PKEY> key(EVP_EC_gen("P-256"));
  Owned<X509> cert(X509_new());
  if (!key || !cert) fail("--tls-certificate", "cannot generate a self-signed certificate");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* serial_bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(serial_bn, X509_get_serialNumber(cert.get()));
  BN_free(serial_bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 365L * 24 * 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  const std::string cn = hostname.substr(0, 64);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  const std::string san = "DNS:" + hostname;
  Owned<X509_EXTENSION> ext(
      X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, san.c_str()));
  if (ext) X509_add_ext(cert.get(), ext.get(), -1);
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0 ||
      SSL_CTX_use_certificate(ctx, cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, key.get()) != 1) {
    fail("--tls-certificate", "cannot generate a self-signed certificate");
  }
}

void use_dhparam(SSL_CTX* ctx, const std::string& dhparam) {
  if (dhparam.empty()) return;
  Owned<EVP_PKEY> params;
  if (dhparam.rfind("ffdhe", 0) == 0) {
    Owned<EVP_PKEY_CTX> pctx(EVP_PKEY_CTX_new_from_name(nullptr, "DH", nullptr));
    OSSL_PARAM settings[] = {OSSL_PARAM_construct_utf8_string(
                                 OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(dhparam.c_str()), 0),
                             OSSL_PARAM_construct_end()};
    EVP_PKEY* raw = nullptr;
    if (!pctx || EVP_PKEY_paramgen_init(pctx.get()) != 1 ||
        EVP_PKEY_CTX_set_params(pctx.get(), settings) != 1 ||
        EVP_PKEY_paramgen(pctx.get(), &raw) != 1) {
      fail("--tls-dhparam", "unknown group " + dhparam);
    }
    params.reset(raw);
  } else {
    Owned<BIO> bio(BIO_new_file(dhparam.c_str(), "r"));
    if (!bio) fail("--tls-dhparam", "cannot read " + dhparam);
    params.reset(PEM_read_bio_Parameters(bio.get(), nullptr));
    if (!params) fail("--tls-dhparam", "no DH parameters in " + dhparam);
  }
  if (SSL_CTX_set0_tmp_dh_pkey(ctx, params.get()) != 1) {
    fail("--tls-dhparam", "OpenSSL refused the parameters in " + dhparam);
  }
  params.release();  // owned by the context now
}

std::string key_type(const X509* certificate) {
  switch (EVP_PKEY_get_base_id(X509_get0_pubkey(certificate))) {
    case EVP_PKEY_RSA:
      return "RSA";
    case EVP_PKEY_EC:
      return "ECDSA";
    case EVP_PKEY_ED25519:
      return "Ed25519";
    case EVP_PKEY_ED448:
      return "Ed448";
    default:
      return "other";
  }
}

// A server certificate as the expiry metric names it: its subject CN and key type, and its
// file.
void describe(const X509* certificate, const std::string& file,
              std::vector<ServerContext::Certificate>& out) {
  char cn[256] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName, cn, sizeof cn);
  const auto not_after = unix_time(X509_get0_notAfter(certificate));
  if (!not_after) return;
  out.push_back(
      {std::string(cn) + " " + key_type(certificate), file, static_cast<double>(*not_after)});
}

// Sessions that ask for a client certificate resume from the server's own cache, their
// TLS 1.3 tickets naming a session it keeps (SSL_OP_NO_TICKET, set per session by
// request_client_certificate): a stateless ticket carries the client's certificate, and
// OpenSSL 3.0 decodes it again to write each one, a quarter of such a handshake's CPU.
// Bounded: at most this many such sessions, each for the session timeout, oldest dropped.
constexpr long kCachedCertificateSessions = 2048;

// The SSL_CTX slot holding the earliest next update of its CRLs (a std::time_t, 0: none).
int horizon_slot() {
  static const int slot = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

// The SSL_SESSION slot with a kept session's end (a std::time_t). OpenSSL copies it into the
// session a TLS 1.3 resumption makes, so a renewed session ends no later than the first:
// a client that keeps resuming still comes back for a full verification in time.
int session_end_slot() {
  static const int slot = SSL_SESSION_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

// The certificates a kept session may carry (the client's own and the chain it sent): a
// session holds them all, verified path or not.
constexpr int kMaxKeptChainBytes = 8 * 1024;

// OpenSSL offers each new session here; the internal store is off so that only the sessions
// above are kept (TLS 1.2 clients without certificates would fill it otherwise), and of those
// only the ones with a verified certificate: a client can make the others with any
// certificate at all, and they resume no faster than a full handshake is worth.
// A kept session is not resumed past the notAfter of its chain or the CRLs' next update.
int keep_certificate_session(SSL* ssl, SSL_SESSION* session) {
  X509* peer = SSL_SESSION_get0_peer(session);
  if ((SSL_get_options(ssl) & SSL_OP_NO_TICKET) == 0 || !peer ||
      SSL_get_verify_result(ssl) != X509_V_OK) {
    return 0;
  }
  const STACK_OF(X509)* sent = SSL_get_peer_cert_chain(ssl);  // without the client's own
  int bytes = i2d_X509(peer, nullptr);
  for (int i = 0; bytes > 0 && sent && i < sk_X509_num(sent); ++i) {
    const int n = i2d_X509(sk_X509_value(sent, i), nullptr);
    bytes = n > 0 ? bytes + n : -1;
  }
  if (bytes <= 0 || bytes > kMaxKeptChainBytes) return 0;

  // When the verified chain (trust anchor included) stops being valid: from this handshake's
  // verification (its chain, or the reused verdict's date when the cache answered), or, for a
  // TLS 1.3 renewal, the end of the session it renews, which already holds every bound.
  std::optional<std::time_t> chain_end;
  if (SSL_session_reused(ssl)) {
    const std::intptr_t first =
        number_in_ex_data(SSL_SESSION_get_ex_data(session, session_end_slot()));
    if (first != 0) chain_end = first;
  } else {
    chain_end = VerifyCache::chain_not_after(ssl);
    if (!chain_end) chain_end = earliest_not_after(SSL_get0_verified_chain(ssl));
  }
  if (!chain_end) return 0;
  SSL_CTX* ctx = SSL_get_SSL_CTX(ssl);
  std::time_t end =
      std::min(SSL_SESSION_get_time(session) + SSL_SESSION_get_timeout(session), *chain_end);
  const std::intptr_t horizon = number_in_ex_data(SSL_CTX_get_ex_data(ctx, horizon_slot()));
  if (horizon != 0) end = std::min(end, static_cast<std::time_t>(horizon));
  if (end <= std::time(nullptr)) return 0;
  SSL_SESSION_set_timeout(session, static_cast<long>(end - SSL_SESSION_get_time(session)));
  SSL_SESSION_set_ex_data(session, session_end_slot(), ex_data_number(end));
  SSL_CTX_add_session(ctx, session);
  return 0;  // not kept here: the cache took its own reference
}

// What the verification cache needs to know of the trust store.
struct TrustStore {
  bool reads_files = false;                // CAs looked up on disk (a directory, the system's)
  std::optional<std::time_t> crl_horizon;  // the earliest next update of the CRLs loaded
};

TrustStore use_client_verification(SSL_CTX* ctx, const ServerOptions& options) {
  TrustStore trust;
  const std::string& path = options.verify_certificates;
  if (path.empty()) return trust;
  const setup::CaSource source = setup::use_trusted_cas(ctx, "--tls-", path);
  // CAs in a directory (the system's included) are looked up on disk as chains are verified;
  // no CA names are sent for them. A file's CA names go into the certificate request, so
  // clients pick the right certificate.
  trust.reads_files = source != setup::CaSource::file;
  if (source == setup::CaSource::file) {
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(path.c_str());
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
  }
  SSL_CTX_set_verify_depth(ctx, static_cast<int>(options.verify_depth));
  SSL_CTX_set_max_cert_list(ctx, kMaxClientChainBytes);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_cache_size(ctx, kCachedCertificateSessions);
  SSL_CTX_sess_set_new_cb(ctx, keep_certificate_session);

  if (options.crl.empty()) return trust;
  trust.crl_horizon = setup::use_crls(ctx, "--tls-", options.crl);
  if (trust.crl_horizon) {
    SSL_CTX_set_ex_data(ctx, horizon_slot(), ex_data_number(*trust.crl_horizon));
  }
  return trust;
}

// Sessions, and the tickets that carry them, resume only under the TLS policy that made them:
// the session ID context is a digest of that policy, so a reload that changes protocols,
// ciphers or client verification starts afresh, while one that renews a certificate (and
// replicas run alike) keeps them.
std::string session_policy(const ServerOptions& options) {
  return fmt::format("smtp-tls-proxy\n{}\n{}\n{}\n{}\n{}\n{}\n{}", options.min_protocol,
                     options.require_ciphers, options.ciphersuites, options.dhparam,
                     options.verify_certificates, options.crl, options.verify_depth);
}

void use_session_context(SSL_CTX* ctx, const std::string& policy) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  std::size_t length = 0;
  if (EVP_Q_digest(tls_library_context(), "SHA256", nullptr, policy.data(), policy.size(), digest,
                   &length) != 1) {
    fail("--tls-certificate", "cannot make the session ID context");
  }
  SSL_CTX_set_session_id_context(
      ctx, digest,
      static_cast<unsigned int>(std::min<std::size_t>(length, SSL_MAX_SID_CTX_LENGTH)));
}

}  // namespace

std::string take_openssl_errors() {
  std::string out;
  char buffer[256];
  while (const unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buffer, sizeof buffer);
    if (!out.empty()) out += "; ";
    out += buffer;
  }
  return out;
}

ServerContext::~ServerContext() {
  // Before the verification cache its callback points at. This is the last reference: every
  // SSL made from the context is freed before the TlsStream that owns it lets go of this.
  SSL_CTX_free(ctx_);
}

std::shared_ptr<const ServerContext> ServerContext::create(const ServerOptions& options) {
  std::shared_ptr<ServerContext> self(new ServerContext);
  ERR_clear_error();
  self->ctx_ = SSL_CTX_new_ex(tls_library_context(), nullptr, TLS_server_method());
  SSL_CTX* ctx = self->ctx_;
  if (!ctx || !TlsStream::prepare()) fail("--tls-certificate", "cannot create a TLS context");

  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // Sessions write from buffers that move and may be sent in pieces; idle ones free their
  // record buffers.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  const std::string policy = session_policy(options);
  use_session_context(ctx, policy);
  // Read whole flights in one system call rather than a record header and then its body.
  SSL_CTX_set_read_ahead(ctx, 1);
  // Resumption by stateless tickets: one ticket per handshake (a client resumes one session
  // at a time; OpenSSL's default of two costs a second encryption and write), and no
  // server-side cache that grows with every TLS 1.2 client (sessions with a client
  // certificate are the exception, see use_client_verification). TlsStream holds a TLS 1.3
  // ticket back until the session's first reply, so the two share a segment.
  SSL_CTX_set_num_tickets(ctx, 1);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Ticket keys outlive the context: a reload keeps every ticket valid, and replicas given
  // one key file resume each other's sessions.
  self->ticket_keys_ = options.ticket_key_file.empty()
                           ? TicketKeys::own()
                           : TicketKeys::from_file(options.ticket_key_file);
  self->ticket_keys_->install(ctx);

  setup::use_protocols_and_ciphers(ctx, "--tls-", options.min_protocol, options.require_ciphers,
                                   options.ciphersuites);
  use_dhparam(ctx, options.dhparam);

  if (options.certificates.empty()) {
    use_self_signed(ctx, options.hostname);
    self->self_signed_ = true;
    describe(SSL_CTX_get0_certificate(ctx), "self-signed", self->certificates_);
  } else {
    // Each file's certificate, the context's current one once loaded; a later file of the
    // same key type replaces an earlier one, so the last file loaded at an address is its.
    std::vector<std::pair<const X509*, const std::string*>> loaded_from;
    for (std::size_t i = 0; i < options.certificates.size(); ++i) {
      const auto& certificate = options.certificates[i];
      const auto& key = i < options.privatekeys.size() ? options.privatekeys[i] : certificate;
      setup::use_certificate_and_key(ctx, "--tls-", certificate, key);
      loaded_from.emplace_back(SSL_CTX_get0_certificate(ctx), &certificate);
    }
    for (long more = SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST); more == 1;
         more = SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT)) {
      const X509* certificate = SSL_CTX_get0_certificate(ctx);
      const auto from = std::find_if(loaded_from.rbegin(), loaded_from.rend(),
                                     [&](const auto& pair) { return pair.first == certificate; });
      if (certificate && from != loaded_from.rend()) {
        describe(certificate, *from->second, self->certificates_);
      }
    }
    ERR_clear_error();
  }
  const TrustStore trust = use_client_verification(ctx, options);
  if (!options.verify_certificates.empty() && options.verify_cache_time.count() > 0) {
    self->verify_cache_ = std::make_unique<VerifyCache>(
        options.verify_cache_time, kVerifyCacheCapacity, trust.crl_horizon, trust.reads_files);
    SSL_CTX_set_cert_verify_callback(ctx, &VerifyCache::verify, self->verify_cache_.get());
  }
  self->certificate_sets_ = std::make_unique<CertificateSets>(
      options.sni_certificates, options.host_certificates, ctx, policy);
  self->certificate_sets_->install(ctx);
  for (const auto& leaf : self->certificate_sets_->certificates()) {
    describe(leaf.certificate, leaf.file, self->certificates_);
  }
  return self;
}

}  // namespace stp::tls
