// The flag table; see config_flags.hpp.
#include "proxy/config_flags.hpp"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <iterator>
#include <thread>

namespace stp::flags {
namespace {

std::string machine_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

unsigned default_threads() {
  return std::clamp(std::thread::hardware_concurrency(), 1u, 256u);
}

void apply_listen(Config& config, const Values& values) {
  if (values.empty()) bad("at least one address is needed", "");
  config.listeners.clear();
  for (const std::string& value : values) {
    const Listener listener{parse_listen_endpoint(value)};
    for (const Listener& other : config.listeners) {
      if (other.endpoint == listener.endpoint) bad("listed twice", value);
    }
    config.listeners.push_back(listener);
  }
}

void apply_tls_on_connect_ports(Config& config, const Values& values) {
  config.tls_on_connect_ports = port_list(values);
}

void apply_backend(Config& config, const Values& values) {
  const std::string& value = values.front();
  // make_address() would read only what comes before a NUL.
  if (value.find('\0') != std::string::npos) bad("contains a NUL byte", value);
  const auto [host, port] = split_host_port(value);
  boost::system::error_code error;
  boost::asio::ip::make_address(host, error);
  if (error && !is_dns_name(host, true)) bad("not a host name or an IP address", value);
  config.backend_host = std::string(host);
  config.backend_port = port;
}

void apply_hostname(Config& config, const Values& values) {
  const std::string& value = values.front();
  if (!is_dns_name(value, false) || value.back() == '.') {
    bad("must be a DNS name (letters, digits, '-' and '.'); set --hostname", value);
  }
  config.hostname = value;
}

void apply_tls_min_protocol(Config& config, const Values& values) {
  const std::string word = lower(values.front());
  if (word == "tlsv1.2") {
    config.tls_min_protocol = "TLSv1.2";
  } else if (word == "tlsv1.3") {
    config.tls_min_protocol = "TLSv1.3";
  } else {
    bad("must be TLSv1.2 or TLSv1.3", values.front());
  }
}

void apply_tls_dhparam(Config& config, const Values& values) {
  const std::string& value = values.front();
  const bool named = value == "ffdhe2048" || value == "ffdhe3072" || value == "ffdhe4096" ||
                     value == "ffdhe6144" || value == "ffdhe8192";
  if (!named && value.starts_with("ffdhe") && value.find('/') == std::string::npos) {
    bad("unknown group: use ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or ffdhe8192", value);
  }
  config.tls_dhparam = value;
}

// The program itself: help, version, and the file more flags come from.
std::vector<Flag> program_flags() {
  return {
      {.name = "help",
       .kind = Kind::toggle,
       .help = "print this help and exit",
       .default_help = "-",
       .sources = kCommandLine},
      {.name = "version",
       .kind = Kind::toggle,
       .help = "print the version and exit",
       .default_help = "-",
       .sources = kCommandLine},
      {.name = "config",
       .argument = "FILE",
       .help = "read flags from FILE: `name = value` lines (a repeatable flag's name may repeat), "
               "`#` comments",
       .default_help = "none",
       .sources = kCommandLine | kEnvironment},
  };
}

// Where clients connect, and which ports speak TLS from the first byte.
std::vector<Flag> listener_flags() {
  return {
      {.name = "listen",
       .kind = Kind::list,
       .argument = "ADDR:PORT",
       .defaults = {"0.0.0.0:25", "0.0.0.0:587", "0.0.0.0:465"},
       .help = "accept clients on this address (repeatable; IPv6 as [::]:25)",
       .apply = apply_listen},
      {.name = "tls-on-connect-ports",
       .argument = "LIST",
       .defaults = {"465"},
       .help = "comma-separated ports, among those listened on, that speak TLS from the first "
               "byte",
       .apply = apply_tls_on_connect_ports},
      {.name = "tls-on-connect",
       .kind = Kind::toggle,
       .defaults = {"false"},
       .help = "implicit TLS on every port (overrides --tls-on-connect-ports)",
       .default_help = "off",
       .apply = [](Config& c, const Values& v) { c.tls_on_connect = parse_bool(v.front()); }},
  };
}

// The MTA, how it learns the client, and the name the proxy gives.
std::vector<Flag> backend_flags() {
  return {
      {.name = "backend",
       .argument = "HOST:PORT",
       .defaults = {"127.0.0.1:10025"},
       .help = "the plain MTA (HOST is a name, an IPv4 address or an [IPv6] address)",
       .apply = apply_backend},
      {.name = "backend-metadata",
       .argument = "xclient|proxy-v2|none",
       .defaults = {"xclient"},
       .help = "how the MTA learns who the client is and what TLS it used: XCLIENT, a PROXY v2 "
               "header with TLS TLVs, or `none` (only for an MTA that trusts no local address)",
       .apply =
           [](Config& c, const Values& v) {
             const auto& mode = one_of(v.front(), {"xclient", "proxy-v2", "none"});
             c.backend_metadata = mode == "xclient"    ? BackendMetadata::xclient
                                  : mode == "proxy-v2" ? BackendMetadata::proxy_v2
                                                       : BackendMetadata::none;
           }},
      {.name = "backend-idle-timeout",
       .argument = "DURATION",
       .defaults = {"5s"},
       .help = "close the MTA connection of a client idle this long outside a mail transaction "
               "(and not authenticated); it is reopened, the client identified and its HELO "
               "replayed, at the client's next command that needs the MTA (0: keep it)",
       .apply =
           [](Config& c, const Values& v) {
             c.backend_idle_timeout = duration_value(v.front(), ZeroDuration::allowed);
           }},
      {.name = "proxy-v2-max-header",
       .argument = "BYTES",
       .defaults = {"232"},
       .help = "longest PROXY v2 header sent to the MTA; TLVs that do not fit are left out "
               "(Exim 4.96 reads 232 bytes at most, Postfix 536)",
       .apply =
           [](Config& c, const Values& v) {
             c.proxy_v2_max_header = number_in_range(v.front(), 64, 536, "a number of bytes");
           }},
      {.name = "hostname",
       .argument = "NAME",
       .defaults = {machine_name()},
       .help = "the name the proxy gives in its greeting",
       .default_help = "this machine's name, " + machine_name(),
       .apply = apply_hostname},
  };
}

// The proxy's own TLS: certificates, keys, protocols and ciphers.
std::vector<Flag> server_tls_flags() {
  return {
      {.name = "tls-certificate",
       .kind = Kind::list,
       .argument = "FILE",
       .help = "PEM certificate chain, leaf first (repeatable, e.g. one RSA and one ECDSA)",
       .default_help = "a generated self-signed certificate",
       .apply = [](Config& c, const Values& v) { c.tls_certificates = files(v); }},
      {.name = "tls-privatekey",
       .kind = Kind::list,
       .argument = "FILE",
       .help = "PEM private key of the --tls-certificate in the same position (repeatable; "
               "omitted: the key is in the certificate file)",
       .default_help = "in the certificate file",
       .apply = [](Config& c, const Values& v) { c.tls_privatekeys = files(v); }},
      {.name = "tls-sni-certificate",
       .kind = Kind::list,
       .argument = "NAME=FILE[,KEYFILE]",
       .help = "the certificate for clients asking for NAME (exact, or *.example.org) by SNI "
               "(repeatable; one name's RSA and ECDSA files each once); a name no flag gives "
               "is answered by a certificate whose DNS names cover it, else --tls-certificate",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_sni_certificates = sni_certificates(v); }},
      {.name = "tls-host-certificate",
       .kind = Kind::list,
       .argument = "HOSTLIST=FILE[,KEYFILE]",
       .help = "the certificate for clients whose address (after a trusted PROXY header) the "
               "host list matches, whatever SNI they send (repeatable, split at the last `=`; "
               "one host list's RSA and ECDSA files each once; the first matching list wins)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_host_certificates = host_certificates(v); }},
      {.name = "tls-advertise-hosts",
       .argument = "HOSTLIST",
       .defaults = {"*"},
       .help = "clients offered STARTTLS: comma-separated *, addresses, CIDRs, `!` negates, "
               "first match decides",
       .apply = [](Config& c, const Values& v) { c.tls_advertise_hosts = host_list(v); }},
      {.name = "tls-require-ciphers",
       .argument = "STRING",
       .defaults = {""},
       .help = "OpenSSL cipher string for TLS 1.2 and below (`_` read as `-`)",
       .default_help = "forward-secret AEAD suites (ECDHE/DHE with AES-GCM or ChaCha20)",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_require_ciphers = v.front();
             std::replace(c.tls_require_ciphers.begin(), c.tls_require_ciphers.end(), '_', '-');
           }},
      {.name = "tls-ciphersuites",
       .argument = "STRING",
       .defaults = {""},
       .help = "OpenSSL TLS 1.3 ciphersuites",
       .default_help = "OpenSSL's defaults",
       .apply = [](Config& c, const Values& v) { c.tls_ciphersuites = v.front(); }},
      {.name = "tls-min-protocol",
       .argument = "VERSION",
       .defaults = {"TLSv1.2"},
       .help = "lowest TLS version accepted: TLSv1.2 or TLSv1.3",
       .apply = apply_tls_min_protocol},
      {.name = "tls-dhparam",
       .argument = "FILE|GROUP",
       .defaults = {""},
       .help = "Diffie-Hellman parameters for DHE: a PEM file, or ffdhe2048, ffdhe3072, "
               "ffdhe4096, ffdhe6144, ffdhe8192",
       .default_help = "none, ECDHE only",
       .apply = apply_tls_dhparam},
  };
}

// Client certificates (Exim's semantics) and what is passed on about TLS.
std::vector<Flag> client_certificate_flags() {
  return {
      {.name = "tls-verify-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients that must present a certificate that verifies, or are dropped",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_verify_hosts = host_list(v); }},
      {.name = "tls-try-verify-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients asked for a certificate; the session goes on without one, and the "
               "outcome is recorded",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_try_verify_hosts = host_list(v); }},
      {.name = "tls-verify-certificates",
       .argument = "PATH",
       .defaults = {""},
       .help = "CA certificates for client certificates: a PEM file (its CA names are sent), an "
               "OpenSSL hashed directory, or `system`",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_verify_certificates = v.front(); }},
      {.name = "tls-crl",
       .argument = "FILE",
       .defaults = {""},
       .help = "PEM certificate revocation lists (one file may hold several)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_crl = v.front(); }},
      {.name = "tls-ticket-key-file",
       .argument = "FILE",
       .defaults = {""},
       .help = "session ticket keys shared by replicas, so a client resumes on any of them: "
               "base64 lines of 80 bytes (openssl rand 80 | base64 -w0), the first encrypts, "
               "all decrypt; reloaded with the certificates",
       .default_help = "keys of its own, rotated every 12 hours",
       .apply = [](Config& c, const Values& v) { c.tls_ticket_key_file = v.front(); }},
      {.name = "tls-verify-depth",
       .argument = "N",
       .defaults = {"9"},
       .help = "most intermediate CAs between a client certificate and a trusted CA",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_verify_depth =
                 static_cast<unsigned>(number_in_range(v.front(), 0, 100, "a number"));
           }},
      {.name = "tls-verify-cache-time",
       .argument = "DURATION",
       .defaults = {"60s"},
       .help = "how long a client certificate chain's verification result is reused for the "
               "same chain (0 turns it off); a change to the CA or CRL files starts afresh",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_verify_cache_time = duration_value(v.front(), ZeroDuration::allowed);
           }},
      {.name = "tls-peerdn-format",
       .argument = "openssl|rfc2253",
       .defaults = {"rfc2253"},
       .help = "how a client certificate's DN is written in logs and headers",
       .apply =
           [](Config& c, const Values& v) {
             c.tls_peerdn_format = one_of(v.front(), {"openssl", "rfc2253"}) == "openssl"
                                       ? PeerDnFormat::openssl
                                       : PeerDnFormat::rfc2253;
           }},
      {.name = "received-header",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "add a Received: trace header with the TLS details to every message",
       .apply = [](Config& c, const Values& v) { c.received_header = parse_bool(v.front()); }},
  };
}

