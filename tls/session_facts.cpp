// TLS session facts; see session_facts.hpp.
#include "tls/session_facts.hpp"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <cstdint>
#include <memory>

namespace stp::tls {
namespace {

// Per-SSL slot holding the first verification error, as an integer in the pointer.
int first_error_slot() {
  static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

// Accepts whatever the client sends; the outcome is read after the handshake. OpenSSL goes on
// after an accepted error and would report the last one (an unknown CA ends as "unable to get
// certificate CRL"); the first one is the reason, so it is put back after every later error.
int accept_any_certificate(int preverify_ok, X509_STORE_CTX* ctx) {
  if (preverify_ok) return 1;
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (!ssl) return 1;
  const auto first = reinterpret_cast<std::intptr_t>(SSL_get_ex_data(ssl, first_error_slot()));
  if (first == X509_V_OK) {
    const std::intptr_t error = X509_STORE_CTX_get_error(ctx);
    SSL_set_ex_data(ssl, first_error_slot(), reinterpret_cast<void*>(error));
  } else {
    X509_STORE_CTX_set_error(ctx, static_cast<int>(first));
  }
  return 1;
}

std::string dn_openssl(const X509_NAME* name) {
  char* text = X509_NAME_oneline(name, nullptr, 0);
  std::string out = text ? text : "";
  OPENSSL_free(text);
  return out;
}

std::string dn_rfc2253(const X509_NAME* name) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio) return {};
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

std::string asn1_time_text(const ASN1_TIME* time) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio || ASN1_TIME_print(bio.get(), time) != 1) return {};
  char* data = nullptr;
  const long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

std::string hex(const unsigned char* bytes, std::size_t length, bool colons) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (std::size_t i = 0; i < length; ++i) {
    if (colons && i > 0) out += ':';
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 0x0f];
  }
  return out;
}

// "ECDSA (P-256)", "RSA-PSS (2048 bits)" as Postfix writes a key.
std::string describe_key(EVP_PKEY* key, bool rsa_as_pss) {
  if (!key) return {};
  const int id = EVP_PKEY_get_base_id(key);
  if (id == EVP_PKEY_RSA) {
    return std::string(rsa_as_pss ? "RSA-PSS" : "RSA") + " (" +
           std::to_string(EVP_PKEY_get_bits(key)) + " bits)";
  }
  if (id == EVP_PKEY_EC) {
    char group[64] = "";
    std::size_t length = 0;
    EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &length);
    const int nid = OBJ_sn2nid(group);
    const char* nist = nid != NID_undef ? EC_curve_nid2nist(nid) : nullptr;
    return std::string("ECDSA (") + (nist ? nist : group) + ")";
  }
  const char* name = OBJ_nid2sn(id);
  return name ? name : "unknown";
}

std::string describe_key_exchange(SSL* ssl) {
  EVP_PKEY* key = nullptr;
  if (SSL_get_peer_tmp_key(ssl, &key) != 1 || !key) return {};
  std::string out;
  const int id = EVP_PKEY_get_base_id(key);
  if (id == EVP_PKEY_EC) {
    out = describe_key(key, false);  // "ECDSA (P-256)": reuse the curve, fix the name
    out.replace(0, 5, "ECDHE");
  } else if (id == EVP_PKEY_DH) {
    out = "DHE (" + std::to_string(EVP_PKEY_get_bits(key)) + " bits)";
  } else {
    const char* name = OBJ_nid2sn(id);
    out = name ? name : "unknown";
  }
  EVP_PKEY_free(key);
  return out;
}

std::string format_dn(const X509_NAME* name, PeerDnFormat format) {
  return format == PeerDnFormat::openssl ? dn_openssl(name) : dn_rfc2253(name);
}

}  // namespace

void request_client_certificate(SSL* ssl, ClientCertificateRequest request) {
  // A session resumes only under the request it was made under (one that never had to show
  // a certificate must not let a client of --tls-verify-hosts in without one): the server
  // context's ClientHello callback makes the session ID context of it (CertificateSets).
  if (request != ClientCertificateRequest::none) {
    // Where the context keeps sessions (it does when it verifies client certificates), such
    // a session resumes from that cache rather than from a stateless ticket.
    const long cache_mode = SSL_CTX_get_session_cache_mode(SSL_get_SSL_CTX(ssl));
    if ((cache_mode & SSL_SESS_CACHE_SERVER) != 0) SSL_set_options(ssl, SSL_OP_NO_TICKET);
  }
  switch (request) {
    case ClientCertificateRequest::none:
      SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
      break;
    case ClientCertificateRequest::try_verify:
      SSL_set_verify(ssl, SSL_VERIFY_PEER, accept_any_certificate);
      break;
    case ClientCertificateRequest::verify:
      SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
      break;
  }
}

std::string verify_reason_label(long result) {
  switch (result) {
    case X509_V_OK:
      return "ok";
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return "expired";
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return "not_yet_valid";
    case X509_V_ERR_CERT_REVOKED:
      return "revoked";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      return "unknown_ca";
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
      return "depth";
    case X509_V_ERR_CRL_HAS_EXPIRED:
      return "crl_expired";
    case X509_V_ERR_UNABLE_TO_GET_CRL:
      return "crl_missing";
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED:
      return "untrusted";
    case X509_V_ERR_INVALID_PURPOSE:
      return "purpose";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return "hostname";
    default:
      return "other";
  }
}

