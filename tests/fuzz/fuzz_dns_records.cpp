// Fuzz target: DNS record data (dns/records.cpp: names, MX, TLSA, A, AAAA), the network's bytes
// whether DNSSEC vouched for them or not. Any bytes give a value or nothing, never a read past the
// end; a name read is lower-case host-name text, re-readable from its own wire form.
#include "dns/records.hpp"

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace {

std::string to_wire(const std::string& name) {
  std::string out;
  std::size_t start = 0;
  while (!name.empty() && start <= name.size()) {
    const auto dot = name.find('.', start);
    const auto end = dot == std::string::npos ? name.size() : dot;
    out += static_cast<char>(end - start);
    out += name.substr(start, end - start);
    start = end + 1;
  }
  return out + '\0';
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);  // exactly `size`
  std::size_t consumed = 0;
  if (const auto name = stp::dns::read_name(bytes, &consumed)) {
    if (consumed > size) std::abort();
    for (const char c : *name) {
      if (std::isupper(static_cast<unsigned char>(c))) std::abort();
    }
    if (stp::dns::read_name(to_wire(*name)) != name) std::abort();
  }
  if (const auto mx = stp::dns::read_mx(bytes)) {
    if (mx->exchange.size() + 3 > size) std::abort();
  }
  if (const auto tlsa = stp::dns::read_tlsa(bytes)) {
    if (tlsa->data.size() + 3 != size || tlsa->data.empty()) std::abort();
  }
  stp::dns::read_address(stp::dns::RecordType::a, bytes);
  stp::dns::read_address(stp::dns::RecordType::aaaa, bytes);
  return 0;
}
