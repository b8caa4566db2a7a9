// Unit tests for the outbound relay's flags (proxy/config_relay_flags.cpp): the defaults,
// --relay-host's forms, outbound-only when no --listen is given, both directions when it is,
// host lists with names, and the errors, each naming its flag.
#include "proxy/config.hpp"
#include "tests/unit/proxy/config_test_support.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace stp {
namespace {

using namespace std::chrono_literals;
using namespace stp::test;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(RelayConfig, OffByDefault) {
  const Config config = parse({});
  EXPECT_TRUE(config.relay.hosts.empty());
  for (const Listener& listener : config.listeners) {
    EXPECT_EQ(listener.direction, Direction::inbound);
  }
}

TEST(RelayConfig, DefaultsOnceOn) {
  const Config config = parse({"--relay-listen", "127.0.0.1:10587", "--relay-host",
                               "smtp.example.net:587", "--hostname", "mail.example.org"});
  const RelayConfig& r = config.relay;
  EXPECT_TRUE(r.clients.matches(ip("127.0.0.1")));
  EXPECT_TRUE(r.clients.matches(ip("::1")));
  EXPECT_FALSE(r.clients.matches(ip("192.0.2.1")));
  EXPECT_TRUE(r.auth_clear_hosts.matches(ip("127.0.0.1")));
  EXPECT_FALSE(r.auth_clear_hosts.matches(ip("192.0.2.1")));
  EXPECT_THAT(r.tls_on_connect_ports, ElementsAre(465));
  EXPECT_EQ(r.helo, "mail.example.org");
  EXPECT_TRUE(r.tls_tempfail_tryclear);
  EXPECT_EQ(r.tls_verify_certificates, "system");
  EXPECT_TRUE(r.tls_try_verify_hosts.matches("any.example", ip("192.0.2.1")));
  EXPECT_TRUE(r.tls_verify_cert_hostnames.matches("any.example", ip("192.0.2.1")));
  EXPECT_TRUE(r.tls_verify_hosts.empty());
  EXPECT_TRUE(r.hosts_require_tls.empty());
  EXPECT_EQ(r.connection_idle, 10s);
  EXPECT_EQ(r.connection_max_messages, 100u);
  EXPECT_EQ(r.tls_min_protocol, "TLSv1.2");
  EXPECT_EQ(r.connect_timeout, 30s);
  EXPECT_EQ(r.command_timeout, 5min);
  EXPECT_EQ(r.final_timeout, 10min);
}

TEST(RelayConfig, Timeouts) {
  const Config config = parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example",
                               "--relay-connect-timeout", "5s", "--relay-command-timeout", "1m",
                               "--relay-final-timeout", "90s"});
  EXPECT_EQ(config.relay.connect_timeout, 5s);
  EXPECT_EQ(config.relay.command_timeout, 1min);
  EXPECT_EQ(config.relay.final_timeout, 90s);
  EXPECT_THROW(parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example",
                      "--relay-command-timeout", "0"}),
               std::invalid_argument);
}

TEST(RelayConfig, WithoutListenTheProxyRelaysOutOnly) {
  const Config config =
      parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example.net"});
  ASSERT_EQ(config.listeners.size(), 1u);
  EXPECT_EQ(config.listeners[0].direction, Direction::relay);
  EXPECT_EQ(endpoint_text(config.listeners[0]), "127.0.0.1:10587");
}

TEST(RelayConfig, WithListenBothDirections) {
  const Config config = parse({"--listen", "127.0.0.1:2525", "--relay-listen", "127.0.0.1:10587",
                               "--relay-listen", "127.0.0.1:10465", "--relay-host",
                               "smtp.example.net", "--tls-on-connect-ports", "10465"});
  EXPECT_THAT(listeners_of(config),
              ElementsAre("127.0.0.1:2525", "127.0.0.1:10587", "127.0.0.1:10465 tls"));
  EXPECT_EQ(config.listeners[0].direction, Direction::inbound);
  EXPECT_EQ(config.listeners[2].direction, Direction::relay);
}

