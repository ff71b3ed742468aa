#include "cluster/world.h"

#include "collectives/local/local_transport.h"
#include "collectives/mpi/mpi_transport.h"
#include "collectives/shm/shm_transport.h"
#include "collectives/tcp/tcp_transport.h"

namespace ringtrain {

namespace {
// The transport that starts a job's ranks (and, for shm, agrees on the segment's name).
std::string NetworkTransport(const LaunchContext& c) { return c.under_mpirun && coll::MpiAvailable() ? "mpi" : "tcp"; }
}  // namespace

std::string ResolveTransport(const LaunchContext& c, const std::string& requested) {
  if (requested != "auto") return requested;
  if (c.size == 1) return "local";
  // Every rank on this host: shared memory, unless /dev/shm is too small for the rings.
  if (c.local_size == c.size && coll::ShmTransport::Fits(c.size, coll::ShmOptions{}.ring_bytes)) return "shm";
  return NetworkTransport(c);
}

StatusOr<std::unique_ptr<coll::Communicator>> MakeWorld(const LaunchContext& c, const WorldOptions& o) {
  std::string t = ResolveTransport(c, o.transport);
  const bool shm = t == "shm";
  if (shm) {
    if (c.size > 1 && c.local_size != c.size)
      return InvalidArgument("transport 'shm' needs every rank on one host (" + std::to_string(c.local_size) + " of " +
                             std::to_string(c.size) + " ranks are on this one)");
    t = c.size == 1 ? "local" : NetworkTransport(c);
  }
  std::shared_ptr<coll::Transport> transport;
  if (t == "local") {
    if (c.size != 1) return InvalidArgument("the local transport runs one process; this job has " + std::to_string(c.size));
    transport = coll::LocalWorld::Create(1)->Rank(0);
  } else if (t == "mpi") {
    if (!coll::MpiAvailable()) return InvalidArgument("transport 'mpi': this ringtrain was built without MPI");
    if (!c.under_mpirun) return InvalidArgument("transport 'mpi' needs a launch by mpirun (no OMPI_COMM_WORLD_RANK)");
    RT_ASSIGN_OR_RETURN(auto m, coll::MpiTransport::Create());
    if (m->size() != c.size) return Internal("MPI world size differs from OMPI_COMM_WORLD_SIZE");
    transport = m;
  } else if (t == "tcp") {
    coll::TcpOptions to;
    to.rank = c.rank;
    to.size = c.size;
    to.master_addr = c.master_addr;
    to.master_port = c.master_port;
    to.bind = o.tcp_bind;
    to.connect_timeout_s = o.connect_timeout_s;
    RT_ASSIGN_OR_RETURN(auto tcp, coll::TcpTransport::Create(to));
    transport = tcp;
  } else {
    return InvalidArgument("unknown transport '" + t + "' (auto, mpi, tcp or shm)");
  }
  if (shm && c.size > 1) {
    coll::ShmOptions so;
    so.connect_timeout_s = o.connect_timeout_s;
    RT_ASSIGN_OR_RETURN(auto st, coll::ShmTransport::CreateOver(transport, so));
    transport = st;
  }
  return std::make_unique<coll::Communicator>(transport, o.comm);
}

}  // namespace ringtrain
