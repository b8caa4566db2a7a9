// Unit tests for parse_config and parse_duration: defaults, every flag's values and errors (each
// naming its flag), the three sources and their precedence, --help and --version.
#include "proxy/config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

namespace stp {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Args = std::vector<std::string>;
using Env = std::map<std::string, std::string>;

EnvLookup lookup_in(Env env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    const auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

std::optional<Config> run(const Args& args, const Env& env, std::ostream& out) {
  std::vector<const char*> argv{"smtp-tls-proxy"};
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  return parse_config(static_cast<int>(argv.size()), argv.data(), lookup_in(env), out);
}

Config parse(const Args& args, const Env& env = {}) {
  std::ostringstream out;
  std::optional<Config> config = run(args, env, out);
  EXPECT_TRUE(config.has_value());
  EXPECT_EQ(out.str(), "");
  return config.value_or(Config{});
}

// The ConfigError message for these arguments; fails the test when there is none.
std::string error_of(const Args& args, const Env& env = {}) {
  std::ostringstream out;
  try {
    run(args, env, out);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return {};
}

// A config file that exists for the test's lifetime.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("stp-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
    std::ofstream(path_) << content;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

std::string endpoint_text(const Listener& listener) {
  std::ostringstream text;
  text << listener.endpoint << (listener.implicit_tls ? " tls" : "");
  return text.str();
}

std::vector<std::string> listeners_of(const Config& config) {
  std::vector<std::string> result;
  for (const Listener& listener : config.listeners) result.push_back(endpoint_text(listener));
  return result;
}

std::string machine_name() {
  char name[HOST_NAME_MAX + 1] = {};
  EXPECT_EQ(::gethostname(name, sizeof name - 1), 0);
  return name;
}

boost::asio::ip::address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}

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
                                             "tls-advertise-hosts",
                                             "tls-require-ciphers",
                                             "tls-ciphersuites",
                                             "tls-min-protocol",
                                             "tls-dhparam",
                                             "tls-verify-hosts",
                                             "tls-try-verify-hosts",
                                             "tls-verify-certificates",
                                             "tls-crl",
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
                                             "reload-check-interval"};
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

// ---- --listen and implicit TLS ---------------------------------------------------------------

TEST(Config, ListenReplacesTheDefaults) {
  const Config config =
      parse({"--listen", "127.0.0.1:2525", "--listen=[::]:25", "--listen", "[2001:db8::7]:465"});
  EXPECT_THAT(listeners_of(config),
              ElementsAre("127.0.0.1:2525", "[::]:25", "[2001:db8::7]:465 tls"));
  EXPECT_TRUE(config.listeners[1].endpoint.address().is_v6());
  EXPECT_EQ(config.listeners[1].endpoint.address(), ip("::"));
  EXPECT_EQ(config.listeners[1].endpoint.port(), 25);
}

TEST(Config, ListenErrors) {
  const std::map<std::string, std::string> cases = {
      {"::1:25", "--listen: an IPv6 address must be in brackets, as in [::1]:25 (::1:25)"},
      {"[::1]25", "--listen: expected [IPV6]:PORT ([::1]25)"},
      {"[::1]", "--listen: expected [IPV6]:PORT ([::1])"},
      {"[::1:25", "--listen: expected [IPV6]:PORT ([::1:25)"},
      {"[1.2.3.4]:25", "--listen: not an IPv6 address in the brackets ([1.2.3.4]:25)"},
      {"192.0.2.1", "--listen: expected HOST:PORT (192.0.2.1)"},
      {":25", "--listen: the address is missing (:25)"},
      {"192.0.2.1:0", "--listen: port must be a number from 1 to 65535 (192.0.2.1:0)"},
      {"192.0.2.1:65536", "--listen: port must be a number from 1 to 65535 (192.0.2.1:65536)"},
      {"192.0.2.1:smtp", "--listen: port must be a number from 1 to 65535 (192.0.2.1:smtp)"},
      {"192.0.2.1:", "--listen: port must be a number from 1 to 65535 (192.0.2.1:)"},
      {"localhost:25",
       "--listen: not an IP address (listen on an address, not a name) (localhost:25)"},
      {"192.0.2.256:25",
       "--listen: not an IP address (listen on an address, not a name) (192.0.2.256:25)"},
  };
  for (const auto& [value, message] : cases) {
    EXPECT_EQ(error_of({"--listen", value}), message) << value;
  }
  EXPECT_EQ(error_of({"--listen", "127.0.0.1:25", "--listen", "127.0.0.1:25"}),
            "--listen: listed twice (127.0.0.1:25)");
  EXPECT_EQ(error_of({"--listen"}), "--listen: needs a value");
  EXPECT_EQ(error_of({"--listen="}), "--listen: needs a value");
}

TEST(Config, TlsOnConnectPortsMarkListeners) {
  const Config config = parse({"--listen", "127.0.0.1:25", "--listen", "[::1]:2465", "--listen",
                               "127.0.0.1:2465", "--tls-on-connect-ports", " 2465 "});
  EXPECT_THAT(listeners_of(config),
              ElementsAre("127.0.0.1:25", "[::1]:2465 tls", "127.0.0.1:2465 tls"));
  EXPECT_THAT(config.tls_on_connect_ports, ElementsAre(2465));

  const Config two = parse({"--listen", "127.0.0.1:465", "--listen", "127.0.0.1:993", "--listen",
                            "127.0.0.1:25", "--tls-on-connect-ports", "993,465"});
  EXPECT_THAT(listeners_of(two),
              ElementsAre("127.0.0.1:465 tls", "127.0.0.1:993 tls", "127.0.0.1:25"));
  EXPECT_THAT(two.tls_on_connect_ports, ElementsAre(993, 465));
}

TEST(Config, EmptyTlsOnConnectPortsMeansNone) {
  const Config config = parse({"--tls-on-connect-ports", ""});
  EXPECT_TRUE(config.tls_on_connect_ports.empty());
  EXPECT_THAT(listeners_of(config), ElementsAre("0.0.0.0:25", "0.0.0.0:587", "0.0.0.0:465"));
}

TEST(Config, DefaultTlsOnConnectPortNeedNotBeListenedOn) {
  const Config config = parse({"--listen", "127.0.0.1:2525"});
  EXPECT_THAT(listeners_of(config), ElementsAre("127.0.0.1:2525"));
  EXPECT_THAT(config.tls_on_connect_ports, ElementsAre(465));
}

TEST(Config, TlsOnConnectPortsErrors) {
  EXPECT_EQ(error_of({"--listen", "127.0.0.1:25", "--tls-on-connect-ports", "465"}),
            "--tls-on-connect-ports: port is not among the --listen addresses (465)");
  EXPECT_EQ(error_of({"--tls-on-connect-ports", "465,25,2465"}),
            "--tls-on-connect-ports: port is not among the --listen addresses (2465)");
  EXPECT_EQ(error_of({"--tls-on-connect-ports", "465;587"}),
            "--tls-on-connect-ports: port must be a number from 1 to 65535 (465;587)");
  EXPECT_EQ(error_of({"--tls-on-connect-ports", "0"}),
            "--tls-on-connect-ports: port must be a number from 1 to 65535 (0)");
  EXPECT_EQ(error_of({"--tls-on-connect-ports", "465,,587"}),
            "--tls-on-connect-ports: empty item in a comma-separated list (465,,587)");
  EXPECT_EQ(error_of({"--tls-on-connect-ports", "465, 465"}),
            "--tls-on-connect-ports: port 465 listed twice (465, 465)");
}

TEST(Config, TlsOnConnectMakesEveryPortImplicit) {
  const Config config =
      parse({"--tls-on-connect", "--listen", "[::]:25", "--listen", "0.0.0.0:587"});
  EXPECT_TRUE(config.tls_on_connect);
  EXPECT_THAT(listeners_of(config), ElementsAre("[::]:25 tls", "0.0.0.0:587 tls"));
}

TEST(Config, SwitchesAreBareOnTheCommandLine) {
  EXPECT_EQ(error_of({"--tls-on-connect=yes"}), "--tls-on-connect: is a switch and takes no value");
  EXPECT_EQ(error_of({"--tls-on-connect", "--tls-on-connect"}),
            "--tls-on-connect: given more than once (true)");
  // The word after a bare switch is not its value.
  EXPECT_EQ(error_of({"--tls-on-connect", "false"}),
            "false: unexpected argument (flags start with --)");
}

// ---- --backend and --hostname ----------------------------------------------------------------

TEST(Config, Backend) {
  Config config = parse({"--backend", "mta.example.org:25"});
  EXPECT_EQ(config.backend_host, "mta.example.org");
  EXPECT_EQ(config.backend_port, 25);

  config = parse({"--backend", "192.0.2.9:2525"});
  EXPECT_EQ(config.backend_host, "192.0.2.9");
  EXPECT_EQ(config.backend_port, 2525);

  config = parse({"--backend", "[2001:db8::25]:10025"});
  EXPECT_EQ(config.backend_host, "2001:db8::25");
  EXPECT_EQ(config.backend_port, 10025);

  config = parse({"--backend", "postfix_mta:25"});  // container service names have `_`
  EXPECT_EQ(config.backend_host, "postfix_mta");
  config = parse({"--backend", "localhost:25"});
  EXPECT_EQ(config.backend_host, "localhost");
}

TEST(Config, BackendErrors) {
  EXPECT_EQ(error_of({"--backend", "::1:25"}),
            "--backend: an IPv6 address must be in brackets, as in [::1]:25 (::1:25)");
  EXPECT_EQ(error_of({"--backend", "mta"}), "--backend: expected HOST:PORT (mta)");
  EXPECT_EQ(error_of({"--backend", "mta:0"}),
            "--backend: port must be a number from 1 to 65535 (mta:0)");
  EXPECT_EQ(error_of({"--backend", "bad host:25"}),
            "--backend: not a host name or an IP address (bad host:25)");
  EXPECT_EQ(error_of({"--backend", "-mta:25"}),
            "--backend: not a host name or an IP address (-mta:25)");
  EXPECT_EQ(error_of({"--backend", "a..b:25"}),
            "--backend: not a host name or an IP address (a..b:25)");
  EXPECT_EQ(error_of({"--backend", "192.0.2:25"}),  // a resolver would read it as 192.0.0.2
            "--backend: not a host name or an IP address (192.0.2:25)");
  EXPECT_EQ(error_of({"--backend", "[mta]:25"}),
            "--backend: not an IPv6 address in the brackets ([mta]:25)");
}

TEST(Config, Hostname) {
  EXPECT_EQ(parse({"--hostname", "mx1.example.org"}).hostname, "mx1.example.org");
  EXPECT_EQ(parse({"--hostname", "mx1"}).hostname, "mx1");
  const std::string hint = "must be a DNS name (letters, digits, '-' and '.'); set --hostname";
  EXPECT_EQ(error_of({"--hostname", ""}), "--hostname: " + hint + " ()");
  EXPECT_EQ(error_of({"--hostname", "mx 1"}), "--hostname: " + hint + " (mx 1)");
  EXPECT_EQ(error_of({"--hostname", "mx_1.example"}), "--hostname: " + hint + " (mx_1.example)");
  EXPECT_EQ(error_of({"--hostname", "mx.example."}), "--hostname: " + hint + " (mx.example.)");
  EXPECT_EQ(error_of({"--hostname", "mx\r\n250 x"}),
            "--hostname: " + hint + " (mx\\x0d\\x0a250 x)");
  EXPECT_EQ(error_of({"--hostname", std::string(64, 'a') + ".example"}),
            "--hostname: " + hint + " (" + std::string(64, 'a') + ".example)");
}

// ---- TLS flags -------------------------------------------------------------------------------

TEST(Config, CertificatesAndKeysPairInOrder) {
  const Config config = parse({"--tls-certificate", "rsa.pem", "--tls-privatekey", "rsa.key",
                               "--tls-certificate", "ecdsa.pem"});
  EXPECT_THAT(config.tls_certificates, ElementsAre("rsa.pem", "ecdsa.pem"));
  EXPECT_THAT(config.tls_privatekeys, ElementsAre("rsa.key"));
}

TEST(Config, MoreKeysThanCertificatesIsAnError) {
  EXPECT_EQ(error_of({"--tls-certificate", "a.pem", "--tls-privatekey", "a.key", "--tls-privatekey",
                      "b.key"}),
            "--tls-privatekey: more keys than --tls-certificate files (2 > 1)");
  EXPECT_EQ(error_of({"--tls-privatekey", "a.key"}),
            "--tls-privatekey: more keys than --tls-certificate files (1 > 0)");
  EXPECT_EQ(error_of({"--tls-certificate", ""}), "--tls-certificate: empty file name ()");
}

TEST(Config, TlsAdvertiseHosts) {
  const Config config = parse({"--tls-advertise-hosts", "!192.0.2.0/24, *"});
  EXPECT_EQ(config.tls_advertise_hosts.text(), "!192.0.2.0/24, *");
  EXPECT_FALSE(config.tls_advertise_hosts.matches(ip("192.0.2.1")));
  EXPECT_TRUE(config.tls_advertise_hosts.matches(ip("198.51.100.1")));

  EXPECT_TRUE(parse({"--tls-advertise-hosts", ""}).tls_advertise_hosts.empty());
  EXPECT_EQ(error_of({"--tls-advertise-hosts", "10.0.0.0/8, 10.0.0.0/33"}),
            "--tls-advertise-hosts: item \"10.0.0.0/33\": prefix length must be a number from 0 "
            "to 32 (10.0.0.0/8, 10.0.0.0/33)");
}

TEST(Config, TlsRequireCiphersTurnsUnderscoresIntoHyphens) {
  EXPECT_EQ(
      parse({"--tls-require-ciphers", "ECDHE_RSA_AES256_GCM_SHA384:!aNULL"}).tls_require_ciphers,
      "ECDHE-RSA-AES256-GCM-SHA384:!aNULL");
  EXPECT_EQ(parse({"--tls-ciphersuites", "TLS_AES_256_GCM_SHA384"}).tls_ciphersuites,
            "TLS_AES_256_GCM_SHA384");  // TLS 1.3 names keep theirs
}

TEST(Config, TlsMinProtocol) {
  EXPECT_EQ(parse({"--tls-min-protocol", "TLSv1.3"}).tls_min_protocol, "TLSv1.3");
  EXPECT_EQ(parse({"--tls-min-protocol", "tlsv1.3"}).tls_min_protocol, "TLSv1.3");
  EXPECT_EQ(parse({"--tls-min-protocol", "TLSv1.2"}).tls_min_protocol, "TLSv1.2");
  EXPECT_EQ(error_of({"--tls-min-protocol", "TLSv1.1"}),
            "--tls-min-protocol: must be TLSv1.2 or TLSv1.3 (TLSv1.1)");
  EXPECT_EQ(error_of({"--tls-min-protocol", "1.3"}),
            "--tls-min-protocol: must be TLSv1.2 or TLSv1.3 (1.3)");
}

TEST(Config, TlsDhparam) {
  for (const char* group : {"ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"}) {
    EXPECT_EQ(parse({"--tls-dhparam", group}).tls_dhparam, group);
  }
  EXPECT_EQ(parse({"--tls-dhparam", "/etc/ssl/dh.pem"}).tls_dhparam, "/etc/ssl/dh.pem");
  EXPECT_EQ(parse({"--tls-dhparam", "./ffdhe1024"}).tls_dhparam, "./ffdhe1024");  // a path
  EXPECT_EQ(parse({"--tls-dhparam", ""}).tls_dhparam, "");
  EXPECT_EQ(error_of({"--tls-dhparam", "ffdhe1024"}),
            "--tls-dhparam: unknown group: use ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or "
            "ffdhe8192 (ffdhe1024)");
}

// ---- choices and numbers ---------------------------------------------------------------------

TEST(Config, BackendMetadata) {
  EXPECT_EQ(parse({"--backend-metadata", "none"}).backend_metadata, BackendMetadata::none);
  EXPECT_EQ(parse({"--backend-metadata", "xclient"}).backend_metadata, BackendMetadata::xclient);
  EXPECT_EQ(parse({"--backend-metadata", "proxy-v2"}).backend_metadata, BackendMetadata::proxy_v2);
  EXPECT_EQ(error_of({"--backend-metadata", "proxy"}),
            "--backend-metadata: must be one of xclient, proxy-v2, none (proxy)");
}

TEST(Config, ClientCertificateFlags) {
  const auto c = parse({"--tls-verify-hosts", "192.0.2.0/24", "--tls-try-verify-hosts", "*",
                        "--tls-verify-certificates", "/etc/ca.pem", "--tls-crl", "/etc/crl.pem",
                        "--tls-verify-depth", "3", "--tls-peerdn-format", "openssl"});
  EXPECT_TRUE(c.tls_verify_hosts.matches(boost::asio::ip::make_address("192.0.2.9")));
  EXPECT_FALSE(c.tls_verify_hosts.matches(boost::asio::ip::make_address("198.51.100.1")));
  EXPECT_TRUE(c.tls_try_verify_hosts.matches(boost::asio::ip::make_address("198.51.100.1")));
  EXPECT_EQ(c.tls_verify_certificates, "/etc/ca.pem");
  EXPECT_EQ(c.tls_crl, "/etc/crl.pem");
  EXPECT_EQ(c.tls_verify_depth, 3u);
  EXPECT_EQ(c.tls_peerdn_format, PeerDnFormat::openssl);
  const auto defaults = parse({});
  EXPECT_TRUE(defaults.tls_verify_hosts.empty());
  EXPECT_TRUE(defaults.tls_try_verify_hosts.empty());
  EXPECT_EQ(defaults.tls_verify_depth, 9u);
  EXPECT_EQ(defaults.tls_peerdn_format, PeerDnFormat::rfc2253);
  EXPECT_TRUE(defaults.received_header);
  EXPECT_FALSE(parse({"--received-header", "off"}).received_header);
  EXPECT_EQ(error_of({"--tls-verify-hosts", "*"}),
            "--tls-verify-certificates: needed to verify client certificates (set because of "
            "--tls-verify-hosts, --tls-try-verify-hosts or --tls-require-verified-hosts)");
  EXPECT_EQ(error_of({"--tls-verify-depth", "101"}),
            "--tls-verify-depth: must be a number from 0 to 100 (101)");
}

TEST(Config, BackendIdleTimeoutTakesZeroForOff) {
  using namespace std::chrono_literals;
  EXPECT_EQ(parse({}).backend_idle_timeout, 5s);
  EXPECT_EQ(parse({"--backend-idle-timeout", "2m"}).backend_idle_timeout, 120s);
  EXPECT_EQ(parse({"--backend-idle-timeout", "0"}).backend_idle_timeout, 0s);
  EXPECT_NE(error_of({"--backend-idle-timeout", "-5"}), "");
}

TEST(Config, VerifyCacheTimeTakesZeroForOff) {
  using namespace std::chrono_literals;
  EXPECT_EQ(parse({}).tls_verify_cache_time, 60s);
  EXPECT_EQ(parse({"--tls-verify-cache-time", "5m"}).tls_verify_cache_time, 300s);
  for (const char* off : {"0", "0s", "0m", "00"}) {
    EXPECT_EQ(parse({"--tls-verify-cache-time", off}).tls_verify_cache_time, 0s) << off;
  }
  EXPECT_NE(error_of({"--tls-verify-cache-time", "-1"}), "");
  EXPECT_NE(error_of({"--tls-verify-cache-time", "0x"}), "");
  EXPECT_NE(error_of({"--smtp-receive-timeout", "0"}), "") << "zero stays refused elsewhere";
}

TEST(Config, EncryptionPolicyFlags) {
  EXPECT_EQ(parse({}).tls_require_ports, std::vector<std::uint16_t>{587});
  EXPECT_EQ(parse({"--tls-require-ports", "25, 587"}).tls_require_ports,
            (std::vector<std::uint16_t>{25, 587}));
  EXPECT_TRUE(parse({"--tls-require-ports", ""}).tls_require_ports.empty());
  const auto c = parse({"--tls-require-hosts", "10.0.0.0/8", "--tls-require-verified-hosts",
                        "10.1.0.0/16", "--tls-verify-certificates", "system"});
  EXPECT_TRUE(c.tls_require_hosts.matches(boost::asio::ip::make_address("10.9.9.9")));
  EXPECT_TRUE(c.tls_require_verified_hosts.matches(boost::asio::ip::make_address("10.1.2.3")));
  EXPECT_FALSE(c.tls_require_verified_hosts.matches(boost::asio::ip::make_address("10.2.0.1")));
}

TEST(Config, ClientNameLookup) {
  EXPECT_FALSE(parse({"--client-name-lookup", "off"}).client_name_lookup);
  EXPECT_TRUE(parse({"--client-name-lookup", "on"}).client_name_lookup);
  EXPECT_EQ(error_of({"--client-name-lookup", "maybe"}),
            "--client-name-lookup: must be true, false, yes, no, on, off, 1 or 0 (maybe)");
}

TEST(Config, BareLf) {
  EXPECT_EQ(parse({"--bare-lf", "reject"}).bare_lf, BareLfPolicy::reject);
  EXPECT_EQ(parse({"--bare-lf", "normalize"}).bare_lf, BareLfPolicy::normalize);
  EXPECT_EQ(error_of({"--bare-lf", "strip"}),
            "--bare-lf: must be one of normalize, reject (strip)");
}

TEST(Config, LogLevel) {
  for (const char* level : {"trace", "debug", "info", "warn", "error"}) {
    EXPECT_EQ(parse({"--log-level", level}).log_level, level);
  }
  EXPECT_EQ(error_of({"--log-level", "verbose"}),
            "--log-level: must be one of trace, debug, info, warn, error (verbose)");
}

// Never more than an MTA reads as one line (Exim: 16383 bytes and CRLF), or a line would be
// two commands there.
TEST(Config, MaxLineLength) {
  EXPECT_EQ(parse({"--max-line-length", "512"}).max_line_length, 512u);
  EXPECT_EQ(parse({"--max-line-length", "16383"}).max_line_length, 16383u);
  const std::string range = "--max-line-length: must be a number of bytes from 512 to 16383";
  EXPECT_EQ(error_of({"--max-line-length", "511"}), range + " (511)");
  EXPECT_EQ(error_of({"--max-line-length", "16384"}), range + " (16384)");
  EXPECT_EQ(error_of({"--max-line-length", "1048576"}), range + " (1048576)");
  EXPECT_EQ(error_of({"--max-line-length", "4k"}), range + " (4k)");
  EXPECT_EQ(error_of({"--max-line-length", "-4096"}), range + " (-4096)");
  EXPECT_EQ(error_of({"--max-line-length", "99999999999999999999999"}),
            range + " (99999999999999999999999)");
}

TEST(Config, Threads) {
  EXPECT_EQ(parse({"--threads", "1"}).threads, 1u);
  EXPECT_EQ(parse({"--threads", "256"}).threads, 256u);
  EXPECT_EQ(error_of({"--threads", "0"}), "--threads: must be a number from 1 to 256 (0)");
  EXPECT_EQ(error_of({"--threads", "257"}), "--threads: must be a number from 1 to 256 (257)");
  EXPECT_EQ(error_of({"--threads", "two"}), "--threads: must be a number from 1 to 256 (two)");
}

// ---- durations -------------------------------------------------------------------------------

TEST(ParseDuration, AcceptsSecondsAndSuffixes) {
  EXPECT_EQ(parse_duration("300"), 300s);
  EXPECT_EQ(parse_duration("300s"), 300s);
  EXPECT_EQ(parse_duration("5m"), 300s);
  EXPECT_EQ(parse_duration("1h"), 3600s);
  EXPECT_EQ(parse_duration("1"), 1s);
  EXPECT_EQ(parse_duration("007"), 7s);
  EXPECT_EQ(parse_duration("8760h"), 8760h);
  EXPECT_EQ(parse_duration("31536000"), 31536000s);
  EXPECT_EQ(parse_duration("0", ZeroDuration::allowed), 0s);
  EXPECT_EQ(parse_duration("00m", ZeroDuration::allowed), 0s);
}

TEST(ParseDuration, RejectsZeroNegativeGarbageAndOverflow) {
  const std::map<std::string, std::string> cases = {
      {"0", "must be more than zero"},
      {"0s", "must be more than zero"},
      {"00m", "must be more than zero"},
      {"-5", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"s", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5x", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5ms", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5 m", "not a duration: seconds, or a number with an s, m or h suffix"},
      {" 5", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"+5", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"1.5h", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"5M", "not a duration: seconds, or a number with an s, m or h suffix"},
      {"8761h", "too long: at most 8760h (a year)"},
      {"31536001", "too long: at most 8760h (a year)"},
      {"99999999999999999999", "too long: at most 8760h (a year)"},
      {"5124095576030431h", "too long: at most 8760h (a year)"},  // * 3600 wraps int64
  };
  for (const auto& [text, message] : cases) {
    try {
      parse_duration(text);
      ADD_FAILURE() << "accepted \"" << text << "\"";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), message) << text;
    }
  }
}

