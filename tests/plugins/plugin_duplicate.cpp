// A second plugin named full_causal.
#include "test_plugins_common.h"

struct DuplicateBackend : CapsOnlyBackend {
  DuplicateBackend() : CapsOnlyBackend(true, false) {}
};
RT_REGISTER_ATTENTION_PLUGIN(DuplicateBackend, "full_causal", "0.0.1", "duplicate name")