std::string SessionFacts::exim_cipher_field() const {
  return protocol + ":" + cipher + ":" + std::to_string(cipher_bits);
}

std::optional<std::string> common_name_of(const X509_NAME* name) {
  constexpr int kMaxCommonName = 255;
  const int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return std::string();
  if (X509_NAME_get_index_by_NID(name, NID_commonName, index) >= 0) return std::nullopt;
  unsigned char* utf8 = nullptr;
  const int length =
      ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index)));
  if (length < 0) return std::nullopt;
  std::string text(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(length));
  OPENSSL_free(utf8);
  if (length > kMaxCommonName || text.find('\0') != std::string::npos) return std::nullopt;
  return text;
}

SessionFacts gather_session_facts(SSL* ssl, ClientCertificateRequest request,
                                  PeerDnFormat dn_format) {
  SessionFacts facts;
  facts.protocol = SSL_get_version(ssl);
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  if (cipher) {
    facts.cipher = SSL_CIPHER_get_name(cipher);
    facts.cipher_bits = SSL_CIPHER_get_bits(cipher, &facts.cipher_algorithm_bits);
  }
  facts.resumed = SSL_session_reused(ssl) == 1;
  if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) {
    (is_host_name(sni) ? facts.sni : facts.refused_sni) = sni;
  }

  // The server's certificate: our own in the accept role, the peer's in the connect role.
  const bool server = SSL_is_server(ssl) == 1;
  if (X509* certificate = server ? SSL_get_certificate(ssl) : SSL_get0_peer_certificate(ssl)) {
    const int signature = X509_get_signature_nid(certificate);
    if (signature != NID_undef) facts.server_certificate_signature = OBJ_nid2sn(signature);
    EVP_PKEY* key = X509_get0_pubkey(certificate);
    const int id = key ? EVP_PKEY_get_base_id(key) : NID_undef;
    const char* kind = id == EVP_PKEY_RSA ? "RSA" : id == EVP_PKEY_EC ? "EC" : OBJ_nid2sn(id);
    if (key && kind) facts.server_key = kind + std::to_string(EVP_PKEY_get_bits(key));
    if (server) {
      facts.server_common_name =
          common_name_of(X509_get_subject_name(certificate)).value_or(std::string());
    }
    // Postfix adds these details for TLS 1.3, where the cipher name no longer carries them.
    if (SSL_version(ssl) >= TLS1_3_VERSION) {
      facts.server_signature = describe_key(key, true);
    }
  }
  if (SSL_version(ssl) >= TLS1_3_VERSION) {
    facts.key_exchange = describe_key_exchange(ssl);
    int nid = NID_undef;
    const int known =
        server ? SSL_get_signature_nid(ssl, &nid) : SSL_get_peer_signature_nid(ssl, &nid);
    if (known == 1 && nid != NID_undef) facts.server_digest = OBJ_nid2sn(nid);
  }

  facts.request = request;
  if (X509* peer = SSL_get1_peer_certificate(ssl)) {
    PeerCertificate p;
    const X509_NAME* subject = X509_get_subject_name(peer);
    const X509_NAME* issuer = X509_get_issuer_name(peer);
    p.subject_openssl = dn_openssl(subject);
    p.subject_rfc2253 = dn_rfc2253(subject);
    p.subject = dn_format == PeerDnFormat::openssl ? p.subject_openssl : p.subject_rfc2253;
    const auto subject_cn = common_name_of(subject);
    p.common_name = subject_cn.value_or(std::string());
    p.common_name_refused = !subject_cn;
    p.issuer = format_dn(issuer, dn_format);
    p.issuer_common_name = common_name_of(issuer).value_or(std::string());
    if (BIGNUM* serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(peer), nullptr)) {
      char* text = BN_bn2hex(serial);
      p.serial = text ? text : "";
      OPENSSL_free(text);
      BN_free(serial);
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (X509_digest(peer, EVP_sha256(), digest, &length) == 1) {
      p.sha256 = hex(digest, length, true);
    }
    p.not_before = asn1_time_text(X509_get0_notBefore(peer));
    p.not_after = asn1_time_text(X509_get0_notAfter(peer));
    const char* algorithm = OBJ_nid2sn(EVP_PKEY_get_base_id(X509_get0_pubkey(peer)));
    p.key_algorithm = algorithm ? algorithm : "unknown";
    facts.peer = std::make_unique<PeerCertificate>(std::move(p));
    X509_free(peer);

    const long result = SSL_get_verify_result(ssl);
    facts.verified = result == X509_V_OK;
    if (!facts.verified) {
      facts.verify_error = X509_verify_cert_error_string(result);
      facts.verify_reason = verify_reason_label(result);
    }
  }
  ERR_clear_error();
  return facts;
}

}  // namespace stp::tls
