// The OpenSSL library context the server's TLS context runs in: OpenSSL's default provider,
// every algorithm passed through unchanged, except that its key decoders are cut to those that
// read a SubjectPublicKeyInfo (the one key structure a certificate holds) of a key that can
// sign, its ciphers to those libssl uses, and its key managers by those of four MACs and KDFs
// libssl never makes keys of.
//
// Why: OpenSSL 3.0 builds a decoder chain afresh for every public key it reads, trying every
// decoder its context offers and walking every key manager and algorithm the context has
// fetched (openssl/openssl#17950, #19119, #20051; not cached before 3.1). A client
// certificate's key is read on every handshake that presents one. In OpenSSL's default
// context, reading an ECDSA client certificate was 1.52 M of a 5.44 M-instruction session;
// here it is 0.72 M and the session 4.66 M (callgrind, bench/profile.sh client-cert). What
// decodes, and how, is unchanged for every certificate a handshake can use: the decoders kept
// are the only ones that can read a SubjectPublicKeyInfo, less those of DH, DHX, X25519 and
// X448 keys, which sign nothing (a certificate of one still reads, without its key, and fails
// the handshake as it did), and the TLS suites and key-exchange groups on offer are the same
// (unit tests compare them with the default context's).
//
// Read in OpenSSL's default context instead, as before, and handed to the TLS context as
// objects: private keys, DH parameters, a CA file and the system's CA file. (CAs in a hashed
// directory, the system's included, are read when a verification looks them up, in this
// context, as certificates.) What it trusts: OpenSSL's own default provider. It is used only
// when OpenSSL's configuration leaves the default provider alone (no FIPS or other provider,
// no FIPS property; see default_provider_alone); otherwise the default context is kept, so the
// operator's choice of provider is not bypassed. openssl.cnf's other settings for the default
// context, such as a [random] section, do not reach this one; its system_default TLS settings
// (protocols, security level) do, as they apply to every TLS context.
#pragma once

#include <openssl/types.h>

namespace stp::tls {

// The context for SSL_CTX_new_ex, built on first use and kept for the life of the process;
// nullptr (OpenSSL's default context) when it cannot be set up or must not be used.
OSSL_LIB_CTX* tls_library_context();

}  // namespace stp::tls
