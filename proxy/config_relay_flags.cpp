// The outbound relay's flags (--relay-*: Exim's smtp transport options with the prefix) and
// the checks between them; see config_flags.hpp.
#include "proxy/config_flags.hpp"

#include <algorithm>

namespace stp::flags {
namespace {

// HOST[:PORT], [IPV6][:PORT] or a bare IPv6 address; the port defaults to 25.
RelayHost parse_relay_host(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) bad("contains a NUL byte", text);
  RelayHost host;
  std::string_view name = text;
  boost::system::error_code error;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) bad("expected [IPV6] or [IPV6]:PORT", text);
    name = text.substr(1, close - 1);
    const auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') bad("expected [IPV6] or [IPV6]:PORT", text);
      host.port = parse_port(rest.substr(1), text);
    }
    boost::asio::ip::make_address_v6(name, error);
    if (error) bad("not an IPv6 address in the brackets", text);
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    const auto colon = text.find(':');
    name = text.substr(0, colon);
    host.port = parse_port(text.substr(colon + 1), text);
  }
  boost::asio::ip::make_address(name, error);
  if (name.empty() || (error && !is_dns_name(name, true))) {
    bad("not a host name or an IP address", text);
  }
  host.name = lower(name);
  return host;
}

void apply_relay_listen(Config& config, const Values& values) {
  for (const std::string& value : values) {
    const Listener listener{parse_listen_endpoint(value), false, Direction::relay};
    for (const Listener& other : config.listeners) {
      if (other.endpoint == listener.endpoint && other.direction == Direction::relay) {
        bad("listed twice", value);
      }
    }
    config.listeners.push_back(listener);
  }
}

void apply_relay_hosts(Config& config, const Values& values) {
  config.relay.hosts.clear();
  for (const std::string& value : values) config.relay.hosts.push_back(parse_relay_host(value));
}

void apply_relay_helo(Config& config, const Values& values) {
  const std::string& value = values.front();
  if (value.empty()) return;  // --hostname, set in check_relay
  if (!is_dns_name(value, false) || value.back() == '.') bad("must be a DNS name", value);
  if (lower(value) == "localhost" || lower(value).starts_with("localhost.")) {
    bad("relay hosts refuse it (Google's among them): give this machine's public name", value);
  }
  config.relay.helo = value;
}

std::string protocol_version(const std::string& value) {
  const std::string word = lower(value);
  if (word == "tlsv1.2") return "TLSv1.2";
  if (word == "tlsv1.3") return "TLSv1.3";
  bad("must be TLSv1.2 or TLSv1.3", value);
}

// ADDR or ADDR:PORT ([IPV6]:PORT) as libunbound takes it: ADDR@PORT. An address, never a name.
std::string forwarder(const std::string& value) {
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(value, ec);
  if (!ec) return address.to_string() + "@53";
  const auto [host, port] = split_host_port(value);
  const auto with_port = boost::asio::ip::make_address(host, ec);
  if (ec) bad("must be an IP address, with a port or not", value);
  return with_port.to_string() + "@" + std::to_string(port);
}

acl::HostList relay_list(const Values& values) {
  return host_list(values, acl::HostList::Names::allowed);
}