// What a session requires and allows: the encryption policy, timeouts, line length, bare LF.
std::vector<Flag> session_flags() {
  return {
      {.name = "tls-require-ports",
       .argument = "LIST",
       .defaults = {"587"},
       .help = "ports where mail commands need STARTTLS first (530 5.7.0 otherwise)",
       .apply = [](Config& c, const Values& v) { c.tls_require_ports = port_list(v); }},
      {.name = "tls-require-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients whose mail commands need STARTTLS first",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_require_hosts = host_list(v); }},
      {.name = "tls-require-verified-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "clients that need a verified certificate before MAIL (550 5.7.1 otherwise)",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.tls_require_verified_hosts = host_list(v); }},
      {.name = "client-name-lookup",
       .argument = "on|off",
       .defaults = {"on"},
       .help = "look up the client's name (reverse DNS confirmed by forward DNS) for the MTA",
       .apply = [](Config& c, const Values& v) { c.client_name_lookup = parse_bool(v.front()); }},
      {.name = "smtp-receive-timeout",
       .argument = "DURATION",
       .defaults = {"300s"},
       .help = "drop a client silent this long (seconds, or with an s, m or h suffix)",
       .apply = [](Config& c,
                   const Values& v) { c.smtp_receive_timeout = duration_value(v.front()); }},
      {.name = "tls-handshake-timeout",
       .argument = "DURATION",
       .defaults = {"30s"},
       .help = "drop a client whose TLS handshake takes longer",
       .apply = [](Config& c,
                   const Values& v) { c.tls_handshake_timeout = duration_value(v.front()); }},
      // The MTA must read every line the proxy forwards as one line: Postfix reads 2047 bytes
      // and its CRLF (line_length_limit 2048), Exim 16383. A longer line would be cut into
      // two commands there, one of them never checked here.
      {.name = "max-line-length",
       .argument = "BYTES",
       .defaults = {"2047"},
       .help = "longest command line accepted from a client (at most what the MTA reads whole)",
       .apply =
           [](Config& c, const Values& v) {
             c.max_line_length = number_in_range(v.front(), 512, 16383, "a number of bytes");
           }},
      {.name = "bare-lf",
       .argument = "normalize|reject",
       .defaults = {"normalize"},
       .help = "what to do with a bare LF or CR in message content",
       .apply =
           [](Config& c, const Values& v) {
             c.bare_lf = one_of(v.front(), {"normalize", "reject"}) == "normalize"
                             ? BareLfPolicy::normalize
                             : BareLfPolicy::reject;
           }},
  };
}

