// Fuzz target: MTA-STS texts (outbound/mta_sts_policy.cpp): the policy file from a domain's web
// server and the _mta-sts TXT record, both the network's. Any bytes give a policy or nothing,
// never a crash; a policy read is one the checks allow, and says the same when written out
// again and read back; an id is 1 to 32 letters and digits.
#include "dns/records.hpp"
#include "outbound/mta_sts_policy.hpp"

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace {

using stp::outbound::StsMode;

std::string write_out(const stp::outbound::StsPolicy& policy) {
  std::string text = "version: STSv1\r\nmode: " + std::string(to_string(policy.mode)) +
                     "\r\nmax_age: " + std::to_string(policy.max_age.count()) + "\r\n";
  for (const auto& mx : policy.mx) text += "mx: " + mx + "\r\n";
  return text;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);  // exactly `size`
  if (const auto policy = stp::outbound::parse_sts_policy(bytes)) {
    if (policy->max_age > stp::outbound::kMaxStsMaxAge || policy->max_age.count() < 0) std::abort();
    if (policy->mode != StsMode::none && policy->mx.empty()) std::abort();
    for (const auto& mx : policy->mx) {
      const bool wildcard = mx.starts_with("*.");
      for (const char c : mx) {
        if (std::isupper(static_cast<unsigned char>(c))) std::abort();
      }
      // A plain pattern matches itself; a wildcard the name one label longer.
      if (!stp::outbound::sts_mx_matches(*policy, wildcard ? "x" + mx.substr(1) : mx)) {
        std::abort();
      }
    }
    const auto again = stp::outbound::parse_sts_policy(write_out(*policy));
    if (!again || again->mode != policy->mode || again->max_age != policy->max_age ||
        again->mx != policy->mx) {
      std::abort();
    }
  }
  if (const auto id = stp::outbound::parse_sts_record(bytes)) {
    if (id->empty() || id->size() > 32) std::abort();
    for (const char c : *id) {
      if (!std::isalnum(static_cast<unsigned char>(c))) std::abort();
    }
  }
  if (const auto text = stp::dns::read_txt(bytes)) {
    if (text->size() >= size) std::abort();
  }
  stp::outbound::sts_mx_matches(stp::outbound::StsPolicy{.mode = StsMode::enforce,
                                                         .max_age = {},
                                                         .mx = {"*.example.com", "mx.example.net"},
                                                         .lines = {}},
                                bytes);
  return 0;
}
