#include "cluster/launch_context.h"

#include <cstdlib>

namespace ringtrain {

namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

Status ParseInt(const char* name, int min, int* out) {
  const char* v = Env(name);
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < min || x > 1 << 24)
    return InvalidArgument("environment variable " + std::string(name) + "='" + v + "' is not a valid value");
  *out = static_cast<int>(x);
  return Status::Ok();
}

}  // namespace

StatusOr<LaunchContext> DetectLaunch() {
  LaunchContext c;
  const bool ompi = Env("OMPI_COMM_WORLD_RANK") || Env("OMPI_COMM_WORLD_SIZE");
  const bool torch = Env("RANK") || Env("WORLD_SIZE");
  if (ompi) {
    if (!Env("OMPI_COMM_WORLD_RANK") || !Env("OMPI_COMM_WORLD_SIZE"))
      return InvalidArgument("Open MPI environment incomplete: OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE must both be set");
    RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_RANK", 0, &c.rank));
    RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_SIZE", 1, &c.size));
    if (Env("OMPI_COMM_WORLD_LOCAL_RANK")) RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_LOCAL_RANK", 0, &c.local_rank));
    if (Env("OMPI_COMM_WORLD_LOCAL_SIZE")) RT_RETURN_IF_ERROR(ParseInt("OMPI_COMM_WORLD_LOCAL_SIZE", 1, &c.local_size));
    c.source = "mpirun";
    c.under_mpirun = true;
  }
  if (torch) {
    if (!Env("RANK") || !Env("WORLD_SIZE"))
      return InvalidArgument("launch environment incomplete: RANK and WORLD_SIZE must both be set");
    LaunchContext t;
    RT_RETURN_IF_ERROR(ParseInt("RANK", 0, &t.rank));
    RT_RETURN_IF_ERROR(ParseInt("WORLD_SIZE", 1, &t.size));
    if (ompi && (t.rank != c.rank || t.size != c.size))
      return InvalidArgument("RANK/WORLD_SIZE (" + std::to_string(t.rank) + "/" + std::to_string(t.size) +
                             ") contradict OMPI_COMM_WORLD_RANK/SIZE (" + std::to_string(c.rank) + "/" +
                             std::to_string(c.size) + ")");
    if (!ompi) {
      c.rank = t.rank;
      c.size = t.size;
      c.local_rank = c.rank;
      c.local_size = c.size;
      if (Env("LOCAL_RANK")) RT_RETURN_IF_ERROR(ParseInt("LOCAL_RANK", 0, &c.local_rank));
      if (Env("LOCAL_WORLD_SIZE")) RT_RETURN_IF_ERROR(ParseInt("LOCAL_WORLD_SIZE", 1, &c.local_size));
      c.source = "RANK/WORLD_SIZE environment";
    }
  }
  if (c.rank >= c.size)
    return InvalidArgument("rank " + std::to_string(c.rank) + " is not below the world size " + std::to_string(c.size) +
                           " (" + c.source + ")");
  if (Env("MASTER_ADDR")) c.master_addr = Env("MASTER_ADDR");
  if (Env("MASTER_PORT")) RT_RETURN_IF_ERROR(ParseInt("MASTER_PORT", 1, &c.master_port));
  if (c.master_port > 65535) return InvalidArgument("MASTER_PORT=" + std::to_string(c.master_port) + " is not a TCP port");
  return c;
}

}  // namespace ringtrain
