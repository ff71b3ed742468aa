// Launch-context detection: Slurm host lists and tasks-per-node strings, and which launcher's
// variables win, from real environment variables set in this process.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "cluster/launch_context.h"

namespace ringtrain {
namespace {

const char* kVars[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                       "OMPI_COMM_WORLD_LOCAL_SIZE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                       "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID",
                       "SLURM_STEP_ID", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NODEID",
                       "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID"};

// Sets exactly the given launcher variables for the test's duration (and restores the rest).
class Env {
 public:
  explicit Env(const std::map<std::string, std::string>& vars) {
    for (const char* v : kVars) {
      if (const char* old = std::getenv(v)) saved_[v] = old;
      ::unsetenv(v);
    }
    for (const auto& [k, v] : vars) ::setenv(k.c_str(), v.c_str(), 1);
  }
  ~Env() {
    for (const char* v : kVars) ::unsetenv(v);
    for (const auto& [k, v] : saved_) ::setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  std::map<std::string, std::string> saved_;
};

TEST(HostList, ExpandsRangesListsAndPadding) {
  auto h = ExpandHostList("node[01-04,07]");
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h.value(), (std::vector<std::string>{"node01", "node02", "node03", "node04", "node07"}));
  h = ExpandHostList("gpu3,cpu[9-11],login");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h.value(), (std::vector<std::string>{"gpu3", "cpu9", "cpu10", "cpu11", "login"}));
  h = ExpandHostList("r[1-2]n[08-09]");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h.value(), (std::vector<std::string>{"r1n08", "r1n09", "r2n08", "r2n09"}));
  h = ExpandHostList("single");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h.value(), std::vector<std::string>{"single"});
}

TEST(HostList, RejectsMalformedLists) {
  for (const char* bad : {"node[01-04", "node]", "node[4-1]", "node[a-b]", "node[]", "a,,b", "node[1-]"}) {
    auto h = ExpandHostList(bad);
    EXPECT_FALSE(h.ok()) << bad;
    if (!h.ok()) {
      EXPECT_NE(h.status().message().find(bad), std::string::npos) << h.status().message();
    }
  }
}

TEST(TasksPerNode, RepeatsAndLists) {
  for (int node = 0; node < 3; ++node) EXPECT_EQ(TasksOnNode("2(x3),1", node).value(), 2);
  EXPECT_EQ(TasksOnNode("2(x3),1", 3).value(), 1);
  EXPECT_FALSE(TasksOnNode("2(x3),1", 4).ok());
  EXPECT_EQ(TasksOnNode("4", 0).value(), 4);
  EXPECT_FALSE(TasksOnNode("2(x", 0).ok());
}

TEST(DetectLaunch, NothingIsOneProcess) {
  Env e({});
  auto c = DetectLaunch();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->rank, 0);
  EXPECT_EQ(c->size, 1);
  EXPECT_EQ(c->source, "single process");
}

TEST(DetectLaunch, SlurmStep) {
  Env e({{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "1"},
         {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}, {"SLURM_NODEID", "1"}, {"SLURM_JOB_NODELIST", "node[07-08]"},
         {"SLURM_JOB_ID", "21234"}});
  auto c = DetectLaunch();
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->source, "Slurm");
  EXPECT_EQ(c->rank, 3);
  EXPECT_EQ(c->size, 4);
  EXPECT_EQ(c->local_rank, 1);
  EXPECT_EQ(c->local_size, 2);
  EXPECT_EQ(c->master_addr, "node07");
  EXPECT_EQ(c->master_port, 20000 + 21234 % 20000);
  EXPECT_EQ(c->job_id, "21234");
  EXPECT_FALSE(c->under_mpirun);
}

TEST(DetectLaunch, SlurmMasterOverrides) {
  Env e({{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n[1-2]"},
         {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "4242"}});
  auto c = DetectLaunch();
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->master_addr, "10.0.0.5");
  EXPECT_EQ(c->master_port, 4242);
}

TEST(DetectLaunch, SlurmBatchScriptItselfIsOneProcess) {
  // The batch step has SLURM_PROCID=0 and the job's SLURM_NTASKS but no SLURM_STEP_ID.
  Env e({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "vm"}, {"SLURM_JOB_ID", "7"}});
  auto c = DetectLaunch();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->size, 1);
}

TEST(DetectLaunch, OpenMpiWinsOverSlurm) {
  Env e({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "0"},
         {"SLURM_NTASKS", "1"}});
  auto c = DetectLaunch();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->source, "mpirun");
  EXPECT_EQ(c->rank, 1);
  EXPECT_TRUE(c->under_mpirun);
}

TEST(DetectLaunch, TorchrunStyleAndLocalRanks) {
  Env e({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "h0"},
         {"MASTER_PORT", "29400"}});
  auto c = DetectLaunch();
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->rank, 5);
  EXPECT_EQ(c->local_rank, 1);
  EXPECT_EQ(c->local_size, 4);
  EXPECT_EQ(c->master_addr, "h0");
  EXPECT_EQ(c->master_port, 29400);
}

// Each error names the variables at fault.
TEST(DetectLaunch, PartialOrConflictingVariablesAreErrors) {
  struct Bad {
    std::map<std::string, std::string> vars;
    const char* names;
  };
  const std::vector<Bad> cases = {
      {{{"RANK", "0"}}, "WORLD_SIZE"},
      {{{"OMPI_COMM_WORLD_RANK", "0"}}, "OMPI_COMM_WORLD_SIZE"},
      {{{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "0"}}, "SLURM_NTASKS"},
      {{{"SLURM_STEP_ID", "0"}, {"SLURM_NTASKS", "2"}}, "SLURM_PROCID"},
      {{{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}, "SLURM_JOB_NODELIST"},
      {{{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n[2-1]"}},
       "n[2-1]"},
      {{{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}},
       "OMPI_COMM_WORLD_RANK"},
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "world size"},
      {{{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK='x'"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "3"}}, "local rank"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT"},
  };
  for (const Bad& b : cases) {
    Env e(b.vars);
    auto c = DetectLaunch();
    ASSERT_FALSE(c.ok()) << "expected an error naming " << b.names;
    EXPECT_NE(c.status().message().find(b.names), std::string::npos) << c.status().message();
  }
}

}  // namespace
}  // namespace ringtrain
