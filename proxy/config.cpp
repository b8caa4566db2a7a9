// Reads and validates the configuration (see config.hpp): the flag table (config_flags) says
// what each flag is, the sources (config_sources) say what the command line, the environment
// and the --config file set, and parse_config applies, for each flag, the value of the first
// source that set it (or its default), then the checks between flags. Also what the lower
// layers take from the configuration: tls::ServerOptions.
//
// Trusts nothing it reads: every value is validated and a bad one stops start-up with a
// ConfigError naming the flag (and the variable or file it came from). It does not open the
// certificate or key files, only the --config file.
#include "proxy/config.hpp"

#include "proxy/config_flags.hpp"
#include "proxy/config_sources.hpp"
#include "proxy/config_values.hpp"

#include <array>
#include <cstdlib>
#include <ostream>

#ifndef STP_VERSION
#define STP_VERSION "unknown"
#endif

namespace stp {

ConfigError::ConfigError(std::string_view message)
    : std::invalid_argument(flags::escape_control_bytes(message)) {}

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

namespace {

using flags::Settings;

// The Config made from the sources, in order of precedence: each flag takes the values of the
// first source that set it, or its defaults.
Config apply_flags(const std::vector<flags::Flag>& table,
                   const std::array<const Settings*, 3>& sources) {
  Config config;
  flags::Given given;
  for (const flags::Flag& flag : table) {
    if (!flag.apply) continue;
    const flags::Setting* setting = nullptr;
    for (const Settings* source : sources) {
      if (const auto it = source->find(flag.name); it != source->end()) {
        setting = &it->second;
        break;
      }
    }
    if (flag.name == "tls-on-connect-ports") given.tls_on_connect_ports = setting != nullptr;
    if (flag.name == "listen") given.listen = setting != nullptr;
    try {
      flag.apply(config, setting ? setting->values : flag.defaults);
    } catch (const flags::BadValue& e) {
      std::string origin;
      if (!setting) {
        origin = " [the default]";
      } else if (!setting->origin.empty()) {
        origin = " [in " + setting->origin + "]";
      }
      throw flags::flag_error(
          flag.name, std::string(e.what()) + " (" + flags::printable(e.value()) + ")" + origin);
    }
  }
  flags::check_together(config, given);
  return config;
}

}  // namespace

std::optional<Config> parse_config(int argc, const char* const argv[], const EnvLookup& env,
                                   std::ostream& out) {
  const std::vector<flags::Flag> table = flags::table();
  const char* const no_arguments[] = {flags::kProgram.data()};
  if (argc < 1) {
    argc = 1;
    argv = no_arguments;
  }

  const Settings command_line = flags::read_command_line(table, argc, argv);
  if (command_line.contains("help")) {
    out << flags::help_text(table);
    return std::nullopt;
  }
  if (command_line.contains("version")) {
    out << flags::kProgram << ' ' << STP_VERSION << '\n';
    return std::nullopt;
  }
  const Settings environment = flags::read_environment(table, env);

  Settings file;
  for (const Settings* source : std::array{&command_line, &environment}) {
    if (const auto it = source->find("config"); it != source->end()) {
      const std::string& path = it->second.values.front();
      if (path.empty()) throw ConfigError("--config: empty file name");
      file = flags::read_file(table, path);
      break;
    }
  }
  return apply_flags(table, {&command_line, &environment, &file});
}

tls::ServerOptions server_tls_options(const Config& config) {
  return {
      .hostname = config.hostname,
      .certificates = config.tls_certificates,
      .privatekeys = config.tls_privatekeys,
      .min_protocol = config.tls_min_protocol,
      .require_ciphers = config.tls_require_ciphers,
      .ciphersuites = config.tls_ciphersuites,
      .dhparam = config.tls_dhparam,
      .verify_certificates = config.tls_verify_certificates,
      .crl = config.tls_crl,
      .verify_depth = config.tls_verify_depth,
      .verify_cache_time = config.tls_verify_cache_time,
      .ticket_key_file = config.tls_ticket_key_file,
      .sni_certificates = config.tls_sni_certificates,
      .host_certificates = config.tls_host_certificates.certificates,
  };
}

tls::ClientOptions relay_tls_options(const Config& config) {
  const RelayConfig& relay = config.relay;
  return {
      .verify_certificates = relay.tls_verify_certificates,
      .certificate = relay.tls_certificate,
      .privatekey = relay.tls_privatekey,
      .min_protocol = relay.tls_min_protocol,
      .require_ciphers = relay.tls_require_ciphers,
      .ciphersuites = {},
      .crl = relay.tls_crl,
  };
}

}  // namespace stp
