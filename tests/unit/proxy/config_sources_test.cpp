// Unit tests for reading the sources (proxy/config_sources.cpp), through parse_config:
// --help and --version, the command line's errors, SMTP_TLS_PROXY_ environment variables and
// the --config file.
#include "proxy/config.hpp"
#include "tests/unit/proxy/config_test_support.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <sstream>

namespace stp {
namespace {

using namespace std::chrono_literals;
using namespace stp::test;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---- --help and --version ------------------------------------------------------------------

// The lines of --help that describe `flag`, whitespace collapsed.
std::string help_entry(const std::string& help, const std::string& flag) {
  std::istringstream lines(help);
  std::string line;
  std::string entry;
  bool inside = false;
  while (std::getline(lines, line)) {
    if (line.starts_with("  --")) {
      if (inside) break;
      inside = line.starts_with("  --" + flag + " ") || line == "  --" + flag;
    }
    if (inside) entry += line + " ";
  }
  std::string collapsed;
  for (const char c : entry) {
    if (c == ' ' && (collapsed.empty() || collapsed.back() == ' ')) continue;
    collapsed += c;
  }
  if (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
  return collapsed;
}

TEST(Config, HelpListsEveryFlagWithItsDefault) {
  std::ostringstream out;
  EXPECT_FALSE(run({"--help"}, {}, out).has_value());
  const std::string help = out.str();

  std::vector<std::string> listed;
  std::istringstream lines(help);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("  --")) listed.push_back(line.substr(4, line.find(' ', 4) - 4));
  }
  const std::vector<std::string> expected = {"help",
                                             "version",
                                             "config",
                                             "listen",
                                             "tls-on-connect-ports",
                                             "tls-on-connect",
                                             "backend",
                                             "backend-metadata",
                                             "backend-idle-timeout",
                                             "proxy-v2-max-header",
                                             "hostname",
                                             "tls-certificate",
                                             "tls-privatekey",
                                             "tls-sni-certificate",
                                             "tls-host-certificate",
                                             "tls-advertise-hosts",
                                             "tls-require-ciphers",
                                             "tls-ciphersuites",
                                             "tls-min-protocol",
                                             "tls-dhparam",
                                             "tls-verify-hosts",
                                             "tls-try-verify-hosts",
                                             "tls-verify-certificates",
                                             "tls-crl",
                                             "tls-ticket-key-file",
                                             "tls-verify-depth",
                                             "tls-verify-cache-time",
                                             "tls-peerdn-format",
                                             "received-header",
                                             "tls-require-ports",
                                             "tls-require-hosts",
                                             "tls-require-verified-hosts",
                                             "client-name-lookup",
                                             "smtp-receive-timeout",
                                             "tls-handshake-timeout",
                                             "max-line-length",
                                             "bare-lf",
                                             "threads",
                                             "max-connections",
                                             "max-connections-per-host",
                                             "max-errors",
                                             "max-pipelined-commands",
                                             "user",
                                             "proxy-protocol-hosts",
                                             "log-level",
                                             "log-format",
                                             "metrics-listen",
                                             "shutdown-grace",
                                             "backend-probe-interval",
                                             "reload-check-interval",
                                             "relay-listen",
                                             "relay-clients",
                                             "relay-host",
                                             "relay-route",
                                             "relay-mx-port",
                                             "dns-forwarder",
                                             "dns-trust-anchor",
                                             "relay-mx-refuse-addresses",
                                             "relay-mx-timeout",
                                             "relay-dane",
                                             "relay-mta-sts",
                                             "relay-mta-sts-cache",
                                             "relay-tls-rpt-dir",
                                             "relay-tls-on-connect-ports",
                                             "relay-helo",
                                             "relay-auth-file",
                                             "relay-auth-clear-hosts",
                                             "relay-connection-idle",
                                             "relay-connection-max-messages",
                                             "relay-connect-timeout",
                                             "relay-command-timeout",
                                             "relay-final-timeout",
                                             "relay-hosts-nopass-tls",
                                             "relay-hosts-avoid-tls",
                                             "relay-hosts-require-tls",
                                             "relay-tls-tempfail-tryclear",
                                             "relay-tls-certificate",
                                             "relay-tls-privatekey",
                                             "relay-tls-verify-certificates",
                                             "relay-tls-verify-hosts",
                                             "relay-tls-try-verify-hosts",
                                             "relay-tls-verify-cert-hostnames",
                                             "relay-tls-require-ciphers",
                                             "relay-tls-min-protocol",
                                             "relay-tls-crl",
                                             "relay-tls-sni"};
  EXPECT_EQ(listed, expected);