std::vector<Flag> relay_connection_flags() {
  return {
      {.name = "relay-listen",
       .kind = Kind::list,
       .argument = "ADDR:PORT",
       .help = "accept local clients (an MTA, a device) that relay out through the proxy "
               "(repeatable; plain SMTP, STARTTLS and --tls-on-connect-ports as on --listen); "
               "with no --listen given, the proxy relays out only",
       .default_help = "none: no outbound relay",
       .apply = apply_relay_listen},
      {.name = "relay-clients",
       .argument = "HOSTLIST",
       .defaults = {"127.0.0.0/8, ::1"},
       .help = "who may relay; anyone else is told 554 5.7.1 and closed",
       .apply = [](Config& c, const Values& v) { c.relay.clients = host_list(v); }},
      {.name = "relay-host",
       .kind = Kind::list,
       .argument = "HOST[:PORT]",
       .help = "the next hops, tried in order, each address of a name in turn (repeatable; "
               "port 25 unless given)",
       .default_help = "none",
       .apply = apply_relay_hosts},
      {.name = "relay-route",
       .argument = "smarthost|mx",
       .defaults = {""},
       .help = "where relayed mail goes: the --relay-host smarthosts, or each recipient "
               "domain's MX hosts (one destination domain per transaction; the local MTA sends "
               "the other recipients again)",
       .default_help = "smarthost with --relay-host, else mx",
       .apply =
           [](Config& c, const Values& v) {
             if (v.front().empty()) {
               c.relay.route.reset();  // decided by check_relay
             } else {
               c.relay.route = one_of(v.front(), {"smarthost", "mx"}) == "mx"
                                   ? RelayRoute::mx
                                   : RelayRoute::smarthost;
             }
           }},
      {.name = "relay-mx-port",
       .argument = "PORT",
       .defaults = {"25"},
       .help = "the port MX hosts are spoken to on (tests use another)",
       .apply = [](Config& c,
                   const Values& v) { c.relay.mx_port = parse_port(v.front(), v.front()); }},
      {.name = "dns-forwarder",
       .kind = Kind::list,
       .argument = "ADDR[:PORT]",
       .help = "resolvers the outbound side's validating resolver forwards to (repeatable; "
               "it validates DNSSEC itself, never trusting their AD bit)",
       .default_help = "none: full recursion from the root",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.dns_forwarders.clear();
             for (const std::string& value : v) c.relay.dns_forwarders.push_back(forwarder(value));
           }},
      {.name = "dns-trust-anchor",
       .argument = "FILE",
       .defaults = {"/usr/share/dns/root.key"},
       .help = "DNSSEC trust anchors (DS or DNSKEY records) of the outbound side's resolver",
       .default_help = "Debian's dns-root-data root key",
       .apply = [](Config& c, const Values& v) { c.relay.dns_trust_anchor = v.front(); }},
      {.name = "relay-mx-refuse-addresses",
       .argument = "HOSTLIST",
       .defaults = {"0.0.0.0/8, 127.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, "
                    "172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/3, ::/96, 64:ff9b::/96, "
                    "fc00::/7, fe80::/10, ff00::/8"},
       .help = "routing by MX: addresses an MX host may have and is never connected to (this "
               "host: a loop back through the local MTA; internal networks); none left: 554 "
               "5.4.6",
       .apply = [](Config& c, const Values& v) { c.relay.mx_refuse_addresses = host_list(v); }},
      {.name = "relay-mx-timeout",
       .argument = "DURATION",
       .defaults = {"4m"},
       .help = "routing by MX: how long a recipient's destination may take (lookups, every MX "
               "tried) before it is told 451; below the local MTA's RCPT timeout",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.mx_timeout = duration_value(v.front(), ZeroDuration::refused);
           }},
      {.name = "relay-dane",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "routing by MX: an MX host with DNSSEC-signed TLSA records must have TLS and a "
               "certificate that matches them (RFC 7672); off: TLSA records are not looked up",
       .apply = [](Config& c, const Values& v) { c.relay.dane = parse_bool(v.front()); }},
      {.name = "relay-mta-sts",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "routing by MX: a domain's MTA-STS policy (RFC 8461) is fetched and kept; enforce: "
               "only MX hosts it names, with certificates valid for their names, else 451; "
               "testing: failures only recorded. DANE wins over it",
       .apply = [](Config& c, const Values& v) { c.relay.mta_sts = parse_bool(v.front()); }},
      {.name = "relay-mta-sts-cache",
       .argument = "DIR",
       .defaults = {""},
       .help =
           "routing by MX: where MTA-STS policies are kept across restarts (one file per "
           "domain), so an attacker who blocks a fetch after a restart cannot turn a policy off",
       .default_help = "kept in memory only",
       .apply = [](Config& c, const Values& v) { c.relay.mta_sts_cache = v.front(); }},
      {.name = "relay-tls-rpt-dir",
       .argument = "DIR",
       .defaults = {""},
       .help = "routing by MX: TLS reports (RFC 8460 JSON) written to DIR/<UTC day>/<domain>.json, "
               "each rewritten every 5 minutes and at shutdown",
       .default_help = "none written",
       .apply = [](Config& c, const Values& v) { c.relay.tls_rpt_dir = v.front(); }},
      {.name = "relay-tls-on-connect-ports",
       .argument = "LIST",
       .defaults = {"465"},
       .help = "relay host ports spoken to in TLS from the first byte",
       .apply = [](Config& c, const Values& v) { c.relay.tls_on_connect_ports = port_list(v); }},
      {.name = "relay-helo",
       .argument = "NAME",
       .defaults = {""},
       .help = "the EHLO name given to relay hosts (never localhost)",
       .default_help = "--hostname",
       .apply = apply_relay_helo},
      {.name = "relay-auth-file",
       .argument = "FILE",
       .defaults = {""},
       .help = "lines HOST USER PASSWORD (not readable by others): AUTH PLAIN or LOGIN to that "
               "relay host, only over TLS (a host with credentials requires TLS)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.auth_file = v.front(); }},
      {.name = "relay-auth-clear-hosts",
       .argument = "HOSTLIST",
       .defaults = {"127.0.0.0/8, ::1"},
       .help = "local clients that may use the relay host's AUTH (relayed, when the proxy has "
               "no credentials of its own for it) without STARTTLS first; others are offered "
               "it only on an encrypted connection (538 5.7.11 before)",
       .apply = [](Config& c, const Values& v) { c.relay.auth_clear_hosts = host_list(v); }},
      {.name = "relay-connection-idle",
       .argument = "DURATION",
       .defaults = {"10s"},
       .help = "how long a relay host connection waits for the next local session (0: none "
               "is kept)",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.connection_idle = duration_value(v.front(), ZeroDuration::allowed);
           }},
      {.name = "relay-connection-max-messages",
       .argument = "N",
       .defaults = {"100"},
       .help = "messages per relay host connection before it is closed",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.connection_max_messages =
                 static_cast<unsigned>(number_in_range(v.front(), 1, 100000, "a number"));
           }},
      {.name = "relay-connect-timeout",
       .argument = "DURATION",
       .defaults = {"30s"},
       .help = "how long a connection to a relay host may take before the next is tried",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.connect_timeout = duration_value(v.front(), ZeroDuration::refused);
           }},
      {.name = "relay-command-timeout",
       .argument = "DURATION",
       .defaults = {"5m"},
       .help = "how long to wait for a relay host's reply to a command (and for its greeting)",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.command_timeout = duration_value(v.front(), ZeroDuration::refused);
           }},
      {.name = "relay-final-timeout",
       .argument = "DURATION",
       .defaults = {"10m"},
       .help = "how long to wait for a relay host's verdict on a whole message",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.final_timeout = duration_value(v.front(), ZeroDuration::refused);
           }},
      {.name = "relay-hosts-nopass-tls",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "a relay host connection on which TLS was used is never reused for these",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.hosts_nopass_tls = relay_list(v); }},
  };
}

