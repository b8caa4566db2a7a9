// Reading the command line, the environment and the --config file; see config_sources.hpp.
#include "proxy/config_sources.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

namespace stp::flags {
namespace {

namespace po = boost::program_options;

constexpr std::string_view kEnvPrefix = "SMTP_TLS_PROXY_";

std::string env_name(std::string_view flag) {
  std::string name(kEnvPrefix);
  for (const char c : flag) {
    name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return name;
}

// Adds one occurrence; a flag that is not repeatable may occur once per source.
void add(Settings& settings, const Flag& flag, std::string value, const std::string& origin) {
  Setting& setting = settings[flag.name];
  if (!setting.values.empty() && flag.kind != Kind::list) {
    throw flag_error(flag.name, "given more than once (" + printable(value) + ")" +
                                    (origin.empty() ? "" : " [in " + origin + "]"));
  }
  setting.values.push_back(std::move(value));
  setting.origin = origin;
}

const Flag* find_flag(const std::vector<Flag>& table, std::string_view name) {
  const auto it =
      std::find_if(table.begin(), table.end(), [&](const Flag& f) { return f.name == name; });
  return it == table.end() ? nullptr : &*it;
}

// Description for --help and the parsers: every flag readable from `source`.
po::options_description describe(const std::vector<Flag>& table, unsigned source) {
  po::options_description description("Flags", 100, 50);
  for (const Flag& flag : table) {
    if (!(flag.sources & source)) continue;
    const po::value_semantic* semantic = nullptr;
    if (flag.kind == Kind::toggle && source == kCommandLine) {
      semantic = new po::untyped_value(/*zero_tokens=*/true);
    } else {
      semantic =
          po::value<std::string>()->value_name(flag.argument.empty() ? "BOOL" : flag.argument);
    }
    std::string shown = flag.default_help;
    if (shown.empty()) {
      for (const std::string& value : flag.defaults) shown += (shown.empty() ? "" : ", ") + value;
    }
    std::string help = flag.help;
    if (shown != "-") help += " (default: " + shown + ")";
    description.add_options()(flag.name.c_str(), semantic, help.c_str());
  }
  return description;
}

// `e`'s option as the user wrote it, or the flag's name with `--`. "--=x" names none.
std::string option_of(const po::error_with_option_name& e) {
  std::string name = e.get_option_name();
  if (name.empty() || name == "--") return "--: an option name is missing before '=';";
  if (name.front() != '-') name = "--" + name;
  return name;
}

}  // namespace

// Operator text inside a message: control bytes escaped (ConfigError does it again, to no
// effect, for the whole message), long values cut.
std::string printable(std::string_view text) {
  constexpr std::size_t kLimit = 200;
  std::string result = escape_control_bytes(text.substr(0, kLimit));
  if (text.size() > kLimit) result += "...";
  return result;
}

ConfigError flag_error(std::string_view flag, const std::string& what) {
  return ConfigError("--" + std::string(flag) + ": " + what);
}

Settings read_command_line(const std::vector<Flag>& table, int argc, const char* const argv[]) {
  const po::options_description description = describe(table, kCommandLine);
  const auto style = po::command_line_style::unix_style ^ po::command_line_style::allow_guessing;
  po::parsed_options parsed(&description);
  try {
    parsed = po::command_line_parser(argc, argv)
                 .options(description)
                 .style(style)
                 .allow_unregistered()
                 .run();
  } catch (const po::invalid_command_line_syntax& e) {
    switch (e.kind()) {
      case po::invalid_command_line_syntax::missing_parameter:
      case po::invalid_command_line_syntax::empty_adjacent_parameter:
        throw ConfigError(option_of(e) + ": needs a value");
      case po::invalid_command_line_syntax::extra_parameter:
        throw ConfigError(option_of(e) + ": is a switch and takes no value");
      default:
        throw ConfigError(option_of(e) + ": " + e.what());
    }
  } catch (const po::error_with_option_name& e) {
    throw ConfigError(option_of(e) + ": " + e.what());
  } catch (const po::error& e) {
    throw ConfigError(std::string("command line: ") + e.what());
  }

  Settings settings;
  for (const po::option& option : parsed.options) {
    if (option.unregistered) {
      const std::string written =
          option.original_tokens.empty() ? option.string_key : option.original_tokens.front();
      throw ConfigError(printable(written.substr(0, written.find('='))) + ": unknown flag");
    }
    if (option.position_key >= 0 || option.string_key.empty()) {
      const std::string written = option.value.empty() ? "" : option.value.front();
      throw ConfigError(printable(written) + ": unexpected argument (flags start with --)");
    }
    const Flag& flag = *find_flag(table, option.string_key);
    std::string value = flag.kind == Kind::toggle ? "true" : option.value.front();
    // Program_options takes `--b` as the value in `--a --b`; no value of ours looks like a flag.
    if (value.starts_with("--") && find_flag(table, value.substr(2, value.find('=') - 2))) {
      throw flag_error(flag.name, "needs a value");
    }
    add(settings, flag, std::move(value), "");
  }
  return settings;
}

Settings read_environment(const std::vector<Flag>& table, const EnvLookup& env) {
  Settings settings;
  for (const Flag& flag : table) {
    if (!(flag.sources & kEnvironment)) continue;
    const std::string name = env_name(flag.name);
    const std::optional<std::string> text = env(name);
    if (!text) continue;
    Setting& setting = settings[flag.name];
    setting.origin = name;
    if (flag.kind == Kind::list) {
      try {
        setting.values = split_list(*text);
      } catch (const BadValue& e) {
        throw flag_error(flag.name,
                         std::string(e.what()) + " (" + printable(*text) + ") [in " + name + "]");
      }
    } else {
      setting.values = {*text};
    }
  }
  return settings;
}

Settings read_file(const std::vector<Flag>& table, const std::string& path) {
  std::ifstream file(path);
  if (!file) throw ConfigError("--config: cannot read the file (" + printable(path) + ")");
  const po::options_description description = describe(table, kFile);
  po::parsed_options parsed(&description);
  try {
    parsed = po::parse_config_file(file, description, /*allow_unregistered=*/false);
  } catch (const po::unknown_option& e) {
    throw ConfigError("--config: unknown key (" + printable(e.get_option_name()) + ") [in " +
                      printable(path) + "]");
  } catch (const po::invalid_config_file_syntax& e) {
    throw ConfigError("--config: not a `name = value` line (" + printable(e.tokens()) + ") [in " +
                      printable(path) + "]");
  } catch (const po::error& e) {
    throw ConfigError("--config: " + std::string(e.what()) + " [in " + printable(path) + "]");
  }
  if (file.bad()) throw ConfigError("--config: error reading the file (" + printable(path) + ")");

  Settings settings;
  for (const po::option& option : parsed.options) {
    add(settings, *find_flag(table, option.string_key),
        option.value.empty() ? "" : option.value.front(), path);
  }
  return settings;
}

std::string help_text(const std::vector<Flag>& table) {
  std::ostringstream text;
  text << "Usage: " << kProgram << " [FLAG]...\n"
       << "An SMTP TLS front for a plain MTA: terminates STARTTLS and implicit TLS and hands the "
          "MTA\nthe real client over XCLIENT.\n\n"
       << "Each flag is also read from the environment as SMTP_TLS_PROXY_<NAME> "
          "(--tls-advertise-hosts\n"
       << "is SMTP_TLS_PROXY_TLS_ADVERTISE_HOSTS; a repeatable flag takes a comma-separated value, "
          "a\n"
       << "switch true/false/yes/no/on/off/1/0) and from --config FILE as `name = value` lines.\n"
       << "Precedence: command line, then environment, then file.\n\n"
       << describe(table, kCommandLine);
  return text.str();
}

}  // namespace stp::flags
