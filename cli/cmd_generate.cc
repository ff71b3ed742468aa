// `ringtrain generate --model DIR --prompt TEXT [--tokens N --temperature T --top-k K --seed S]`
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "checkpoint/model_file.h"
#include "cli/commands.h"
#include "core/rng.h"
#include "core/threads.h"
#include "models/gpt.h"

namespace ringtrain::cli {

namespace {
struct GenerateArgs {
  std::string model;
  std::string prompt;
  int tokens = 200;
  double temperature = 1.0;
  int top_k = 0;
  int64_t seed = 1;
};

Status Generate(const GenerateArgs& a) {
  if (a.tokens < 0) return InvalidArgument("--tokens must be >= 0, got " + std::to_string(a.tokens));
  if (!(a.temperature > 0)) return InvalidArgument("--temperature must be > 0");
  if (a.top_k < 0) return InvalidArgument("--top-k must be >= 0");
  RT_ASSIGN_OR_RETURN(SavedModel m, LoadModel(a.model));
  if (m.meta.value("task", "lm") != "lm")
    return InvalidArgument("model " + a.model + " is an image classifier; generate needs a language model (use eval)");
  RT_ASSIGN_OR_RETURN(Config config, Config::FromJson(m.meta["config"]));
  SetThreadBudget(static_cast<int>(config.Int("threads")));
  const int vocab_size = m.meta.value("vocab_size", 0);
  RT_ASSIGN_OR_RETURN(GptConfig gc, GptConfig::FromConfig(config, vocab_size));
  Gpt<float> model(gc);
  RT_RETURN_IF_ERROR(LoadParams(m, model.arena(), "GPT"));

  std::optional<CharVocab> vocab;
  if (m.meta.contains("vocab_chars")) {
    std::vector<char32_t> cps;
    for (const auto& c : m.meta["vocab_chars"]) cps.push_back(static_cast<char32_t>(c.get<uint32_t>()));
    vocab = CharVocab(std::move(cps));
  }
  std::vector<int32_t> ctx;
  if (vocab) {
    RT_ASSIGN_OR_RETURN(ctx, vocab->Encode(a.prompt, "prompt"));
  } else {
    // Models trained on token ids (synthetic or token files): the prompt is space-separated ids.
    const char* p = a.prompt.c_str();
    while (*p) {
      char* end;
      long v = std::strtol(p, &end, 10);
      if (end == p) return InvalidArgument("prompt: this model has no character vocabulary; give token ids separated by spaces");
      if (v < 0 || v >= vocab_size)
        return InvalidArgument("prompt: token id " + std::to_string(v) + " is outside the vocabulary [0, " +
                               std::to_string(vocab_size) + ")");
      ctx.push_back(static_cast<int32_t>(v));
      p = end;
      while (*p == ' ') ++p;
    }
  }
  if (ctx.empty()) ctx.push_back(0);
  std::printf("%s", vocab ? a.prompt.c_str() : a.prompt.c_str());
  std::fflush(stdout);
  const int block = gc.block_size, V = gc.vocab_size;
  model.PlanActivations(1, block);
  Rng rng(static_cast<uint64_t>(a.seed), RngPurpose::kSample);
  std::vector<double> probs(static_cast<size_t>(V));
  std::vector<int> order(static_cast<size_t>(V));
  for (int i = 0; i < a.tokens; ++i) {
    const int n = std::min<int>(static_cast<int>(ctx.size()), block);
    const int32_t* window = ctx.data() + ctx.size() - n;
    model.Forward(window, nullptr, 1, n, false);
    const float* logits = model.logits() + static_cast<int64_t>(n - 1) * V;
    double mx = -1e300;
    for (int v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(logits[v]) / a.temperature);
    double sum = 0;
    for (int v = 0; v < V; ++v) {
      probs[v] = std::exp(static_cast<double>(logits[v]) / a.temperature - mx);
      sum += probs[v];
    }
    if (a.top_k > 0 && a.top_k < V) {
      for (int v = 0; v < V; ++v) order[v] = v;
      std::nth_element(order.begin(), order.begin() + a.top_k - 1, order.end(),
                       [&](int x, int y) { return probs[x] > probs[y]; });
      const double kth = probs[order[a.top_k - 1]];
      sum = 0;
      for (int v = 0; v < V; ++v) {
        if (probs[v] < kth) probs[v] = 0;
        sum += probs[v];
      }
    }
    const int next = SampleCategorical(rng, probs.data(), V, sum);
    ctx.push_back(next);
    if (vocab) std::printf("%s", vocab->DecodeOne(next).c_str());
    else std::printf(" %d", next);
    std::fflush(stdout);
  }
  std::printf("\n");
  return Status::Ok();
}
}  // namespace

void AddGenerate(CLI::App& app, Action& action) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "sample text from a trained model");
  cmd->add_option("--model", args->model, "model or run directory")->required();
  cmd->add_option("--prompt", args->prompt, "text to start from")->required();
  cmd->add_option("--tokens", args->tokens, "tokens to generate (default 200)");
  cmd->add_option("--temperature", args->temperature, "sampling temperature (default 1.0)");
  cmd->add_option("--top-k", args->top_k, "sample from the k most likely tokens (0: all)");
  cmd->add_option("--seed", args->seed, "sampling seed");
  cmd->callback([&action, args]() { action = [args]() { return Generate(*args); }; });
}

}  // namespace ringtrain::cli
