// world_from_env(): which launcher started this process, from its variables.
//
// Each launcher's set is read on its own; a set that is partly there is an error, and two sets that
// disagree on rank or world size are an error (a `runtime launch` under srun would otherwise pick
// one silently). MASTER_ADDR / MASTER_PORT are torchrun's names and are honoured under every
// launcher. Without them:
//   - MASTER_ADDR defaults to 127.0.0.1 only when the launcher says the job is on one node
//     (OpenMPI: OMPI_COMM_WORLD_LOCAL_SIZE == OMPI_COMM_WORLD_SIZE; Slurm: SLURM_NNODES == 1;
//     PMI: MPI_LOCALNRANKS == PMI_SIZE); across nodes there is no portable way to name rank 0's
//     host, so it is required.
//   - MASTER_PORT is derived from the job id, the same on every rank and different per job:
//     OpenMPI's OMPI_MCA_ess_base_jobid / OMPI_MCA_orte_ess_jobid / PMIX_NAMESPACE, Slurm's
//     SLURM_JOB_ID (+ SLURM_STEP_ID), hashed into 20000..59999. PMI has no job id we can rely
//     on, so there it is required.
// A world of one needs neither.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "rt/sdk/error.h"

namespace rt::dist {
namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

int parse_int(const char* name, const std::string& value, int min_value) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  RT_CHECK(used == value.size() && !value.empty() && v >= min_value && v <= 1 << 30, name, "=", value,
           " is not an integer >= ", min_value);
  return static_cast<int>(v);
}

// "RANK=1, WORLD_SIZE unset" for messages.
std::string describe(const std::vector<const char*>& names) {
  std::string s;
  for (const char* n : names) {
    const auto v = env(n);
    s += (s.empty() ? "" : ", ") + std::string(n) + (v ? "=" + *v : " unset");
  }
  return s;
}

uint32_t fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

struct Triple {
  const char* source;
  const char* rank;
  const char* size;
  std::vector<const char*> local;  // the first one set wins; empty: none required
};

// One launcher's rank, size and local rank; nullopt when none of its variables is set.
std::optional<WorldInfo> read_triple(const Triple& t, bool local_required) {
  std::vector<const char*> all{t.rank, t.size};
  all.insert(all.end(), t.local.begin(), t.local.end());
  bool any = false;
  for (const char* n : all) any = any || env(n).has_value();
  if (!any) return std::nullopt;
  RT_CHECK(env(t.rank) && env(t.size), t.source, "'s launcher variables are incomplete (", describe(all),
           "): ", t.rank, " and ", t.size, " must both be set");
  WorldInfo w;
  w.source = t.source;
  w.rank = parse_int(t.rank, *env(t.rank), 0);
  w.world_size = parse_int(t.size, *env(t.size), 1);
  RT_CHECK(w.rank < w.world_size, t.source, ": ", t.rank, "=", w.rank, " is not below ", t.size, "=", w.world_size);
  w.local_rank = -1;
  for (const char* n : t.local)
    if (auto v = env(n)) {
      w.local_rank = parse_int(n, *v, 0);
      RT_CHECK(w.local_rank <= w.rank, t.source, ": ", n, "=", w.local_rank, " exceeds ", t.rank, "=", w.rank);
      break;
    }
  if (w.local_rank < 0) {
    RT_CHECK(!local_required || w.world_size == 1, t.source, "'s launcher variables are incomplete (", describe(all),
             "): ", t.local.front(), " must be set");
    w.local_rank = w.world_size == 1 ? 0 : w.rank;  // PMI without a local rank: assume one node
  }
  return w;
}

bool env_equals(const char* a, const char* b) {
  const auto va = env(a), vb = env(b);
  return va && vb && *va == *vb;
}