TEST(RelayConfig, RelayHostForms) {
  const Config config =
      parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "SMTP.Example.NET:587",
             "--relay-host", "backup.example.net", "--relay-host", "[2001:db8::1]:465",
             "--relay-host", "2001:db8::2", "--relay-host", "192.0.2.7"});
  const auto& h = config.relay.hosts;
  ASSERT_EQ(h.size(), 5u);
  EXPECT_EQ(h[0].name, "smtp.example.net");
  EXPECT_EQ(h[0].port, 587);
  EXPECT_EQ(h[1].name, "backup.example.net");
  EXPECT_EQ(h[1].port, 25);
  EXPECT_EQ(h[2].name, "2001:db8::1");
  EXPECT_EQ(h[2].port, 465);
  EXPECT_EQ(h[3].name, "2001:db8::2");
  EXPECT_EQ(h[3].port, 25);
  EXPECT_EQ(h[4].name, "192.0.2.7");
}

TEST(RelayConfig, HostListsTakeNames) {
  const Config config =
      parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example.net",
             "--relay-hosts-require-tls", "*.example.net, 192.0.2.0/24", "--relay-hosts-avoid-tls",
             "legacy.example.org"});
  EXPECT_TRUE(config.relay.hosts_require_tls.matches("smtp.example.net", ip("198.51.100.1")));
  EXPECT_TRUE(config.relay.hosts_require_tls.matches("x.example.org", ip("192.0.2.3")));
  EXPECT_TRUE(config.relay.hosts_avoid_tls.matches("LEGACY.example.org", ip("198.51.100.1")));
  // Inbound lists still refuse names.
  EXPECT_THAT(error_of({"--tls-advertise-hosts", "mx.example.net"}),
              HasSubstr("--tls-advertise-hosts"));
}

TEST(RelayConfig, TheRouteIsMxWithoutRelayHosts) {
  const Config by_mx =
      parse({"--relay-listen", "127.0.0.1:10587", "--dns-forwarder", "127.0.0.1:5353",
             "--dns-forwarder", "::1", "--relay-mx-port", "2525"});
  EXPECT_TRUE(by_mx.relay.by_mx());
  EXPECT_EQ(by_mx.relay.mx_port, 2525);
  EXPECT_EQ(by_mx.relay.dns_forwarders, (std::vector<std::string>{"127.0.0.1@5353", "::1@53"}));
  EXPECT_EQ(by_mx.relay.dns_trust_anchor, "/usr/share/dns/root.key");
  EXPECT_TRUE(by_mx.relay.dane);
  for (const char* refused : {"127.0.0.1", "0.0.0.0", "10.1.2.3", "192.168.1.1", "172.16.0.1",
                              "169.254.1.1", "100.64.0.1", "::1", "::", "::ffff:127.0.0.1",
                              "fd00::1", "fe80::1", "224.0.0.1", "::127.0.0.1", "64:ff9b::a00:1"}) {
    EXPECT_TRUE(by_mx.relay.mx_refuse_addresses.matches(boost::asio::ip::make_address(refused)))
        << refused;
  }
  for (const char* allowed : {"192.0.2.1", "8.8.8.8", "2001:db8::1"}) {
    EXPECT_FALSE(by_mx.relay.mx_refuse_addresses.matches(boost::asio::ip::make_address(allowed)))
        << allowed;
  }
  EXPECT_FALSE(parse({"--relay-listen", "127.0.0.1:10587", "--relay-dane", "off"}).relay.dane);
  const Config smarthost =
      parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example.net"});
  EXPECT_EQ(smarthost.relay.route, RelayRoute::smarthost);
  EXPECT_FALSE(parse({}).relay.enabled());
}

