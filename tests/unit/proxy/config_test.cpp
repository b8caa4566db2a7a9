// Unit tests for parse_config (proxy/config.cpp): the defaults, the precedence of the three
// sources, and what every ConfigError message looks like. Each flag's values are tested in
// config_flags_test.cpp, the sources in config_sources_test.cpp, value parsers in
// config_values_test.cpp.
#include "proxy/config.hpp"
#include "tests/unit/proxy/config_test_support.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

namespace stp {
namespace {

using namespace std::chrono_literals;
using namespace stp::test;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---- defaults --------------------------------------------------------------------------------

TEST(Config, DefaultsWithNoArguments) {
  const Config config = parse({});
  EXPECT_THAT(listeners_of(config), ElementsAre("0.0.0.0:25", "0.0.0.0:587", "0.0.0.0:465 tls"));
  EXPECT_THAT(config.tls_on_connect_ports, ElementsAre(465));
  EXPECT_FALSE(config.tls_on_connect);
  EXPECT_EQ(config.backend_host, "127.0.0.1");
  EXPECT_EQ(config.backend_port, 10025);
  EXPECT_EQ(config.backend_metadata, BackendMetadata::xclient);
  EXPECT_EQ(config.hostname, machine_name());
  EXPECT_TRUE(config.tls_certificates.empty());
  EXPECT_TRUE(config.tls_privatekeys.empty());
  EXPECT_EQ(config.tls_advertise_hosts.text(), "*");
  EXPECT_TRUE(config.tls_advertise_hosts.matches(ip("192.0.2.1")));
  EXPECT_TRUE(config.tls_advertise_hosts.matches(ip("2001:db8::1")));
  EXPECT_EQ(config.tls_require_ciphers, "");
  EXPECT_EQ(config.tls_ciphersuites, "");
  EXPECT_EQ(config.tls_min_protocol, "TLSv1.2");
  EXPECT_EQ(config.tls_dhparam, "");
  EXPECT_TRUE(config.client_name_lookup);
  EXPECT_EQ(config.smtp_receive_timeout, 300s);
  EXPECT_EQ(config.tls_handshake_timeout, 30s);
  EXPECT_EQ(config.max_line_length, 2047u);
  EXPECT_EQ(config.bare_lf, BareLfPolicy::normalize);
  EXPECT_EQ(config.threads, std::clamp(std::thread::hardware_concurrency(), 1u, 256u));
  EXPECT_EQ(config.log_level, "info");
}

TEST(Config, DefaultsAgreeWithTheStructsInitializers) {
  const Config parsed = parse({});
  const Config plain;
  EXPECT_EQ(parsed.tls_on_connect, plain.tls_on_connect);
  EXPECT_EQ(parsed.backend_host, plain.backend_host);
  EXPECT_EQ(parsed.backend_port, plain.backend_port);
  EXPECT_EQ(parsed.backend_metadata, plain.backend_metadata);
  EXPECT_EQ(parsed.tls_require_ciphers, plain.tls_require_ciphers);
  EXPECT_EQ(parsed.tls_ciphersuites, plain.tls_ciphersuites);
  EXPECT_EQ(parsed.tls_min_protocol, plain.tls_min_protocol);
  EXPECT_EQ(parsed.tls_dhparam, plain.tls_dhparam);
  EXPECT_EQ(parsed.client_name_lookup, plain.client_name_lookup);
  EXPECT_EQ(parsed.smtp_receive_timeout, plain.smtp_receive_timeout);
  EXPECT_EQ(parsed.tls_handshake_timeout, plain.tls_handshake_timeout);
  EXPECT_EQ(parsed.max_line_length, plain.max_line_length);
  EXPECT_EQ(parsed.bare_lf, plain.bare_lf);
  EXPECT_EQ(parsed.log_level, plain.log_level);
}

// ---- precedence --------------------------------------------------------------------------------

TEST(Config, CommandLineBeatsEnvironmentBeatsFile) {
  const TempFile file("threads = 5\nmax-line-length = 1000\nbackend = file.example:25\n");
  const Env env = {{"SMTP_TLS_PROXY_CONFIG", file.path()},
                   {"SMTP_TLS_PROXY_THREADS", "6"},
                   {"SMTP_TLS_PROXY_MAX_LINE_LENGTH", "2000"}};
  const Config config = parse({"--threads", "7"}, env);
  EXPECT_EQ(config.threads, 7u);                   // all three: the command line
  EXPECT_EQ(config.max_line_length, 2000u);        // environment and file: the environment
  EXPECT_EQ(config.backend_host, "file.example");  // the file alone
  EXPECT_EQ(config.log_level, "info");             // none: the default
}

TEST(Config, RepeatableFlagsTakeAllTheirValuesFromOneSource) {
  const TempFile file("listen = 127.0.0.1:1025\nlisten = 127.0.0.1:1026\n");
  const Env env = {{"SMTP_TLS_PROXY_LISTEN", "127.0.0.1:2025,127.0.0.1:2026"}};

  EXPECT_THAT(listeners_of(parse({"--config", file.path()})),
              ElementsAre("127.0.0.1:1025", "127.0.0.1:1026"));
  EXPECT_THAT(listeners_of(parse({"--config", file.path()}, env)),
              ElementsAre("127.0.0.1:2025", "127.0.0.1:2026"));
  EXPECT_THAT(listeners_of(parse({"--config", file.path(), "--listen", "127.0.0.1:3025"}, env)),
              ElementsAre("127.0.0.1:3025"));
}

TEST(Config, EnvironmentSwitchYieldsToTheFileNever) {
  // The environment says no, the file says yes: the environment wins.
  const TempFile file("tls-on-connect = yes\n");
  EXPECT_FALSE(
      parse({"--config", file.path()}, {{"SMTP_TLS_PROXY_TLS_ON_CONNECT", "off"}}).tls_on_connect);
  EXPECT_TRUE(parse({"--config", file.path()}).tls_on_connect);
  // A bare switch on the command line beats the environment.
  EXPECT_TRUE(
      parse({"--tls-on-connect"}, {{"SMTP_TLS_PROXY_TLS_ON_CONNECT", "off"}}).tls_on_connect);
}

TEST(Config, AValueFromAHigherSourceHidesABadOneBelow) {
  // Only the value that is used is validated: a bad file value overridden on the command line
  // does not stop start-up.
  const TempFile file("threads = 0\n");
  EXPECT_EQ(parse({"--config", file.path(), "--threads", "2"}).threads, 2u);
}

TEST(ConfigErrors, OperatorTextIsOnePrintableLine) {
  // An option name with a control byte, as a config file or a hostile wrapper could pass it.
  const std::string message = error_of({"--x\x01=1"});
  EXPECT_EQ(message.find('\x01'), std::string::npos) << message;
  EXPECT_NE(message.find("\\x01"), std::string::npos) << message;
}

TEST(ConfigErrors, AnOptionWithoutANameIsSaidSo) {
  const std::string message = error_of({"--="});
  EXPECT_TRUE(message.starts_with("--: an option name is missing")) << message;
}

TEST(ConfigErrors, BackendWithANulIsRefused) {
  const std::string message =
      error_of({}, {{"SMTP_TLS_PROXY_BACKEND", std::string("127.0.0.1\0evil.example:10025", 28)}});
  EXPECT_TRUE(message.starts_with("--backend: contains a NUL byte")) << message;
  EXPECT_EQ(message.find('\0'), std::string::npos);
}

}  // namespace
}  // namespace stp
