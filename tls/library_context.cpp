// The TLS library context and its pass-through provider; see library_context.hpp.
#include "tls/library_context.hpp"

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <span>
#include <string_view>
#include <vector>

namespace stp::tls {
namespace {

constexpr const char* kProviderName = "smtp-tls-proxy-default";
constexpr std::string_view kKeptDecoderStructure = "structure=SubjectPublicKeyInfo";

// Key types no certificate or CertificateVerify is signed with: a chain or a peer's
// certificate that holds such a key fails the handshake whether the key is read or not (its
// key is of no use to verify anything), and the key exchange sets these keys from raw bytes,
// never through a decoder. Their decoders only lengthen every certificate read (2.4 % of a
// client-certificate session's instructions for these four).
constexpr std::string_view kUnreadKeyTypes[] = {"DH", "DHX", "X25519", "X448"};

// Keys of MACs and KDFs libssl never makes (its HMAC, TLS1-PRF and HKDF keys stay): each
// public-key decode walks every key manager of the context.
constexpr std::string_view kUnusedKeyManagers[] = {"CMAC", "POLY1305", "SIPHASH", "SCRYPT"};

// The ciphers libssl fetches from its context, by one of their names: the record ciphers of
// its TLS 1.2 and 1.3 suites (ssl_ciph.c's table, the composite CBC-HMAC ones included) and
// AES-256-CBC for session tickets. The default provider lacks the rest of that table (DES,
// RC4, IDEA, SEED, GOST), as it did before. The provider's own code (the random generator's
// AES-256-CTR, say) fetches in the default provider's context, which has them all.
constexpr std::string_view kKeptCiphers[] = {"AES-128-GCM",
                                             "AES-256-GCM",
                                             "CHACHA20-POLY1305",
                                             "AES-128-CCM",
                                             "AES-256-CCM",
                                             "AES-128-CBC",
                                             "AES-256-CBC",
                                             "AES-128-CBC-HMAC-SHA1",
                                             "AES-256-CBC-HMAC-SHA1",
                                             "AES-128-CBC-HMAC-SHA256",
                                             "AES-256-CBC-HMAC-SHA256",
                                             "ARIA-128-GCM",
                                             "ARIA-256-GCM",
                                             "CAMELLIA-128-CBC",
                                             "CAMELLIA-256-CBC",
                                             "DES-EDE3-CBC",
                                             "NULL"};

// The default provider, loaded into a context of its own, that this provider passes on, and
// the decoders, ciphers and key managers it keeps of it (each null-terminated, as OpenSSL
// reads them). Set once, before the provider is first initialised, and never changed.
// Never destroyed: OpenSSL keeps pointers into these arrays for the life of the process.
struct Inner {
  OSSL_PROVIDER* provider = nullptr;
  std::vector<OSSL_ALGORITHM> decoders;
  std::vector<OSSL_ALGORITHM> ciphers;
  std::vector<OSSL_ALGORITHM> key_managers;
};
Inner& inner = *new Inner;

// The cut list of an operation; nullptr for those passed through whole.
const std::vector<OSSL_ALGORITHM>* kept_for(int operation) {
  switch (operation) {
    case OSSL_OP_DECODER:
      return &inner.decoders;
    case OSSL_OP_CIPHER:
      return &inner.ciphers;
    case OSSL_OP_KEYMGMT:
      return &inner.key_managers;
    default:
      return nullptr;
  }
}

const OSSL_ALGORITHM* query_operation(void*, int operation, int* no_cache) {
  if (const auto* kept = kept_for(operation)) {
    *no_cache = 0;
    return kept->data();
  }
  return OSSL_PROVIDER_query_operation(inner.provider, operation, no_cache);
}

void unquery_operation(void*, int operation, const OSSL_ALGORITHM* algorithms) {
  if (!kept_for(operation)) OSSL_PROVIDER_unquery_operation(inner.provider, operation, algorithms);
}

int get_capabilities(void*, const char* capability, OSSL_CALLBACK* callback, void* argument) {
  return OSSL_PROVIDER_get_capabilities(inner.provider, capability, callback, argument);
}

const OSSL_PARAM* gettable_params(void*) {
  return OSSL_PROVIDER_gettable_params(inner.provider);
}

int get_params(void*, OSSL_PARAM params[]) {
  return OSSL_PROVIDER_get_params(inner.provider, params);
}

template <class F>
void (*dispatch(F* function))() {
  return reinterpret_cast<void (*)()>(function);
}

const OSSL_DISPATCH kDispatch[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, dispatch(&query_operation)},
    {OSSL_FUNC_PROVIDER_UNQUERY_OPERATION, dispatch(&unquery_operation)},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, dispatch(&get_capabilities)},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, dispatch(&gettable_params)},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, dispatch(&get_params)},
    {0, nullptr}};

int initialise(const OSSL_CORE_HANDLE*, const OSSL_DISPATCH*, const OSSL_DISPATCH** out,
               void** provider_context) {
  // The default provider's algorithms are called with its own provider context, so they run
  // exactly as they do in the context that loaded it. No teardown: that context owns it.
  *provider_context = OSSL_PROVIDER_get0_provider_ctx(inner.provider);
  *out = kDispatch;
  return 1;
}