TEST(RelayConfig, Errors) {
  EXPECT_THAT(error_of({"--relay-listen", "127.0.0.1:10587", "--relay-route", "smarthost"}),
              HasSubstr("--relay-host: needed with --relay-route smarthost"));
  EXPECT_THAT(error_of({"--relay-host", "smtp.example.net"}),
              HasSubstr("--relay-listen: needed with --relay-host"));
  EXPECT_THAT(error_of({"--relay-listen", "127.0.0.1:10587", "--relay-tls-sni", "mx.example"}),
              HasSubstr("--relay-tls-sni: not used with --relay-route mx"));
  EXPECT_THAT(error_of({"--relay-route", "mx"}),
              HasSubstr("--relay-listen: needed with --relay-route"));
  EXPECT_THAT(error_of({"--relay-listen", "127.0.0.1:10587", "--relay-route", "dane"}),
              HasSubstr("--relay-route"));
  EXPECT_THAT(error_of({"--relay-listen", "127.0.0.1:10587", "--dns-forwarder", "ns.example"}),
              HasSubstr("--dns-forwarder"));
  EXPECT_THAT(error_of({"--relay-listen", "127.0.0.1:10587", "--dns-forwarder", "ns.example:53"}),
              HasSubstr("--dns-forwarder: must be an IP address"));
  const Args on = {"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example.net"};
  const auto with = [&](std::initializer_list<std::string> more) {
    Args args = on;
    args.insert(args.end(), more);
    return error_of(args);
  };
  EXPECT_THAT(with({"--relay-host", "bad_host!"}), HasSubstr("--relay-host: not a host name"));
  EXPECT_THAT(with({"--relay-host", "smtp.example.net:0"}), HasSubstr("--relay-host"));
  EXPECT_THAT(with({"--relay-helo", "localhost"}), HasSubstr("--relay-helo: relay hosts refuse"));
  EXPECT_THAT(with({"--relay-tls-min-protocol", "TLSv1.1"}),
              HasSubstr("--relay-tls-min-protocol: must be TLSv1.2 or TLSv1.3"));
  EXPECT_THAT(with({"--relay-connection-max-messages", "0"}),
              HasSubstr("--relay-connection-max-messages"));
  EXPECT_THAT(with({"--relay-tls-tempfail-tryclear", "maybe"}),
              HasSubstr("--relay-tls-tempfail-tryclear"));
  EXPECT_THAT(with({"--relay-clients", "relay.example.net"}), HasSubstr("--relay-clients"));
  EXPECT_THAT(with({"--relay-auth-clear-hosts", "lan.example"}),
              HasSubstr("--relay-auth-clear-hosts"));
  EXPECT_THAT(with({"--relay-listen", "localhost:25"}), HasSubstr("--relay-listen"));
  EXPECT_THAT(with({"--relay-route", "mx"}), HasSubstr("--relay-host: not used with"));
}

TEST(RelayConfig, TlsOptionsForTheClientContext) {
  const Config config =
      parse({"--relay-listen", "127.0.0.1:10587", "--relay-host", "smtp.example.net",
             "--relay-tls-certificate", "/etc/c.pem", "--relay-tls-privatekey", "/etc/k.pem",
             "--relay-tls-verify-certificates", "/etc/ca.pem", "--relay-tls-min-protocol",
             "tlsv1.3", "--relay-tls-require-ciphers", "ECDHE_ECDSA_AES256_GCM_SHA384"});
  const auto options = relay_tls_options(config);
  EXPECT_EQ(options.certificate, "/etc/c.pem");
  EXPECT_EQ(options.privatekey, "/etc/k.pem");
  EXPECT_EQ(options.verify_certificates, "/etc/ca.pem");
  EXPECT_EQ(options.min_protocol, "TLSv1.3");
  EXPECT_EQ(options.require_ciphers, "ECDHE-ECDSA-AES256-GCM-SHA384");
}

}  // namespace
}  // namespace stp
