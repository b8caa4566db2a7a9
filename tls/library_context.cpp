// The TLS library context and its pass-through provider; see library_context.hpp.
#include "tls/library_context.hpp"

#include <openssl/core_dispatch.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <spdlog/spdlog.h>

#include <string_view>
#include <vector>

namespace stp::tls {
namespace {

constexpr const char* kProviderName = "smtp-tls-proxy-default";
constexpr std::string_view kKeptDecoderStructure = "structure=SubjectPublicKeyInfo";

// The default provider, loaded into a context of its own, that this provider passes on, and
// the decoders it keeps (null-terminated, as OpenSSL reads it). Set once, before the provider
// is first initialised, and never changed.
struct Inner {
  OSSL_PROVIDER* provider = nullptr;
  std::vector<OSSL_ALGORITHM> decoders;
};
Inner inner;

const OSSL_ALGORITHM* query_operation(void*, int operation, int* no_cache) {
  if (operation == OSSL_OP_DECODER) {
    *no_cache = 0;
    return inner.decoders.data();
  }
  return OSSL_PROVIDER_query_operation(inner.provider, operation, no_cache);
}

void unquery_operation(void*, int operation, const OSSL_ALGORITHM* algorithms) {
  if (operation != OSSL_OP_DECODER) {
    OSSL_PROVIDER_unquery_operation(inner.provider, operation, algorithms);
  }
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

// The default provider's decoders that read a SubjectPublicKeyInfo (one per key type, and the
// generic one that names the type), in its order; empty if it has none.
std::vector<OSSL_ALGORITHM> public_key_decoders(const OSSL_PROVIDER* provider) {
  std::vector<OSSL_ALGORITHM> kept;
  int no_cache = 0;
  const OSSL_ALGORITHM* all = OSSL_PROVIDER_query_operation(provider, OSSL_OP_DECODER, &no_cache);
  for (const OSSL_ALGORITHM* a = all; a && a->algorithm_names; ++a) {
    const std::string_view properties = a->property_definition ? a->property_definition : "";
    if (properties.find(kKeptDecoderStructure) != std::string_view::npos) kept.push_back(*a);
  }
  // The array OpenSSL gave is static in the default provider (its no_cache is 0), so the
  // entries copied stay valid after it is handed back.
  OSSL_PROVIDER_unquery_operation(provider, OSSL_OP_DECODER, all);
  return kept;
}

// Whether the default context offers the default provider and nothing that would do its work
// differently (a FIPS provider, say).
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
  return alone && OSSL_PROVIDER_available(nullptr, "default");
}

OSSL_LIB_CTX* build() {
  if (!default_provider_alone()) {
    spdlog::info(
        "OpenSSL's configuration loads providers besides the default one: TLS uses OpenSSL's "
        "default library context (client certificates cost more to read)");
    return nullptr;
  }
  OSSL_LIB_CTX* provider_home = OSSL_LIB_CTX_new();
  OSSL_LIB_CTX* context = OSSL_LIB_CTX_new();
  inner.provider = provider_home ? OSSL_PROVIDER_load(provider_home, "default") : nullptr;
  if (inner.provider) inner.decoders = public_key_decoders(inner.provider);
  const bool found = !inner.decoders.empty();
  inner.decoders.push_back({nullptr, nullptr, nullptr, nullptr});
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

OSSL_LIB_CTX* certificate_library_context() {
  static OSSL_LIB_CTX* const context = build();  // thread-safe once, as a local static
  return context;
}

}  // namespace stp::tls
