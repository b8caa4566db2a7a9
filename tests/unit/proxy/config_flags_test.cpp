// Unit tests for the flag table (proxy/config_flags.cpp), through parse_config: every flag's
// values and errors (each naming its flag), and the checks between flags.
#include "proxy/config.hpp"
#include "tests/unit/proxy/config_test_support.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>
#include <thread>

namespace stp {
namespace {

using namespace std::chrono_literals;
using namespace stp::test;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

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

}  // namespace
}  // namespace stp
