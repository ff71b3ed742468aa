// `ringtrain bench allreduce`: an nccl-tests style table of all-reduce time, algorithm bandwidth
// and bus bandwidth (algbw * 2(n-1)/n) over a range of sizes, on the transport the launch context
// selects, with Open MPI's own MPI_Allreduce measured in the same run beside each row when running
// under mpirun. Each size's time is the median over iterations of the slowest rank's time; with the
// MPI reference the two alternate call by call, so a burst of load on this shared host hits both.
// `--check` verifies every size's result exactly (integer-valued floats).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cluster/launch_context.h"
#include "cluster/world.h"
#include "collectives/mpi/mpi_transport.h"

#ifdef RINGTRAIN_HAVE_MPI
#include <mpi.h>
#endif

namespace ringtrain::cli {

namespace {

struct AllreduceArgs {
  std::string sizes = "1K:64M";
  double factor = 2;
  std::string algorithm = "auto";
  std::string transport = "auto";
  std::string segment = "1M";
  std::string bind;
  int iters = 20;
  int warmup = 5;
  double deadline = 300;
  bool json = false;
  bool check = false;
  bool no_mpi = false;
};

StatusOr<int64_t> ParseBytes(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    return InvalidArgument("--sizes: '" + s + "' is not a size like 4K, 1M or 64M");
  }
  std::string unit = s.substr(pos);
  double mult = 1;
  if (unit == "K" || unit == "k") mult = 1 << 10;
  else if (unit == "M" || unit == "m") mult = 1 << 20;
  else if (unit == "G" || unit == "g") mult = 1 << 30;
  else if (!unit.empty() && unit != "B") return InvalidArgument("--sizes: unknown unit in '" + s + "'");
  if (v < 0) return InvalidArgument("--sizes: negative size '" + s + "'");
  return static_cast<int64_t>(v * mult);
}

// "1K:64M" (geometric, --factor) or "4K,1M,16M".
StatusOr<std::vector<int64_t>> ParseSizes(const std::string& spec, double factor) {
  std::vector<int64_t> out;
  if (spec.find(':') != std::string::npos) {
    const size_t c = spec.find(':');
    RT_ASSIGN_OR_RETURN(int64_t lo, ParseBytes(spec.substr(0, c)));
    RT_ASSIGN_OR_RETURN(int64_t hi, ParseBytes(spec.substr(c + 1)));
    if (factor <= 1) return InvalidArgument("--factor must be above 1");
    for (double b = static_cast<double>(std::max<int64_t>(lo, 4)); b <= static_cast<double>(hi) * 1.0000001; b *= factor)
      out.push_back(static_cast<int64_t>(b));
  } else {
    std::stringstream ss(spec);
    std::string item;
    while (std::getline(ss, item, ',')) {
      RT_ASSIGN_OR_RETURN(int64_t b, ParseBytes(item));
      out.push_back(b);
    }
  }
  if (out.empty()) return InvalidArgument("--sizes '" + spec + "' selects no sizes");
  return out;
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The median of v (v is reordered).
double Median(std::vector<double>& v) {
  if (v.empty()) return 0.0;
  const size_t m = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m), v.end());
  if (v.size() % 2) return v[m];
  const double hi = v[m];
  return 0.5 * (hi + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m)));
}

float Value(int64_t i, int r) { return static_cast<float>((i * 7 + r * 13) % 31 - 15); }