// Threads, and the limits that keep one client or many from exhausting the proxy.
std::vector<Flag> capacity_flags() {
  return {
      {.name = "threads",
       .argument = "N",
       .defaults = {std::to_string(default_threads())},
       .help = "threads serving connections",
       .default_help = "the number of cores, " + std::to_string(default_threads()),
       .apply =
           [](Config& c, const Values& v) {
             c.threads = static_cast<unsigned>(number_in_range(v.front(), 1, 256, "a number"));
           }},
      {.name = "max-connections",
       .argument = "N",
       .defaults = {"10000"},
       .help = "sessions at once; past it new clients get 421 4.7.0",
       .apply =
           [](Config& c, const Values& v) {
             c.max_connections = number_in_range(v.front(), 1, 1000000, "a number");
           }},
      {.name = "max-connections-per-host",
       .argument = "N",
       .defaults = {"50"},
       .help = "sessions at once from one client address (one /64 for IPv6)",
       .apply =
           [](Config& c, const Values& v) {
             c.max_connections_per_host =
                 static_cast<unsigned>(number_in_range(v.front(), 1, 1000000, "a number"));
           }},
      {.name = "max-errors",
       .argument = "N",
       .defaults = {"20"},
       .help = "refused or failed commands in a session before 421 4.7.0 and close",
       .apply =
           [](Config& c, const Values& v) {
             c.max_errors =
                 static_cast<unsigned>(number_in_range(v.front(), 1, 100000, "a number"));
           }},
      {.name = "max-pipelined-commands",
       .argument = "N",
       .defaults = {"100"},
       .help = "commands taken from a client before their replies are sent",
       .apply =
           [](Config& c, const Values& v) {
             c.max_pipelined_commands = number_in_range(v.front(), 1, 10000, "a number");
           }},
  };
}

