// The proxy's configuration: every flag, its default, and how it is read.
//
// Sources, in order of precedence: the command line, then SMTP_TLS_PROXY_<NAME> environment
// variables (the flag's name upper-cased with `-` as `_`; a repeatable flag takes a
// comma-separated value there), then `--config FILE` (`name = value` lines, `#` comments; a
// repeatable key may repeat). All values are validated here: a bad one throws ConfigError
// with a message that names the flag, and start-up stops. Files named by flags
// (certificates, keys) are checked later by the TLS context, which names the flag too.
#pragma once

#include "acl/host_list.hpp"
#include "smtp/data_filter.hpp"
#include "tls/options.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace stp {

// Names the flag; the operator's text in it has its control bytes written as \xHH, so the
// message is one printable line wherever it is shown.
// A flag that cannot be used, named in the message. The lower layers (tls/, metrics/) report
// their setup errors as std::invalid_argument, which this is too.
class ConfigError : public std::invalid_argument {
 public:
  explicit ConfigError(std::string_view message);
};

enum class BackendMetadata { xclient, proxy_v2, none };
using tls::PeerDnFormat;
enum class LogFormat { text, json };

// Whose clients a listener takes: the inbound side's (to the MTA, --listen) or the outbound
// relay's (local MTAs and devices relaying out, --relay-listen).
enum class Direction : std::uint8_t { inbound, relay };

struct Listener {
  boost::asio::ip::tcp::endpoint endpoint;
  bool implicit_tls = false;  // from --tls-on-connect-ports / --tls-on-connect
  Direction direction = Direction::inbound;
};

// A next hop of the outbound relay, as --relay-host gives it.
struct RelayHost {
  std::string name;  // a host name, or an address as written (IPv6 without brackets)
  std::uint16_t port = 25;
};

// Where the outbound relay sends mail: to the --relay-host smarthosts, or to each recipient
// domain's MX hosts.
enum class RelayRoute { smarthost, mx };

// The outbound relay (the --relay-* flags; Exim's smtp transport options, dashed and with the
// prefix). Off unless --relay-listen is given.
struct RelayConfig {
  acl::HostList clients;  // who may relay; default 127.0.0.0/8, ::1
  // Local clients that may log in at the relay host (its AUTH relayed) without STARTTLS on
  // their own connection first; default 127.0.0.0/8, ::1.
  acl::HostList auth_clear_hosts;
  std::vector<RelayHost> hosts;
  std::vector<std::uint16_t> tls_on_connect_ports{465};
  std::string helo;  // default --hostname
  acl::HostList hosts_avoid_tls;
  acl::HostList hosts_require_tls;
  bool tls_tempfail_tryclear = true;
  std::string tls_certificate;
  std::string tls_privatekey;
  std::string tls_verify_certificates = "system";
  acl::HostList tls_verify_hosts;
  acl::HostList tls_try_verify_hosts;       // default *
  acl::HostList tls_verify_cert_hostnames;  // default *
  std::string tls_require_ciphers;
  std::string tls_min_protocol = "TLSv1.2";
  std::string tls_crl;
  std::string tls_sni;  // empty: the relay host's configured name
  std::string auth_file;
  std::chrono::seconds connection_idle{10};
  unsigned connection_max_messages = 100;
  acl::HostList hosts_nopass_tls;
  // Exim's connect_timeout, command_timeout and final_timeout; each bounds one whole wait (a
  // reply trickled a byte at a time is no longer than one sent at once).
  std::chrono::seconds connect_timeout{30};
  std::chrono::seconds command_timeout{300};
  std::chrono::seconds final_timeout{600};

  // Set by the checks once the flags are read: smarthost with --relay-host, else mx; nullopt
  // without --relay-listen.
  std::optional<RelayRoute> route;
  std::uint16_t mx_port = 25;  // where MX hosts are spoken to
  // The validating resolver of MX routing: forwarders as "ADDRESS@PORT" (none: full
  // recursion), and its DNSSEC trust anchors.
  std::vector<std::string> dns_forwarders;
  std::string dns_trust_anchor = "/usr/share/dns/root.key";
  bool dane = true;           // TLSA records of DNSSEC-signed MX hosts looked up and enforced
  bool mta_sts = true;        // MTA-STS policies fetched and applied (RFC 8461)
  std::string mta_sts_cache;  // where policies are kept on disk; empty: memory only
  std::string tls_rpt_dir;    // where TLS reports (RFC 8460) are written; empty: none
  // How long a destination may take (lookups, every MX tried) before its recipient is told 451:
  // within the local MTA's wait for the RCPT reply (Postfix: 5 minutes).
  std::chrono::seconds mx_timeout{240};
  // MX addresses never connected to: this host (a loop back through the local MTA), internal
  // networks (a domain's MX must not reach hosts that trust this one).
  acl::HostList mx_refuse_addresses;

  bool enabled() const { return route.has_value(); }
  bool by_mx() const { return route == RelayRoute::mx; }
};

