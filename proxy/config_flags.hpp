// The flag table: every flag of the proxy declared once (name, kind, default, help text, the
// sources it may come from, and how its text becomes a Config field), and the checks between
// flags once all are applied. Internal to the configuration (proxy/config*.cpp): the command
// line, the environment and the --config file are all read through this table, and --help is
// printed from it; a new flag is one more row.
//
// Trusts nothing: an apply function stores a value only after config_values.hpp checked it,
// and throws BadValue otherwise.
#pragma once

#include "proxy/config.hpp"
#include "proxy/config_values.hpp"

#include <string>
#include <vector>

namespace stp::flags {

enum class Kind {
  value,   // one value: `--hostname NAME`; at most once per source
  list,    // repeatable: `--listen A --listen B`; comma-separated in the environment
  toggle,  // bare on the command line; true/false/yes/no/on/off/1/0 elsewhere
};

enum Source : unsigned { kCommandLine = 1, kEnvironment = 2, kFile = 4, kEverywhere = 7 };

struct Flag {
  std::string name;  // without the leading "--"; the environment and file names follow
  Kind kind = Kind::value;
  std::string argument{};  // shown in --help, e.g. "ADDR:PORT"; unused for toggles
  Values defaults{};       // applied (and validated) like any other value when nothing sets it
  std::string help{};
  std::string default_help{};  // shown by --help instead of `defaults` when not empty
  // Stores the values in the Config; throws BadValue. Null for flags parse_config handles.
  void (*apply)(Config&, const Values&) = nullptr;
  unsigned sources = kEverywhere;
};

// Every flag, once. Order is --help's order; values are applied in this order too.
std::vector<Flag> table();

// Which flags the operator set, rather than left at their defaults.
struct Given {
  bool listen = false;
  bool tls_on_connect_ports = false;
};

// Checks between flags, once every flag is applied, and what follows from several of them
// (which listeners speak TLS from the first byte). Throws ConfigError.
void check_together(Config& config, const Given& given);

// The --relay-* flags (config_relay_flags.cpp), in table(); and their checks, called by
// check_together.
std::vector<Flag> relay_flags();
void check_relay(Config& config, const Given& given);

}  // namespace stp::flags
