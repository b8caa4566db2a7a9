// Small values read out of OpenSSL: certificate and CRL dates as Unix time, and integers kept
// in ex_data slots (a slot holds a pointer; these hold a number in it, 0 meaning unset).
// Trusts OpenSSL's parsed objects; nothing here allocates.
#pragma once

#include <openssl/asn1.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <optional>

namespace stp::tls {

inline std::optional<std::time_t> unix_time(const ASN1_TIME* time) {
  std::tm tm{};
  if (!time || ASN1_TIME_to_tm(time, &tm) != 1) return std::nullopt;
  return timegm(&tm);
}

// The earliest notAfter in a chain; nullopt when it is empty or a date cannot be read (a
// bound that cannot be known is no bound to rely on).
inline std::optional<std::time_t> earliest_not_after(const STACK_OF(X509) * chain) {
  std::optional<std::time_t> earliest;
  for (int i = 0; chain && i < sk_X509_num(chain); ++i) {
    const auto t = unix_time(X509_get0_notAfter(sk_X509_value(chain, i)));
    if (!t) return std::nullopt;
    earliest = earliest ? std::min(*earliest, *t) : *t;
  }
  return earliest;
}

inline void* ex_data_number(std::intptr_t value) {
  return reinterpret_cast<void*>(value);
}
inline std::intptr_t number_in_ex_data(void* data) {
  return reinterpret_cast<std::intptr_t>(data);
}

}  // namespace stp::tls