Status Run(const AllreduceArgs& a) {
  RT_ASSIGN_OR_RETURN(std::vector<int64_t> sizes, ParseSizes(a.sizes, a.factor));
  if (a.iters < 1 || a.warmup < 0) return InvalidArgument("--iters must be at least 1 and --warmup at least 0");
  RT_ASSIGN_OR_RETURN(LaunchContext lc, DetectLaunch());
  WorldOptions wo;
  wo.transport = a.transport;
  wo.tcp_bind = a.bind;
  wo.comm.deadline_s = a.deadline;
  {
    RT_ASSIGN_OR_RETURN(std::vector<int64_t> seg, ParseSizes(a.segment, 2));
    if (seg.size() != 1 || seg[0] < 64) return InvalidArgument("--segment: one size of at least 64 bytes, e.g. 256K");
    wo.comm.segment_bytes = static_cast<size_t>(seg[0]);
  }
  RT_ASSIGN_OR_RETURN(wo.comm.algorithm, coll::ParseAlgorithm(a.algorithm));
  const std::string transport = ResolveTransport(lc, a.transport);
  RT_ASSIGN_OR_RETURN(auto comm, MakeWorld(lc, wo));
  const int n = comm->size(), r = comm->rank();
  bool mpi_ref = false;
#ifdef RINGTRAIN_HAVE_MPI
  if (lc.under_mpirun && !a.no_mpi) {
    RT_RETURN_IF_ERROR(coll::MpiInit());
    mpi_ref = true;
  }
#endif
  const double bus = n > 1 ? 2.0 * (n - 1) / n : 1.0;
  // The host's state, for reading the table: what one rank's memcpy of 16 MiB reaches while every
  // rank copies at once (slowest rank, best of 5). Runs on shared hosts differ by this.
  double copy_gbps = 0;
  {
    std::vector<uint8_t> src(16 << 20, 1), dst(16 << 20);
    RT_RETURN_IF_ERROR(comm->Barrier());
    double best = 1e30;
    for (int i = 0; i < 5; ++i) {
      const double t0 = Now();
      std::memcpy(dst.data(), src.data(), src.size());
      best = std::min(best, Now() - t0);
    }
    copy_gbps = static_cast<double>(src.size()) / best / 1e9;
    RT_RETURN_IF_ERROR(comm->AllReduce(&copy_gbps, 1, coll::DataType::kF64, coll::ReduceOp::kMin));
  }
  if (r == 0 && !a.json) {
    std::printf("# memcpy of 16 MiB, all ranks at once: %.1f GB/s (slowest rank)\n", copy_gbps);
    std::printf("# ringtrain bench allreduce: %d ranks (%s), transport %s, algorithm %s, float32 sum, median of %d iters after %d warm-up%s\n",
                n, lc.source.c_str(), transport.c_str(), a.algorithm.c_str(), a.iters, a.warmup,
                mpi_ref ? ", alternating call by call with MPI_Allreduce" : "");
    std::printf("# %12s %10s %10s %11s %11s%s\n", "bytes", "algorithm", "time(us)", "algbw(GB/s)", "busbw(GB/s)",
                mpi_ref ? "   mpi time(us) mpi busbw(GB/s)   ratio" : "");
    std::fflush(stdout);
  }
  nlohmann::json rows = nlohmann::json::array();
  std::vector<float> buf;
  for (int64_t bytes : sizes) {
    const int64_t count = bytes / 4;
    buf.assign(static_cast<size_t>(count), 1.f);
    auto ours = [&]() { return comm->AllReduce(buf.data(), count, coll::DataType::kF32, coll::ReduceOp::kSum); };
    auto our_barrier = [&]() { return comm->Barrier(); };
#ifdef RINGTRAIN_HAVE_MPI
    auto theirs = [&]() -> Status {
      const int rc = MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      return rc == MPI_SUCCESS ? Status::Ok() : Internal("MPI_Allreduce failed");
    };
    auto their_barrier = []() { return MPI_Barrier(MPI_COMM_WORLD) == MPI_SUCCESS ? Status::Ok() : Internal("MPI_Barrier failed"); };
#else
    auto theirs = []() { return Status::Ok(); };
    auto their_barrier = theirs;
#endif
    // One timed call, started together on every rank (after a barrier of its own kind).
    auto once = [&](auto&& fn, auto&& barrier) -> StatusOr<double> {
      RT_RETURN_IF_ERROR(barrier());
      const double t0 = Now();
      RT_RETURN_IF_ERROR(fn());
      return Now() - t0;
    };
    for (int i = 0; i < a.warmup; ++i) {
      RT_RETURN_IF_ERROR(ours());
      if (mpi_ref) RT_RETURN_IF_ERROR(theirs());
    }
    // The two implementations alternate call by call, so both see the same state of this shared
    // machine; each one's time is the median over iterations of the slowest rank's time.
    std::vector<double> ts(static_cast<size_t>(a.iters)), ms(static_cast<size_t>(a.iters));
    for (int i = 0; i < a.iters; ++i) {
      RT_ASSIGN_OR_RETURN(ts[i], once(ours, our_barrier));
      if (mpi_ref) {
        RT_ASSIGN_OR_RETURN(ms[i], once(theirs, their_barrier));
      }
    }
    RT_RETURN_IF_ERROR(comm->AllReduce(ts.data(), a.iters, coll::DataType::kF64, coll::ReduceOp::kMax));
    if (mpi_ref) RT_RETURN_IF_ERROR(comm->AllReduce(ms.data(), a.iters, coll::DataType::kF64, coll::ReduceOp::kMax));
    const double t = Median(ts);
    const double mt = mpi_ref ? Median(ms) : 0.0;
    if (a.check) {
      for (int64_t i = 0; i < count; ++i) buf[i] = Value(i, r);
      RT_RETURN_IF_ERROR(comm->AllReduce(buf.data(), count, coll::DataType::kF32, coll::ReduceOp::kSum));
      for (int64_t i = 0; i < count; ++i) {
        float want = 0;
        for (int q = 0; q < n; ++q) want += Value(i, q);
        if (buf[i] != want)
          return Internal("--check: allreduce of " + std::to_string(bytes) + " bytes wrong at element " +
                          std::to_string(i) + " on rank " + std::to_string(r));
      }
    }
    const double algbw = t > 0 ? static_cast<double>(count * 4) / t / 1e9 : 0;
    const std::string algo = coll::AlgorithmName(comm->ChooseAllReduce(static_cast<size_t>(count) * 4));
    nlohmann::json row = {{"bytes", count * 4}, {"algorithm", algo}, {"time_us", t * 1e6},
                          {"algbw_gbps", algbw}, {"busbw_gbps", algbw * bus},
                          {"memcpy_gbps", copy_gbps}};
    if (mpi_ref) {
      const double malg = mt > 0 ? static_cast<double>(count * 4) / mt / 1e9 : 0;
      row["mpi_time_us"] = mt * 1e6;
      row["mpi_busbw_gbps"] = malg * bus;
    } else {
      row["mpi_busbw_gbps"] = nullptr;
    }
    rows.push_back(row);
    if (r == 0 && !a.json) {
      std::printf("  %12lld %10s %10.1f %11.3f %11.3f", static_cast<long long>(count * 4), algo.c_str(), t * 1e6,
                  algbw, algbw * bus);
      if (mpi_ref) {
        const double mbus = mt > 0 ? static_cast<double>(count * 4) / mt / 1e9 * bus : 0;
        std::printf("   %12.1f %15.3f %7.2f", mt * 1e6, mbus, mbus > 0 ? algbw * bus / mbus : 0.0);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  if (r == 0 && a.json) std::printf("%s\n", rows.dump().c_str());
  return comm->Barrier();
}

}  // namespace

void AddBenchAllreduce(CLI::App* bench, Action& action) {
  auto a = std::make_shared<AllreduceArgs>();
  CLI::App* c = bench->add_subcommand("allreduce", "all-reduce bandwidth table (under mpirun or with RANK/WORLD_SIZE/MASTER_ADDR)");
  c->add_option("--sizes", a->sizes, "byte range lo:hi (geometric) or a list, e.g. 1K:64M or 1M,4M");
  c->add_option("--factor", a->factor, "growth factor for a lo:hi range (default 2)");
  c->add_option("--algorithm", a->algorithm, "auto, ring, halving_doubling or tree");
  c->add_option("--transport", a->transport, "auto (shm when every rank is on this host, else mpi under mpirun, else tcp), shm, mpi or tcp");
  c->add_option("--bind", a->bind, "TCP: address or interface to listen on");
  c->add_option("--segment", a->segment, "ring: largest single message (default 1M)");
  c->add_option("--iters", a->iters, "timed iterations per size (default 20)");
  c->add_option("--warmup", a->warmup, "untimed iterations per size (default 5)");
  c->add_option("--deadline", a->deadline, "collective deadline in seconds (default 300)");
  c->add_flag("--json", a->json, "print one JSON array (one object per size)");
  c->add_flag("--check", a->check, "verify each size's result exactly");
  c->add_flag("--no-mpi-reference", a->no_mpi, "under mpirun, skip timing MPI_Allreduce");
  c->callback([&action, a]() { action = [a]() { return Run(*a); }; });
}

}  // namespace ringtrain::cli