std::vector<Flag> relay_tls_flags() {
  return {
      {.name = "relay-hosts-avoid-tls",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "relay hosts never asked for STARTTLS (names, *.domain, addresses, CIDRs)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.hosts_avoid_tls = relay_list(v); }},
      {.name = "relay-hosts-require-tls",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "no TLS, no delivery: such a relay host is passed over (the next tried)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.hosts_require_tls = relay_list(v); }},
      {.name = "relay-tls-tempfail-tryclear",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "after a 4xx to STARTTLS go on in the clear, and after a failed handshake "
               "reconnect and deliver in the clear (unless TLS is required); off: the next host",
       .apply = [](Config& c,
                   const Values& v) { c.relay.tls_tempfail_tryclear = parse_bool(v.front()); }},
      {.name = "relay-tls-certificate",
       .argument = "FILE",
       .defaults = {""},
       .help = "client certificate chain (PEM) sent when a relay host asks for one",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.tls_certificate = v.front(); }},
      {.name = "relay-tls-privatekey",
       .argument = "FILE",
       .defaults = {""},
       .help = "its private key (omitted: in the certificate file)",
       .default_help = "in the certificate file",
       .apply = [](Config& c, const Values& v) { c.relay.tls_privatekey = v.front(); }},
      {.name = "relay-tls-verify-certificates",
       .argument = "PATH|system",
       .defaults = {"system"},
       .help = "CAs for relay host certificates: a PEM file, a hashed directory, or the "
               "system store",
       .apply = [](Config& c, const Values& v) { c.relay.tls_verify_certificates = v.front(); }},
      {.name = "relay-tls-verify-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "relay hosts whose certificate must verify (chain, CRL, name), or the next host "
               "is tried",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.tls_verify_hosts = relay_list(v); }},
      {.name = "relay-tls-try-verify-hosts",
       .argument = "HOSTLIST",
       .defaults = {"*"},
       .help = "relay hosts whose certificate is verified and the outcome recorded",
       .apply = [](Config& c, const Values& v) { c.relay.tls_try_verify_hosts = relay_list(v); }},
      {.name = "relay-tls-verify-cert-hostnames",
       .argument = "HOSTLIST",
       .defaults = {"*"},
       .help = "relay hosts whose certificate must name them (as configured; RFC 6125)",
       .apply = [](Config& c,
                   const Values& v) { c.relay.tls_verify_cert_hostnames = relay_list(v); }},
      {.name = "relay-tls-require-ciphers",
       .argument = "STRING",
       .defaults = {""},
       .help = "OpenSSL cipher string for TLS 1.2 to relay hosts (`_` read as `-`)",
       .default_help = "as --tls-require-ciphers",
       .apply =
           [](Config& c, const Values& v) {
             c.relay.tls_require_ciphers = v.front();
             std::replace(c.relay.tls_require_ciphers.begin(), c.relay.tls_require_ciphers.end(),
                          '_', '-');
           }},
      {.name = "relay-tls-min-protocol",
       .argument = "VERSION",
       .defaults = {"TLSv1.2"},
       .help = "lowest TLS version to relay hosts: TLSv1.2 or TLSv1.3",
       .apply = [](Config& c,
                   const Values& v) { c.relay.tls_min_protocol = protocol_version(v.front()); }},
      {.name = "relay-tls-crl",
       .argument = "FILE",
       .defaults = {""},
       .help = "PEM file of CRLs checked with relay hosts' chains",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.relay.tls_crl = v.front(); }},
      {.name = "relay-tls-sni",
       .argument = "NAME",
       .defaults = {""},
       .help = "SNI sent to relay hosts",
       .default_help = "the relay host's configured name",
       .apply =
           [](Config& c, const Values& v) {
             if (!v.front().empty() && !is_dns_name(v.front(), false)) {
               bad("must be a DNS name", v.front());
             }
             c.relay.tls_sni = v.front();
           }},
  };
}

}  // namespace

