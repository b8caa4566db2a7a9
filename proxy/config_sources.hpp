// Where flag values come from: the command line, SMTP_TLS_PROXY_<NAME> environment variables
// and the --config file, each read through the flag table into Settings (what one source said
// about each flag, and where), with Boost.Program_options' description of the table for the
// command line, the file and --help. Internal to the configuration (proxy/config*.cpp);
// parse_config decides the precedence.
//
// Trusts nothing it reads: unknown flags, malformed lines, a missing value or a flag given
// twice in one source throw ConfigError naming the flag (and the variable or file). The
// values themselves are checked later, by each flag's apply function. Opens only the
// --config file.
#pragma once

#include "proxy/config.hpp"
#include "proxy/config_flags.hpp"

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace stp::flags {

inline constexpr std::string_view kProgram = "smtp-tls-proxy";

// What one source said about one flag.
struct Setting {
  Values values;
  std::string origin;  // for messages: empty for the command line
};
using Settings = std::map<std::string, Setting, std::less<>>;

Settings read_command_line(const std::vector<Flag>& table, int argc, const char* const argv[]);
Settings read_environment(const std::vector<Flag>& table, const EnvLookup& env);
Settings read_file(const std::vector<Flag>& table, const std::string& path);

// The whole --help text: usage, the sources, then every command-line flag with its default.
std::string help_text(const std::vector<Flag>& table);

// Operator text inside a message: control bytes escaped, long values cut.
std::string printable(std::string_view text);
// ConfigError("--FLAG: WHAT").
ConfigError flag_error(std::string_view flag, const std::string& what);

}  // namespace stp::flags
