// The OpenSSL library context the server's TLS context runs in. It is OpenSSL's default
// provider with every algorithm passed through unchanged, except that its key decoders are cut
// to those that read a SubjectPublicKeyInfo, the one key structure a certificate holds.
//
// Why: OpenSSL 3.0 builds a decoder chain afresh for every public key it reads, trying every
// decoder its context offers (openssl/openssl#17950, #19119, #20051; not cached before 3.1). A
// client certificate's key is read on every handshake that presents one. The default
// provider's 40 decoders made reading an ECDSA client certificate 1.52 M instructions of a
// 5.44 M-instruction session; with the 12 kept here it is 1.03 M (callgrind,
// bench/profile.sh client-cert). The decoders kept are the only ones that can read a
// SubjectPublicKeyInfo, so what decodes, and how, is unchanged.
//
// Not read in this context: private keys, DH parameters and CA files, which are read in
// OpenSSL's default context as before and handed to the TLS context as objects. What it
// trusts: OpenSSL's own default provider. It is used only when OpenSSL's configuration has the
// default provider alone (a FIPS or other provider set in openssl.cnf keeps the default
// context, so the operator's choice of provider is never bypassed).
#pragma once

#include <openssl/types.h>

namespace stp::tls {

// The context for SSL_CTX_new_ex, built on first use and kept for the life of the process;
// nullptr (OpenSSL's default context) when it cannot be set up or must not be used.
OSSL_LIB_CTX* certificate_library_context();

}  // namespace stp::tls