std::vector<Flag> relay_flags() {
  std::vector<Flag> all = relay_connection_flags();
  std::vector<Flag> tls = relay_tls_flags();
  all.insert(all.end(), std::make_move_iterator(tls.begin()), std::make_move_iterator(tls.end()));
  return all;
}

void check_relay(Config& config, const Given& given) {
  const bool relay_listeners =
      std::any_of(config.listeners.begin(), config.listeners.end(),
                  [](const Listener& l) { return l.direction == Direction::relay; });
  auto& relay = config.relay;
  if (!relay_listeners && (!relay.hosts.empty() || relay.route)) {
    throw ConfigError(std::string(relay.hosts.empty()
                                      ? "--relay-listen: needed with --relay-route"
                                      : "--relay-listen: needed with --relay-host") +
                      " (where local clients connect)");
  }
  if (relay_listeners && !relay.route) {
    relay.route = relay.hosts.empty() ? RelayRoute::mx : RelayRoute::smarthost;
  }
  if (relay.route == RelayRoute::smarthost && relay.hosts.empty()) {
    throw ConfigError("--relay-host: needed with --relay-route smarthost (where to relay to)");
  }
  if (relay.route == RelayRoute::mx && !relay.tls_sni.empty()) {
    throw ConfigError("--relay-tls-sni: not used with --relay-route mx (each MX is sent its name)");
  }
  if (relay.route == RelayRoute::mx && !relay.hosts.empty()) {
    throw ConfigError("--relay-host: not used with --relay-route mx (mail goes to MX hosts)");
  }
  if (relay_listeners && !given.listen) {
    // Relaying out only: the default inbound ports are not opened.
    std::erase_if(config.listeners,
                  [](const Listener& l) { return l.direction == Direction::inbound; });
  }
  if (config.relay.helo.empty()) config.relay.helo = config.hostname;
  if (lower(config.relay.helo) == "localhost") {
    throw ConfigError(
        "--relay-helo: --hostname is localhost, which relay hosts refuse: set --relay-helo");
  }
}

}  // namespace stp::flags
