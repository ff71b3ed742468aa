// `ringtrain bench ps [--mb 64] [--iters 10] [--json]`: push+pull throughput of one parameter
// server over loopback against raw TCP in the same run (issue 8's benchmark). One worker pushes
// a gradient of the given size and pulls the parameters back, BSP with plain SGD (the server
// applies a real update each round); the reference sends the same bytes over a plain loopback
// TCP connection and receives them back from an echoing thread. Both count 2 x size per round.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "parameter_server/auth.h"
#include "parameter_server/client.h"
#include "parameter_server/server.h"

namespace ringtrain::cli {

namespace {
struct BenchPsArgs {
  double mb = 64;
  int iters = 10;
  bool json = false;
};

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Whole-buffer socket I/O: each call hands the kernel everything left (asio::read and write cut
// transfers into 64 KB calls, which would make a slow reference).
void ReadAll(tcp::socket& s, char* p, size_t n, boost::system::error_code& ec) {
  for (size_t got = 0; got < n && !ec;) got += s.read_some(asio::buffer(p + got, n - got), ec);
}
void WriteAll(tcp::socket& s, const char* p, size_t n, boost::system::error_code& ec) {
  for (size_t put = 0; put < n && !ec;) put += s.write_some(asio::buffer(p + put, n - put), ec);
}

// Seconds per round of sending n bytes to an echo thread over loopback and reading them back.
StatusOr<double> RawTcpRound(size_t n, int iters) {
  asio::io_context io;
  tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const int port = acc.local_endpoint().port();
  std::vector<char> out(n, 1), in(n), echo(n);
  std::thread server([&] {
    tcp::socket s(io);
    acc.accept(s);
    s.set_option(tcp::no_delay(true));
    boost::system::error_code ec;
    for (int i = 0; i < iters + 1 && !ec; ++i) {
      ReadAll(s, echo.data(), n, ec);
      if (!ec) WriteAll(s, echo.data(), n, ec);
    }
  });
  tcp::socket c(io);
  boost::system::error_code ec;
  c.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)), ec);
  if (ec) {
    server.join();
    return Unavailable("raw TCP reference: " + ec.message());
  }
  c.set_option(tcp::no_delay(true));
  // The client writes and reads at once (a writer thread), as the PS client's sender does.
  auto round = [&] {
    std::thread w([&] { WriteAll(c, out.data(), n, ec); });
    boost::system::error_code rec;
    ReadAll(c, in.data(), n, rec);
    w.join();
  };
  round();  // warm-up: page faults, socket buffers
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) round();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
  server.join();
  return s;
}

Status Run(const BenchPsArgs& a) {
  if (!(a.mb > 0) || a.iters < 1) return InvalidArgument("--mb must be positive and --iters at least 1");
  const size_t n = static_cast<size_t>(a.mb * (1 << 20) / 4);
  const std::string token = ps::RandomTokenHex();
  ps::PsServerOptions so;
  so.token = token;
  so.log_stderr = false;
  RT_ASSIGN_OR_RETURN(std::unique_ptr<ps::PsServer> server, ps::PsServer::Start(so));
  ps::PsClientOptions co;
  co.hosts = {server->address()};
  co.token = token;
  co.job_id = "bench";
  co.total = n;
  RT_ASSIGN_OR_RETURN(std::unique_ptr<ps::PsClient> client, ps::PsClient::Connect(co));
  Config c;
  RT_RETURN_IF_ERROR(c.Set("optim.name", "sgd"));
  RT_RETURN_IF_ERROR(c.Set("optim.lr", "1e-6"));
  RT_RETURN_IF_ERROR(c.Set("optim.grad_clip", "0"));
  RT_RETURN_IF_ERROR(c.Set("schedule.name", "constant"));
  RT_RETURN_IF_ERROR(c.Set("schedule.min_lr", "0"));
  nlohmann::json job = {{"workers", 1},      {"consistency", "bsp"}, {"staleness", 0},
                        {"deadline_s", 300}, {"step", 0},            {"config", c.ToJson()}};
  job["specs"] = nlohmann::json::array({{{"name", "w"}, {"shape", {n}}, {"decay", false}, {"offset", 0}}});
  std::vector<float> params(n, 1.f), grads(n, 0.5f);
  RT_RETURN_IF_ERROR(client->Init(job, params.data(), nullptr, nullptr));
  auto round = [&](int64_t step) -> Status {
    client->Push(step, 0, n, grads.data());
    RT_RETURN_IF_ERROR(client->WaitPushes());
    return client->Pull(step + 1, 0, {}, params.data());
  };
  RT_RETURN_IF_ERROR(round(0));  // warm-up
  const auto t0 = Clock::now();
  for (int i = 1; i <= a.iters; ++i) RT_RETURN_IF_ERROR(round(i));
  const double ps_s = std::chrono::duration<double>(Clock::now() - t0).count() / a.iters;
  client.reset();
  server->Stop();
  RT_ASSIGN_OR_RETURN(double raw_s, RawTcpRound(n * 4, a.iters));
  const double bytes = 2.0 * static_cast<double>(n) * 4;
  const double ps_gbps = bytes / ps_s / 1e9, raw_gbps = bytes / raw_s / 1e9;
  if (a.json) {
    nlohmann::json j = {{"bytes_per_round", bytes}, {"ps_ms_per_round", ps_s * 1e3}, {"ps_gbps", ps_gbps},
                        {"raw_tcp_ms_per_round", raw_s * 1e3}, {"raw_tcp_gbps", raw_gbps},
                        {"ratio", ps_gbps / raw_gbps}, {"iters", a.iters}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench ps: %.0f MB pushed and pulled per round, %d rounds, one server on loopback\n", a.mb, a.iters);
    std::printf("  parameter server (push + SGD update + pull): %8.1f ms/round  %6.2f GB/s\n", ps_s * 1e3, ps_gbps);
    std::printf("  raw TCP (send + echo back):                  %8.1f ms/round  %6.2f GB/s\n", raw_s * 1e3, raw_gbps);
    std::printf("  ratio: %.2fx raw TCP\n", ps_gbps / raw_gbps);
  }
  return Status::Ok();
}
}  // namespace

void AddBenchPs(CLI::App* bench, Action& action) {
  auto args = std::make_shared<BenchPsArgs>();
  CLI::App* cmd = bench->add_subcommand("ps", "parameter-server push+pull throughput against raw TCP (loopback)");
  cmd->add_option("--mb", args->mb, "megabytes pushed and pulled per round (default 64)");
  cmd->add_option("--iters", args->iters, "timed rounds (default 10)");
  cmd->add_flag("--json", args->json, "one JSON object");
  cmd->callback([&action, args]() { action = [args]() { return Run(*args); }; });
}

}  // namespace ringtrain::cli