  const std::map<std::string, std::string> defaults = {
      {"config", "none"},
      {"listen", "0.0.0.0:25, 0.0.0.0:587, 0.0.0.0:465"},
      {"tls-on-connect-ports", "465"},
      {"tls-on-connect", "off"},
      {"backend", "127.0.0.1:10025"},
      {"backend-metadata", "xclient"},
      {"backend-idle-timeout", "5s"},
      {"proxy-v2-max-header", "232"},
      {"hostname", "this machine's name, " + machine_name()},
      {"tls-certificate", "a generated self-signed certificate"},
      {"tls-privatekey", "in the certificate file"},
      {"tls-advertise-hosts", "*"},
      {"tls-require-ciphers", "forward-secret AEAD suites (ECDHE/DHE with AES-GCM or ChaCha20)"},
      {"tls-ciphersuites", "OpenSSL's defaults"},
      {"tls-min-protocol", "TLSv1.2"},
      {"tls-dhparam", "none, ECDHE only"},
      {"tls-verify-hosts", "none"},
      {"tls-try-verify-hosts", "none"},
      {"tls-verify-certificates", "none"},
      {"tls-crl", "none"},
      {"tls-verify-depth", "9"},
      {"tls-verify-cache-time", "60s"},
      {"tls-peerdn-format", "rfc2253"},
      {"received-header", "on"},
      {"tls-require-ports", "587"},
      {"tls-require-hosts", "none"},
      {"tls-require-verified-hosts", "none"},
      {"client-name-lookup", "on"},
      {"smtp-receive-timeout", "300s"},
      {"tls-handshake-timeout", "30s"},
      {"max-line-length", "2047"},
      {"bare-lf", "normalize"},
      {"threads", "the number of cores, " +
                      std::to_string(std::clamp(std::thread::hardware_concurrency(), 1u, 256u))},
      {"log-level", "info"},
      {"log-format", "text"},
      {"max-connections", "10000"},
      {"max-connections-per-host", "50"},
      {"max-errors", "20"},
      {"max-pipelined-commands", "100"},
      {"user", "none: stay as started"},
      {"proxy-protocol-hosts", "none"},
      {"metrics-listen", "0.0.0.0:9225"},
      {"shutdown-grace", "30s"},
      {"backend-probe-interval", "10s"},
      {"reload-check-interval", "10s"},
  };
  for (const auto& [flag, value] : defaults) {
    EXPECT_THAT(help_entry(help, flag), HasSubstr("(default: " + value + ")")) << flag;
  }
  EXPECT_THAT(help_entry(help, "listen"), StartsWith("--listen ADDR:PORT "));
  EXPECT_THAT(help_entry(help, "tls-on-connect"), StartsWith("--tls-on-connect implicit TLS"));
  EXPECT_THAT(help, HasSubstr("SMTP_TLS_PROXY_<NAME>"));
}

TEST(Config, HelpComesBeforeValidation) {
  std::ostringstream out;
  EXPECT_FALSE(run({"--threads", "0", "--help"}, {{"SMTP_TLS_PROXY_THREADS", "x"}}, out));
  EXPECT_THAT(out.str(), StartsWith("Usage: smtp-tls-proxy"));
}

TEST(Config, Version) {
  std::ostringstream out;
  EXPECT_FALSE(run({"--version"}, {}, out).has_value());
  EXPECT_THAT(out.str(), StartsWith("smtp-tls-proxy "));
  EXPECT_GT(out.str().size(), std::string("smtp-tls-proxy \n").size());
  EXPECT_EQ(out.str().back(), '\n');
}

// ---- the command line ------------------------------------------------------------------------

TEST(Config, CommandLineErrors) {
  EXPECT_EQ(error_of({"--no-such-flag"}), "--no-such-flag: unknown flag");
  EXPECT_EQ(error_of({"--no-such-flag=1"}), "--no-such-flag: unknown flag");
  EXPECT_EQ(error_of({"--thread", "2"}), "--thread: unknown flag");  // no abbreviations
  EXPECT_EQ(error_of({"-t"}), "-t: unknown flag");
  EXPECT_EQ(error_of({"listen"}), "listen: unexpected argument (flags start with --)");
  EXPECT_EQ(error_of({"--hostname", "a", "--hostname", "b"}),
            "--hostname: given more than once (b)");
  EXPECT_EQ(error_of({"--threads", "--hostname", "x"}), "--threads: needs a value");
  EXPECT_EQ(error_of({"--listen", "--tls-on-connect"}), "--listen: needs a value");
  EXPECT_EQ(error_of({"--listen", "--tls-on-connect=1"}), "--listen: needs a value");
}

// ---- the environment -------------------------------------------------------------------------

TEST(Config, EnvironmentNamesAreUpperCaseWithUnderscores) {
  std::set<std::string> asked;
  const EnvLookup env = [&](const std::string& name) -> std::optional<std::string> {
    asked.insert(name);
    if (name == "SMTP_TLS_PROXY_TLS_ON_CONNECT_PORTS") return "2465";
    if (name == "SMTP_TLS_PROXY_LISTEN") return "127.0.0.1:2465";
    return std::nullopt;
  };
  const char* argv[] = {"smtp-tls-proxy"};
  std::ostringstream out;
  const std::optional<Config> config = parse_config(1, argv, env, out);
  ASSERT_TRUE(config.has_value());
  EXPECT_THAT(listeners_of(*config), ElementsAre("127.0.0.1:2465 tls"));
  EXPECT_TRUE(asked.contains("SMTP_TLS_PROXY_TLS_ADVERTISE_HOSTS"));
  EXPECT_TRUE(asked.contains("SMTP_TLS_PROXY_SMTP_RECEIVE_TIMEOUT"));
  EXPECT_TRUE(asked.contains("SMTP_TLS_PROXY_CONFIG"));
  EXPECT_FALSE(asked.contains("SMTP_TLS_PROXY_HELP"));  // command line only
  EXPECT_FALSE(asked.contains("SMTP_TLS_PROXY_VERSION"));
  for (const std::string& name : asked) EXPECT_THAT(name, StartsWith("SMTP_TLS_PROXY_"));
}

TEST(Config, EnvironmentSplitsRepeatableFlagsOnCommas) {
  const Config config =
      parse({}, {{"SMTP_TLS_PROXY_LISTEN", "127.0.0.1:25, [::1]:25 ,127.0.0.1:465"},
                 {"SMTP_TLS_PROXY_TLS_CERTIFICATE", "rsa.pem,ecdsa.pem"},
                 {"SMTP_TLS_PROXY_TLS_PRIVATEKEY", "rsa.key"}});
  EXPECT_THAT(listeners_of(config), ElementsAre("127.0.0.1:25", "[::1]:25", "127.0.0.1:465 tls"));
  EXPECT_THAT(config.tls_certificates, ElementsAre("rsa.pem", "ecdsa.pem"));
  EXPECT_THAT(config.tls_privatekeys, ElementsAre("rsa.key"));
}

TEST(Config, EnvironmentKeepsCommasInSingleValues) {
  const Config config = parse({}, {{"SMTP_TLS_PROXY_TLS_ADVERTISE_HOSTS", "!10.0.0.0/8, *"}});
  EXPECT_EQ(config.tls_advertise_hosts.text(), "!10.0.0.0/8, *");
  EXPECT_FALSE(config.tls_advertise_hosts.matches(ip("10.1.1.1")));
  EXPECT_TRUE(config.tls_advertise_hosts.matches(ip("192.0.2.1")));
}

TEST(Config, EnvironmentSwitchesTakeBooleanWords) {
  for (const char* yes : {"true", "yes", "on", "1", "TRUE", "Yes"}) {
    EXPECT_TRUE(parse({}, {{"SMTP_TLS_PROXY_TLS_ON_CONNECT", yes}}).tls_on_connect) << yes;
  }
  for (const char* no : {"false", "no", "off", "0", "Off"}) {
    EXPECT_FALSE(parse({}, {{"SMTP_TLS_PROXY_TLS_ON_CONNECT", no}}).tls_on_connect) << no;
  }
  EXPECT_EQ(error_of({}, {{"SMTP_TLS_PROXY_TLS_ON_CONNECT", "maybe"}}),
            "--tls-on-connect: must be true, false, yes, no, on, off, 1 or 0 (maybe) "
            "[in SMTP_TLS_PROXY_TLS_ON_CONNECT]");
}

TEST(Config, EnvironmentErrorsNameFlagAndVariable) {
  EXPECT_EQ(error_of({}, {{"SMTP_TLS_PROXY_THREADS", "0"}}),
            "--threads: must be a number from 1 to 256 (0) [in SMTP_TLS_PROXY_THREADS]");
  EXPECT_EQ(error_of({}, {{"SMTP_TLS_PROXY_LISTEN", "127.0.0.1:25,,127.0.0.1:26"}}),
            "--listen: empty item in a comma-separated list (127.0.0.1:25,,127.0.0.1:26) "
            "[in SMTP_TLS_PROXY_LISTEN]");
  EXPECT_EQ(error_of({}, {{"SMTP_TLS_PROXY_LISTEN", ""}}),
            "--listen: at least one address is needed () [in SMTP_TLS_PROXY_LISTEN]");
}

TEST(Config, ProcessEnvironmentReadsTheRealEnvironment) {
  const EnvLookup env = process_environment();
  ASSERT_EQ(::setenv("SMTP_TLS_PROXY_UNIT_TEST_VARIABLE", "a, b", 1), 0);
  EXPECT_EQ(env("SMTP_TLS_PROXY_UNIT_TEST_VARIABLE"), "a, b");
  ASSERT_EQ(::unsetenv("SMTP_TLS_PROXY_UNIT_TEST_VARIABLE"), 0);
  EXPECT_EQ(env("SMTP_TLS_PROXY_UNIT_TEST_VARIABLE"), std::nullopt);
}

// ---- the --config file -----------------------------------------------------------------------

TEST(Config, FileWithRepeatedKeysAndComments) {
  const TempFile file(
      "# the proxy's settings\n"
      "listen = 127.0.0.1:25\n"
      "  listen=[::1]:465   # implicit TLS\n"
      "\n"
      "hostname = mx.example.org\n"
      "tls-certificate = /etc/ssl/rsa.pem\n"
      "tls-certificate = /etc/ssl/ecdsa.pem\n"
      "tls-on-connect = no\n"
      "smtp-receive-timeout = 2m\n");
  const Config config = parse({"--config", file.path()});
  EXPECT_THAT(listeners_of(config), ElementsAre("127.0.0.1:25", "[::1]:465 tls"));
  EXPECT_EQ(config.hostname, "mx.example.org");
  EXPECT_THAT(config.tls_certificates, ElementsAre("/etc/ssl/rsa.pem", "/etc/ssl/ecdsa.pem"));
  EXPECT_FALSE(config.tls_on_connect);
  EXPECT_EQ(config.smtp_receive_timeout, 120s);
}

TEST(Config, FileNamedByTheEnvironment) {
  const TempFile file("threads = 3\n");
  EXPECT_EQ(parse({}, {{"SMTP_TLS_PROXY_CONFIG", file.path()}}).threads, 3u);

  // --config on the command line wins over the variable: only one file is read.
  const TempFile other("threads = 4\n");
  EXPECT_EQ(parse({"--config", other.path()}, {{"SMTP_TLS_PROXY_CONFIG", file.path()}}).threads,
            4u);
}

TEST(Config, FileErrors) {
  const TempFile unknown("listen = 127.0.0.1:25\nlisten-address = 127.0.0.1:26\n");
  EXPECT_EQ(error_of({"--config", unknown.path()}),
            "--config: unknown key (listen-address) [in " + unknown.path() + "]");

  const TempFile command_line_only("help = true\n");
  EXPECT_EQ(error_of({"--config", command_line_only.path()}),
            "--config: unknown key (help) [in " + command_line_only.path() + "]");

  const TempFile nested("config = /etc/other.conf\n");
  EXPECT_EQ(error_of({"--config", nested.path()}),
            "--config: unknown key (config) [in " + nested.path() + "]");

  const TempFile garbage("listen 127.0.0.1:25\n");
  EXPECT_EQ(
      error_of({"--config", garbage.path()}),
      "--config: not a `name = value` line (listen 127.0.0.1:25) [in " + garbage.path() + "]");

  const TempFile twice("hostname = a\nhostname = b\n");
  EXPECT_EQ(error_of({"--config", twice.path()}),
            "--hostname: given more than once (b) [in " + twice.path() + "]");

  const TempFile bad_value("max-line-length = 100\n");
  EXPECT_EQ(error_of({"--config", bad_value.path()}),
            "--max-line-length: must be a number of bytes from 512 to 16383 (100) [in " +
                bad_value.path() + "]");

  const TempFile bare_switch("tls-on-connect =\n");
  EXPECT_EQ(error_of({"--config", bare_switch.path()}),
            "--tls-on-connect: must be true, false, yes, no, on, off, 1 or 0 () [in " +
                bare_switch.path() + "]");

  EXPECT_EQ(error_of({"--config", "/nonexistent/smtp-tls-proxy.conf"}),
            "--config: cannot read the file (/nonexistent/smtp-tls-proxy.conf)");
  EXPECT_EQ(error_of({"--config", ""}), "--config: empty file name");
}

}  // namespace
}  // namespace stp
