// The official L2A release (awslabs/hybrid-model-factory, model_type "l2a_qwen3") names the
// per-layer L2A tensors differently from this runtime's L2A plugins. One table maps both ways: the
// loader reads an official checkpoint under our names, `runtime convert` writes ours under theirs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loader/hf_config.h"
#include "loader/weight_store.h"

namespace rt {

// One per-layer tensor, relative to "model.layers.N.".
struct L2aNamePair {
  const char* official;
  const char* ours;
};
// The L2A tensors of one paper-layout Qwen3 layer (global attention, its norm, the router). The
// local attention, norms and MLP have the same names on both sides.
const std::vector<L2aNamePair>& l2a_official_name_table();

// A full tensor name in the other naming; names the table does not cover come back unchanged.
std::string l2a_official_to_ours(const std::string& name);
std::string l2a_ours_to_official(const std::string& name);

// The official per-layer L2A tensors a config implies, with their shapes (official names).
struct L2aOfficialTensor {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<L2aOfficialTensor> l2a_official_expected(const HfConfig& config);

// For an l2a_qwen3 config (config.official_l2a set): checks that `store` holds every official L2A
// tensor with the shape the config implies, then renames them to our names. Each tensor may also
// already carry our name (a model this runtime trained from an official one). Fails with one
// rt::Error naming the file, the tensors and the expected vs found shapes; changes nothing then.
// Does nothing for other model types.
void adopt_official_l2a_names(const HfConfig& config, WeightStore& store);

}  // namespace rt
