// The pure parts of choosing a certificate by SNI: name patterns, and reading the host name
// out of a ClientHello's server_name extension.
#include "tls/certificate_sets.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace stp::tls {
namespace {

std::vector<unsigned char> extension(const std::string& name, unsigned char type = 0) {
  const std::size_t entry = 3 + name.size();
  std::vector<unsigned char> body;
  for (const std::size_t byte : {entry >> 8, entry & 0xff})
    body.push_back(static_cast<unsigned char>(byte));
  body.push_back(type);
  for (const std::size_t byte : {name.size() >> 8, name.size() & 0xff})
    body.push_back(static_cast<unsigned char>(byte));
  for (const char c : name) body.push_back(static_cast<unsigned char>(c));
  return body;
}

TEST(CertificateSets, NamesCoverExactlyOrOneLabelUnderAWildcard) {
  EXPECT_TRUE(name_covers("mx.example.org", "mx.example.org"));
  EXPECT_FALSE(name_covers("mx.example.org", "mx2.example.org"));
  EXPECT_TRUE(name_covers("*.example.org", "mx.example.org"));
  EXPECT_FALSE(name_covers("*.example.org", "a.mx.example.org"));
  EXPECT_FALSE(name_covers("*.example.org", "example.org"));
  EXPECT_FALSE(name_covers("*.example.org", ".example.org"));
}

TEST(CertificateSets, TheServerNameIsReadLowerCasedWithoutItsDot) {
  const auto body = extension("MX.Example.ORG.");
  EXPECT_EQ(server_name_of(body.data(), body.size()), "mx.example.org");
}

TEST(CertificateSets, AMalformedExtensionOrNameIsNoName) {
  auto body = extension("mx.example.org");
  EXPECT_EQ(server_name_of(body.data(), body.size() - 1), std::nullopt);  // cut short
  body[1] += 1;  // list length past the end
  EXPECT_EQ(server_name_of(body.data(), body.size()), std::nullopt);
  const auto other_type = extension("mx.example.org", 1);
  EXPECT_EQ(server_name_of(other_type.data(), other_type.size()), std::nullopt);
  const auto not_a_name = extension("mx example\n");
  EXPECT_EQ(server_name_of(not_a_name.data(), not_a_name.size()), std::nullopt);
  EXPECT_EQ(server_name_of(nullptr, 0), std::nullopt);
}

}  // namespace
}  // namespace stp::tls
