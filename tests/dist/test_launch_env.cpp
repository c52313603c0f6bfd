// world_from_env(): each launcher's variables, their defaults, and every kind of bad input.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

#include "dist/process_group.h"
#include "rt/sdk/error.h"

namespace {

using rt::dist::world_from_env;

const char* kAll[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
                      "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                      "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE", "PMI_RANK", "PMI_SIZE",
                      "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_NTASKS",
                      "SLURM_LOCALID", "SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_JOB_ID", "SLURM_STEP_ID"};

// Each test starts from an environment without any launcher variable and sets its own.
class LaunchEnv : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* n : kAll) unsetenv(n);
  }
  void TearDown() override { SetUp(); }
  void set(std::map<std::string, std::string> vars) {
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  // The error's message, which must contain every string of `parts`.
  void expect_error(std::initializer_list<const char*> parts) {
    try {
      world_from_env();
      ADD_FAILURE() << "expected an rt::Error";
    } catch (const rt::Error& e) {
      for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
};

TEST_F(LaunchEnv, NoVariablesIsNoWorld) { EXPECT_FALSE(world_from_env().has_value()); }

TEST_F(LaunchEnv, Torchrun) {
  set({{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}});
  const auto w = world_from_env();
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->rank, 2);
  EXPECT_EQ(w->world_size, 4);
  EXPECT_EQ(w->local_rank, 0);
  EXPECT_EQ(w->master_addr, "node0");
  EXPECT_EQ(w->master_port, 29500);
  EXPECT_EQ(w->source, "torchrun");
}

TEST_F(LaunchEnv, WorldOfOneNeedsNoMaster) {
  set({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  const auto w = world_from_env();
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->world_size, 1);
  EXPECT_EQ(w->local_rank, 0);
}

TEST_F(LaunchEnv, TorchrunPartial) {
  set({{"RANK", "1"}});
  expect_error({"RANK=1", "WORLD_SIZE unset", "torchrun"});
}

TEST_F(LaunchEnv, TorchrunWithoutMaster) {
  set({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"MASTER_PORT", "29500"}});
  expect_error({"MASTER_ADDR"});
  unsetenv("MASTER_PORT");
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  expect_error({"MASTER_PORT"});
}

TEST_F(LaunchEnv, TorchrunWithoutLocalRank) {
  set({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}});
  expect_error({"LOCAL_RANK"});
}

TEST_F(LaunchEnv, BadValues) {
  set({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
  expect_error({"RANK=2", "WORLD_SIZE=2"});
  set({{"RANK", "one"}});
  expect_error({"RANK=one", "not an integer"});
  set({{"RANK", "0"}, {"WORLD_SIZE", "0"}});
  expect_error({"WORLD_SIZE=0"});
  set({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}});
  expect_error({"MASTER_PORT=70000"});
}

TEST_F(LaunchEnv, OpenMpiWithMaster) {
  set({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "8"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "1234"}});
  const auto w = world_from_env();
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->source, "openmpi");
  EXPECT_EQ(w->rank, 3);
  EXPECT_EQ(w->world_size, 8);
  EXPECT_EQ(w->local_rank, 1);
  EXPECT_EQ(w->master_addr, "10.0.0.1");
  EXPECT_EQ(w->master_port, 1234);
}

TEST_F(LaunchEnv, OpenMpiOneNodeDefaults) {
  set({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"OMPI_MCA_ess_base_jobid", "123456"}});
  const auto a = world_from_env();
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->master_addr, "127.0.0.1");
  EXPECT_GE(a->master_port, 20000);
  EXPECT_LT(a->master_port, 60000);
  EXPECT_EQ(world_from_env()->master_port, a->master_port);  // deterministic: every rank agrees
  setenv("OMPI_MCA_ess_base_jobid", "123457", 1);
  EXPECT_NE(world_from_env()->master_port, a->master_port);  // another job, another port
}

TEST_F(LaunchEnv, OpenMpiErrors) {
  set({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"OMPI_MCA_ess_base_jobid", "1"}});
  expect_error({"openmpi", "more than one node", "MASTER_ADDR"});
  set({{"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  unsetenv("OMPI_MCA_ess_base_jobid");
  expect_error({"openmpi", "MASTER_PORT"});
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  expect_error({"OMPI_COMM_WORLD_LOCAL_RANK"});
  unsetenv("OMPI_COMM_WORLD_SIZE");
  expect_error({"OMPI_COMM_WORLD_SIZE unset"});
}

TEST_F(LaunchEnv, Pmi) {
  set({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"},
       {"MASTER_PORT", "4000"}});
  const auto w = world_from_env();
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->source, "pmi");
  EXPECT_EQ(w->rank, 1);
  EXPECT_EQ(w->local_rank, 1);
  EXPECT_EQ(w->master_addr, "127.0.0.1");
  unsetenv("MASTER_PORT");
  expect_error({"pmi", "MASTER_PORT"});
  set({{"PMI_SIZE", "x"}});
  expect_error({"PMI_SIZE=x"});
}

TEST_F(LaunchEnv, Slurm) {
  set({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}, {"SLURM_LOCALID", "2"}, {"SLURM_NNODES", "1"},
       {"SLURM_JOB_ID", "777"}});
  const auto w = world_from_env();
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->source, "slurm");
  EXPECT_EQ(w->rank, 5);
  EXPECT_EQ(w->world_size, 6);
  EXPECT_EQ(w->local_rank, 2);
  EXPECT_EQ(w->master_addr, "127.0.0.1");
  EXPECT_GE(w->master_port, 20000);
  set({{"SLURM_NNODES", "2"}});
  expect_error({"slurm", "MASTER_ADDR"});
  unsetenv("SLURM_LOCALID");
  expect_error({"SLURM_LOCALID"});
}

TEST_F(LaunchEnv, ContradictoryLaunchers) {
  set({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"},
       {"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "1"}});
  expect_error({"contradictory", "torchrun says rank 0 of 2", "slurm says rank 1 of 2", "SLURM_PROCID=1"});
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_LOCALID", "0", 1);
  const auto w = world_from_env();  // agreeing launchers are one world
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->source, "torchrun");
}

}  // namespace