// Running the process: its user, trusted load balancers, logs, metrics, drain, probes, reloads.
std::vector<Flag> operations_flags() {
  return {
      {.name = "user",
       .argument = "NAME",
       .defaults = {""},
       .help = "after binding the ports, switch to this user and its group",
       .default_help = "none: stay as started",
       .apply = [](Config& c, const Values& v) { c.user = v.front(); }},
      {.name = "proxy-protocol-hosts",
       .argument = "HOSTLIST",
       .defaults = {""},
       .help = "load balancers whose connections start with a PROXY v1/v2 header giving the "
               "real client",
       .default_help = "none",
       .apply = [](Config& c, const Values& v) { c.proxy_protocol_hosts = host_list(v); }},
      {.name = "log-level",
       .argument = "LEVEL",
       .defaults = {"info"},
       .help = "trace, debug, info, warn or error",
       .apply =
           [](Config& c, const Values& v) {
             c.log_level = one_of(v.front(), {"trace", "debug", "info", "warn", "error"});
           }},
      {.name = "log-format",
       .argument = "text|json",
       .defaults = {"text"},
       .help = "log lines as plain text or as one JSON object each",
       .apply =
           [](Config& c, const Values& v) {
             c.log_format =
                 one_of(v.front(), {"text", "json"}) == "json" ? LogFormat::json : LogFormat::text;
           }},
      {.name = "metrics-listen",
       .argument = "ADDR:PORT",
       .defaults = {"0.0.0.0:9225"},
       .help = "serve /metrics, /healthz and /readyz here; \"\" turns it off",
       .apply =
           [](Config& c, const Values& v) {
             if (v.front().empty()) {
               c.metrics_listen.reset();
             } else {
               c.metrics_listen = parse_listen_endpoint(v.front());
             }
           }},
      {.name = "shutdown-grace",
       .argument = "DURATION",
       .defaults = {"30s"},
       .help = "on SIGTERM, how long sessions in flight may take to finish",
       .apply = [](Config& c, const Values& v) { c.shutdown_grace = duration_value(v.front()); }},
      {.name = "backend-probe-interval",
       .argument = "DURATION",
       .defaults = {"10s"},
       .help = "how often the MTA is probed (connect, greeting, QUIT) for /readyz",
       .apply = [](Config& c,
                   const Values& v) { c.backend_probe_interval = duration_value(v.front()); }},
      {.name = "reload-check-interval",
       .argument = "DURATION",
       .defaults = {"10s"},
       .help = "how often certificate and key files are checked for changes (SIGHUP reloads at "
               "once)",
       .apply = [](Config& c,
                   const Values& v) { c.reload_check_interval = duration_value(v.front()); }},
  };
}

}  // namespace

