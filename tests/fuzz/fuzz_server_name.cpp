// Fuzz target: the ClientHello server_name extension reader (tls/server_name.cpp), which reads
// the client's bytes before any certificate is chosen. Any bytes give a host name or nothing,
// never a read past the end; a name given is lower case, a host name, and covered by itself.
#include "tls/server_name.hpp"

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // A copy of exactly `size` bytes, so that ASan sees any read past the end.
  const std::vector<unsigned char> body(data, data + size);
  const auto name = stp::tls::server_name_of(body.data(), body.size());
  if (!name) return 0;
  if (!stp::tls::is_host_name(*name) || !stp::tls::name_covers(*name, *name)) std::abort();
  for (const char c : *name) {
    if (std::isupper(static_cast<unsigned char>(c))) std::abort();
  }
  if (name->size() + 5 > size) std::abort();  // a name comes with its five bytes of framing
  return 0;
}
