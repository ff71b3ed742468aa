// ringtrain: distributed training of Transformer and CNN models. See README.md.
#include <cstdio>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"ringtrain: distributed training of Transformer and CNN models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ringtrain 0.1.0");
  ringtrain::cli::Action action;
  ringtrain::cli::AddTrain(app, action);
  ringtrain::cli::AddGenerate(app, action);
  ringtrain::cli::AddEval(app, action);
  ringtrain::cli::AddBench(app, action);
  ringtrain::cli::AddLaunch(app, action);
  ringtrain::cli::AddExport(app, action);
  ringtrain::cli::AddPs(app, action);
  ringtrain::cli::AddCoordinator(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "ringtrain: error: %s (see --help)\n", e.what());
    return 2;
  }
  if (!action) return 2;
  ringtrain::Status s = action();
  if (!s.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "ringtrain: error: %s%s\n", ringtrain::cli::ErrorTag().c_str(), s.message().c_str());
    return s.ExitCode();
  }
  return 0;
}