std::vector<Flag> table() {
  std::vector<Flag> all;
  for (const auto group :
       {program_flags, listener_flags, backend_flags, server_tls_flags, client_certificate_flags,
        session_flags, capacity_flags, operations_flags, relay_flags}) {
    std::vector<Flag> flags = group();
    all.insert(all.end(), std::make_move_iterator(flags.begin()),
               std::make_move_iterator(flags.end()));
  }
  return all;
}

void check_together(Config& config, const Given& given) {
  check_relay(config, given);
  if (config.tls_privatekeys.size() > config.tls_certificates.size()) {
    throw ConfigError("--tls-privatekey: more keys than --tls-certificate files (" +
                      std::to_string(config.tls_privatekeys.size()) + " > " +
                      std::to_string(config.tls_certificates.size()) + ")");
  }
  const auto implicit = [&](std::uint16_t port) {
    return std::count(config.tls_on_connect_ports.begin(), config.tls_on_connect_ports.end(),
                      port) > 0;
  };
  if (given.tls_on_connect_ports) {
    for (const std::uint16_t port : config.tls_on_connect_ports) {
      const bool listened =
          std::any_of(config.listeners.begin(), config.listeners.end(),
                      [&](const Listener& l) { return l.endpoint.port() == port; });
      if (!listened) {
        throw ConfigError("--tls-on-connect-ports: port is not among the --listen addresses (" +
                          std::to_string(port) + ")");
      }
    }
  }
  for (Listener& listener : config.listeners) {
    listener.implicit_tls = config.tls_on_connect || implicit(listener.endpoint.port());
  }
  const bool asks_for_certificates = !config.tls_verify_hosts.empty() ||
                                     !config.tls_try_verify_hosts.empty() ||
                                     !config.tls_require_verified_hosts.empty();
  if (asks_for_certificates && config.tls_verify_certificates.empty()) {
    throw ConfigError(
        "--tls-verify-certificates: needed to verify client certificates (set because of "
        "--tls-verify-hosts, --tls-try-verify-hosts or --tls-require-verified-hosts)");
  }
}

}  // namespace stp::flags
