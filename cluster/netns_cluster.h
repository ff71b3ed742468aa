// An emulated cluster on one machine, for scaling experiments: one network namespace per node,
// each with its own address (10.77.0.x/24) on a bridge that lives in a hub namespace of its own,
// and every node's link shaped with `tc tbf` to the given bandwidth in both directions (the node's
// egress and the hub port's egress). Built with iproute2 (`ip`, `tc`); needs CAP_NET_ADMIN.
// Teardown (also run by the destructor) kills what runs inside the namespaces and deletes them,
// which removes their links too; a failed Create tears down what it made.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace ringtrain {

// Runs argv (argv[0] looked up in PATH) to completion; its output is returned, or in the error
// when it exits non-zero ("ip netns add x: exit status 1: <output>").
StatusOr<std::string> RunTool(const std::vector<std::string>& argv);

struct NetnsNode {
  std::string ns;     // namespace name
  std::string iface;  // the node's interface in it
  std::string addr;   // its IPv4 address
};

class NetnsCluster {
 public:
  // nodes namespaces named prefix + "n<i>" plus prefix + "hub"; bandwidth in bits per second.
  static StatusOr<std::unique_ptr<NetnsCluster>> Create(const std::string& prefix, int nodes, double bandwidth_bps);
  ~NetnsCluster();
  NetnsCluster(const NetnsCluster&) = delete;
  NetnsCluster& operator=(const NetnsCluster&) = delete;

  const std::vector<NetnsNode>& nodes() const { return nodes_; }
  // argv run inside node i's namespace.
  std::vector<std::string> Wrap(int node, const std::vector<std::string>& argv) const;
  // Kills every process in the namespaces and deletes them. Idempotent.
  void Teardown();

 private:
  NetnsCluster() = default;
  std::string hub_;
  std::vector<NetnsNode> nodes_;
  std::vector<std::string> made_;  // namespaces created, in order
};

}  // namespace ringtrain