// MASTER_ADDR / MASTER_PORT, or the launcher's defaults (see the top of this file).
void fill_master(WorldInfo& w) {
  if (w.world_size == 1) {
    w.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
    w.master_port = env("MASTER_PORT") ? parse_int("MASTER_PORT", *env("MASTER_PORT"), 1) : 0;
    return;
  }
  bool one_node = false;
  std::string job;
  if (w.source == "openmpi") {
    one_node = env_equals("OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_SIZE");
    for (const char* n : {"OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE"})
      if (auto v = env(n); v && job.empty()) job = *v;
  } else if (w.source == "slurm") {
    one_node = env("SLURM_NNODES").value_or("") == "1" || env("SLURM_JOB_NUM_NODES").value_or("") == "1";
    if (auto v = env("SLURM_JOB_ID")) job = *v + "." + env("SLURM_STEP_ID").value_or("");
  } else if (w.source == "pmi") {
    one_node = env_equals("MPI_LOCALNRANKS", "PMI_SIZE");
  }
  if (auto a = env("MASTER_ADDR")) {
    RT_CHECK(!a->empty(), w.source, ": MASTER_ADDR is set but empty");
    w.master_addr = *a;
  } else {
    RT_CHECK(w.source != "torchrun", "torchrun's launcher variables are incomplete (",
             describe({"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}), "): MASTER_ADDR must be set");
    RT_CHECK(one_node, w.source, " launched a world of ", w.world_size,
             " across more than one node (or did not say): set MASTER_ADDR to rank 0's host (and MASTER_PORT)");
    w.master_addr = "127.0.0.1";
  }
  if (auto p = env("MASTER_PORT")) {
    w.master_port = parse_int("MASTER_PORT", *p, 1);
    RT_CHECK(w.master_port <= 65535, "MASTER_PORT=", *p, " is not a TCP port (1..65535)");
  } else {
    RT_CHECK(!job.empty(), w.source, "'s launcher variables give no MASTER_PORT",
             w.source == "torchrun" ? "" : " and no job id to derive one from", ": set MASTER_PORT");
    w.master_port = 20000 + static_cast<int>(fnv1a(job) % 40000);
  }
}

}  // namespace

std::optional<WorldInfo> world_from_env() {
  const std::vector<std::pair<Triple, bool>> launchers = {
      {{"torchrun", "RANK", "WORLD_SIZE", {"LOCAL_RANK"}}, true},
      {{"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", {"OMPI_COMM_WORLD_LOCAL_RANK"}}, true},
      {{"pmi", "PMI_RANK", "PMI_SIZE", {"MPI_LOCALRANKID", "PMI_LOCAL_RANK"}}, false},
      {{"slurm", "SLURM_PROCID", "SLURM_NTASKS", {"SLURM_LOCALID"}}, true},
  };
  std::optional<WorldInfo> found;
  for (const auto& [t, local_required] : launchers) {
    auto w = read_triple(t, local_required);
    if (!w) continue;
    if (!found) {
      found = w;
      continue;
    }
    RT_CHECK(found->rank == w->rank && found->world_size == w->world_size,
             "contradictory launcher variables: ", found->source, " says rank ", found->rank, " of ",
             found->world_size, ", ", w->source, " says rank ", w->rank, " of ", w->world_size, " (",
             describe({"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK",
                       "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"}),
             "); unset the ones that do not describe this job");
  }
  if (found) fill_master(*found);
  return found;
}

// One listed device: the launcher already gave this rank its own.
void use_local_gpu(int local_rank) {
  std::string devices;
  if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES"); v && *v) {
    std::vector<std::string> list;
    std::string item;
    for (const char* c = v;; ++c) {
      if (*c == ',' || *c == '\0') {
        if (!item.empty()) list.push_back(item);
        item.clear();
        if (*c == '\0') break;
      } else {
        item += *c;
      }
    }
    if (list.size() == 1) return;  // the launcher already gave this rank its own device
    RT_CHECK(local_rank < static_cast<int>(list.size()), "local rank ", local_rank,
             " has no GPU: CUDA_VISIBLE_DEVICES=", v, " lists ", list.size());
    devices = list[static_cast<size_t>(local_rank)];
  } else {
    devices = std::to_string(local_rank);
  }
  ::setenv("CUDA_VISIBLE_DEVICES", devices.c_str(), 1);
}

}  // namespace rt::dist