TEST(Config, Timeouts) {
  const Config config = parse({"--smtp-receive-timeout", "5m", "--tls-handshake-timeout", "10"});
  EXPECT_EQ(config.smtp_receive_timeout, 300s);
  EXPECT_EQ(config.tls_handshake_timeout, 10s);
  EXPECT_EQ(parse({"--tls-handshake-timeout", "1h"}).tls_handshake_timeout, 3600s);
  EXPECT_EQ(error_of({"--smtp-receive-timeout", "0"}),
            "--smtp-receive-timeout: must be more than zero (0)");
  EXPECT_EQ(error_of({"--tls-handshake-timeout", "soon"}),
            "--tls-handshake-timeout: not a duration: seconds, or a number with an s, m or h "
            "suffix (soon)");
  EXPECT_EQ(error_of({"--smtp-receive-timeout", "99999999999999999999h"}),
            "--smtp-receive-timeout: too long: at most 8760h (a year) (99999999999999999999h)");
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

}  // namespace
}  // namespace stp

namespace stp {
namespace {

TEST(OperationsFlags, MetricsListenDefaultsAndCanBeTurnedOff) {
  const char* none[] = {"smtp-tls-proxy"};
  auto no_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  std::ostringstream out;
  auto config = parse_config(1, none, no_env, out);
  ASSERT_TRUE(config && config->metrics_listen);
  EXPECT_EQ(config->metrics_listen->port(), 9225);
  const char* off[] = {"smtp-tls-proxy", "--metrics-listen", ""};
  config = parse_config(3, off, no_env, out);
  ASSERT_TRUE(config);
  EXPECT_FALSE(config->metrics_listen);
  const char* v6[] = {"smtp-tls-proxy",
                      "--metrics-listen",
                      "[::1]:9300",
                      "--shutdown-grace",
                      "2m",
                      "--log-format",
                      "json"};
  config = parse_config(7, v6, no_env, out);
  ASSERT_TRUE(config && config->metrics_listen);
  EXPECT_EQ(config->metrics_listen->address().to_string(), "::1");
  EXPECT_EQ(config->shutdown_grace, std::chrono::seconds(120));
  EXPECT_EQ(config->log_format, LogFormat::json);
  const char* bad[] = {"smtp-tls-proxy", "--log-format", "xml"};
  EXPECT_THROW(parse_config(3, bad, no_env, out), ConfigError);
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
