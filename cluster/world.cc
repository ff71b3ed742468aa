#include "cluster/world.h"

#include "collectives/local/local_transport.h"
#include "collectives/mpi/mpi_transport.h"
#include "collectives/tcp/tcp_transport.h"

namespace ringtrain {

std::string ResolveTransport(const LaunchContext& c, const std::string& requested) {
  if (requested != "auto") return requested;
  if (c.size == 1) return "local";
  return c.under_mpirun && coll::MpiAvailable() ? "mpi" : "tcp";
}

StatusOr<std::unique_ptr<coll::Communicator>> MakeWorld(const LaunchContext& c, const WorldOptions& o) {
  const std::string t = ResolveTransport(c, o.transport);
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
    return InvalidArgument("unknown transport '" + t + "' (auto, mpi or tcp)");
  }
  return std::make_unique<coll::Communicator>(transport, o.comm);
}

}  // namespace ringtrain