// The algorithms of one operation of `provider` that `keep` accepts, in its order, followed by
// the null entry that ends such an array; empty if there are none or if the provider does not
// promise the array stays (no_cache set): the entries copied point into it.
template <class Keep>
std::vector<OSSL_ALGORITHM> algorithms_kept(const OSSL_PROVIDER* provider, int operation,
                                            Keep keep) {
  std::vector<OSSL_ALGORITHM> kept;
  int no_cache = 0;
  const OSSL_ALGORITHM* all = OSSL_PROVIDER_query_operation(provider, operation, &no_cache);
  for (const OSSL_ALGORITHM* a = all; a && a->algorithm_names && no_cache == 0; ++a) {
    if (keep(*a)) kept.push_back(*a);
  }
  OSSL_PROVIDER_unquery_operation(provider, operation, all);
  if (!kept.empty()) kept.push_back({nullptr, nullptr, nullptr, nullptr});
  return kept;
}

// Whether one of an algorithm's names is in `list` (written in capitals). algorithm_names is
// "NAME:ALIAS:...", matched without regard to case as OpenSSL does.
bool named_in(const OSSL_ALGORITHM& algorithm, std::span<const std::string_view> list) {
  std::string_view names = algorithm.algorithm_names;
  while (!names.empty()) {
    const auto end = std::min(names.find(':'), names.size());
    const std::string_view name = names.substr(0, end);
    for (const std::string_view listed : list) {
      if (name.size() == listed.size() &&
          std::equal(name.begin(), name.end(), listed.begin(), [](char a, char b) {
            return std::toupper(static_cast<unsigned char>(a)) == b;
          })) {
        return true;
      }
    }
    names.remove_prefix(std::min(end + 1, names.size()));
  }
  return false;
}

// The decoders that read a SubjectPublicKeyInfo of a key that can sign: one per key type, and
// the generic one that finds the type.
bool reads_public_key(const OSSL_ALGORITHM& decoder) {
  const std::string_view properties =
      decoder.property_definition ? decoder.property_definition : "";
  return properties.find(kKeptDecoderStructure) != std::string_view::npos &&
         !named_in(decoder, kUnreadKeyTypes);
}

bool used_by_tls(const OSSL_ALGORITHM& cipher) {
  return named_in(cipher, kKeptCiphers);
}

bool may_be_made_by_tls(const OSSL_ALGORITHM& key_manager) {
  return !named_in(key_manager, kUnusedKeyManagers);
}

// Whether OpenSSL's default context does its work with OpenSSL's own default provider and
// nothing else: no other provider (FIPS, legacy) is loaded, the FIPS property is not asked for,
// and a digest and a cipher fetched there come from that provider. (A configuration that sets
// other default properties this way also fails the fetches.)
bool default_provider_alone() {
  bool alone = true;
  OSSL_PROVIDER_do_all(
      nullptr,
      [](OSSL_PROVIDER* provider, void* result) {
        const std::string_view name = OSSL_PROVIDER_get0_name(provider);
        if (name != "default" && name != "base") *static_cast<bool*>(result) = false;
        return 1;
      },
      &alone);
  if (!alone || EVP_default_properties_is_fips_enabled(nullptr)) return false;
  const auto from_openssl_default = [](const OSSL_PROVIDER* provider) {
    const char* name = nullptr;
    OSSL_PARAM request[] = {
        OSSL_PARAM_construct_utf8_ptr(OSSL_PROV_PARAM_NAME, const_cast<char**>(&name), 0),
        OSSL_PARAM_construct_end()};
    return provider && std::string_view(OSSL_PROVIDER_get0_name(provider)) == "default" &&
           OSSL_PROVIDER_get_params(provider, request) == 1 && name &&
           std::string_view(name) == "OpenSSL Default Provider";
  };
  EVP_MD* digest = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
  const bool ok = from_openssl_default(digest ? EVP_MD_get0_provider(digest) : nullptr) &&
                  from_openssl_default(cipher ? EVP_CIPHER_get0_provider(cipher) : nullptr);
  EVP_MD_free(digest);
  EVP_CIPHER_free(cipher);
  ERR_clear_error();
  return ok;
}

OSSL_LIB_CTX* build() {
  if (!default_provider_alone()) {
    spdlog::info(
        "OpenSSL's configuration loads providers besides the default one or sets their "
        "properties: TLS uses OpenSSL's default library context (client certificates cost "
        "more to read)");
    return nullptr;
  }
  OSSL_LIB_CTX* provider_home = OSSL_LIB_CTX_new();
  OSSL_LIB_CTX* context = OSSL_LIB_CTX_new();
  inner.provider = provider_home ? OSSL_PROVIDER_load(provider_home, "default") : nullptr;
  if (inner.provider) {
    inner.decoders = algorithms_kept(inner.provider, OSSL_OP_DECODER, reads_public_key);
    inner.ciphers = algorithms_kept(inner.provider, OSSL_OP_CIPHER, used_by_tls);
    inner.key_managers = algorithms_kept(inner.provider, OSSL_OP_KEYMGMT, may_be_made_by_tls);
  }
  const bool found =
      !inner.decoders.empty() && !inner.ciphers.empty() && !inner.key_managers.empty();
  if (!context || !found || OSSL_PROVIDER_add_builtin(context, kProviderName, &initialise) != 1 ||
      OSSL_PROVIDER_load(context, kProviderName) == nullptr) {
    ERR_clear_error();
    spdlog::warn("cannot set up the TLS library context; using OpenSSL's default one");
    OSSL_LIB_CTX_free(context);  // the default provider stays loaded in its own, unused
    return nullptr;
  }
  return context;
}

}  // namespace

OSSL_LIB_CTX* tls_library_context() {
  static OSSL_LIB_CTX* const context = build();  // thread-safe once, as a local static
  return context;
}

}  // namespace stp::tls