// --tls-host-certificate: the certificates chosen by the client's address.
struct HostCertificates {
  // Each distinct host list, in order of first appearance: a client that hosts[i] matches
  // (the first that does) is answered by tls::answer_with_host_set(ssl, i).
  std::vector<acl::HostList> hosts;
  std::vector<tls::NamedCertificate> certificates;  // name: the text of its host list
};

struct Config {
  std::vector<Listener> listeners;
  std::vector<std::uint16_t> tls_on_connect_ports;
  bool tls_on_connect = false;

  std::string backend_host = "127.0.0.1";
  std::uint16_t backend_port = 10025;
  BackendMetadata backend_metadata = BackendMetadata::xclient;
  std::size_t proxy_v2_max_header = 232;  // Exim 4.96 reads no more
  // A session idle this long outside a mail transaction gives its MTA connection back
  // (reopened at its next command that needs the MTA); 0: kept for the whole session.
  std::chrono::seconds backend_idle_timeout{5};

  std::string hostname;  // defaults to the machine's name

  std::vector<std::string> tls_certificates;  // paired in order with tls_privatekeys
  std::vector<std::string> tls_privatekeys;   // may be shorter: key then sits in the cert file
  std::string tls_ticket_key_file;  // session ticket keys shared by replicas; empty: its own
  std::vector<tls::NamedCertificate> tls_sni_certificates;  // chosen by the SNI name asked for
  HostCertificates tls_host_certificates;    // chosen by the client's address, before SNI
  acl::HostList tls_advertise_hosts;         // default `*`
  std::string tls_require_ciphers;           // empty: OpenSSL's defaults; `_` already `-`
  std::string tls_ciphersuites;              // empty: OpenSSL's defaults
  std::string tls_min_protocol = "TLSv1.2";  // TLSv1.2 or TLSv1.3
  std::string tls_dhparam;                   // empty, a PEM file, or ffdhe2048..ffdhe8192

  // Client certificates (Exim semantics) and what is passed on about TLS.
  acl::HostList tls_verify_hosts;       // must present a certificate that verifies
  acl::HostList tls_try_verify_hosts;   // asked for one; the outcome is recorded
  std::string tls_verify_certificates;  // PEM file, hashed directory, or "system"
  std::string tls_crl;                  // PEM file of CRLs
  unsigned tls_verify_depth = 9;
  std::chrono::seconds tls_verify_cache_time{60};  // 0: every chain verified afresh
  PeerDnFormat tls_peerdn_format = PeerDnFormat::rfc2253;
  bool received_header = true;

  // Encryption policy.
  std::vector<std::uint16_t> tls_require_ports{587};
  acl::HostList tls_require_hosts;
  acl::HostList tls_require_verified_hosts;

  bool client_name_lookup = true;
  std::chrono::seconds smtp_receive_timeout{300};
  std::chrono::seconds tls_handshake_timeout{30};
  std::size_t max_line_length = 2047;
  BareLfPolicy bare_lf = BareLfPolicy::normalize;
  unsigned threads = 0;  // 0 before parsing; parse_config sets the number of cores

  std::string log_level = "info";
  LogFormat log_format = LogFormat::text;

  // Abuse limits and trusted load balancers.
  std::size_t max_connections = 10000;
  unsigned max_connections_per_host = 50;  // per address; per /64 for IPv6
  unsigned max_errors = 20;
  std::size_t max_pipelined_commands = 100;
  std::string user;                    // switch to this user after binding
  acl::HostList proxy_protocol_hosts;  // must send a PROXY v1/v2 header first

  // Operations.
  std::optional<boost::asio::ip::tcp::endpoint> metrics_listen;  // empty: no HTTP endpoint
  std::chrono::seconds shutdown_grace{30};
  std::chrono::seconds backend_probe_interval{10};
  std::chrono::seconds reload_check_interval{10};

  RelayConfig relay;

  // Whether a session's server certificate is chosen among several (by SNI or by host).
  bool chooses_server_certificate() const {
    return !tls_sni_certificates.empty() || !tls_host_certificates.hosts.empty();
  }
};

// Looks up an environment variable; returns nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup process_environment();

// Parses and validates. Returns nullopt after printing --help or --version to `out`.
// Throws ConfigError("--flag-name: what is wrong") on any bad value.
std::optional<Config> parse_config(int argc, const char* const argv[], const EnvLookup& env,
                                   std::ostream& out);

// "300", "300s", "5m", "1h" -> seconds. Throws std::invalid_argument, for zero too unless
// the setting takes zero (as "off").
enum class ZeroDuration { refused, allowed };
std::chrono::seconds parse_duration(std::string_view text,
                                    ZeroDuration zero = ZeroDuration::refused);

// The TLS layer's share of the configuration.
tls::ServerOptions server_tls_options(const Config& config);
tls::ClientOptions relay_tls_options(const Config& config);

}  // namespace stp
