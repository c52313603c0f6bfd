// Where the time of one whole-model prefill goes on the GPU, from a CUPTI activity trace: every
// kernel, memcpy and memset of one forward (after two warm-up forwards), merged into busy
// intervals. Prints the span, the busy and idle time, the longest idle gaps with the activities
// around them, and the time per kernel name. For the question "the prefill takes longer than the
// sum of its ops: is the GPU idle (waiting on the host) or are the kernels slower in place?".
//   build/bin/trace_prefill [T=32768] [config=configs/models/qwen2.5-0.5b.json] [attention=full_causal]
//       [key=value ...]        plugin options, e.g. window=2048 router=fixed_rate sparsity=0.8
// TRACE_TRAIN=1 traces one training step (forward + backward, the attention regime's gradients)
// instead of a prefill. TRACE_DECODE=N traces N decode steps (DecodeSession, CUDA graphs where the
// plugin has them: graph nodes are traced one by one) after a prefill of T tokens: what a step's
// time is made of. TRACE_TOP=N prints the N names that took longest (default 20).
#include <cupti.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_ops.h"
#include "loader/hf_config.h"
#include "model/decode_session.h"
#include "model/model_dims.h"
#include "model/qwen2_model.h"
#include "plugin_host/plugin_registry.h"

namespace {

struct Activity {
  uint64_t start, end;
  std::string name;
};
std::vector<Activity> g_acts;
std::vector<Activity> g_api;  // host-side CUDA runtime and driver calls

void cupti_ok(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  std::fprintf(stderr, "CUPTI error in %s: %s\n", what, s ? s : "?");
  std::exit(1);
}

void CUPTIAPI buffer_requested(uint8_t** buf, size_t* size, size_t* max_records) {
  *size = 16 << 20;
  *buf = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buf, size_t, size_t valid) {
  CUpti_Activity* r = nullptr;
  while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(r);
      g_acts.push_back({k->start, k->end, k->name ? k->name : "kernel"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(r);
      g_acts.push_back({m->start, m->end, "[memcpy " + std::to_string(m->bytes) + " B]"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_RUNTIME || r->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
      auto* a = reinterpret_cast<CUpti_ActivityAPI*>(r);
      const char* name = nullptr;
      cuptiGetCallbackName(r->kind == CUPTI_ACTIVITY_KIND_RUNTIME ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API,
                           a->cbid, &name);
      g_api.push_back({a->start, a->end, name ? name : "api"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(r);
      g_acts.push_back({m->start, m->end, "[memset " + std::to_string(m->bytes) + " B]"});
    }
  }
  std::free(buf);
}

std::string short_name(const std::string& n) { return n.size() > 90 ? n.substr(0, 87) + "..." : n; }

}  // namespace

int main(int argc, char** argv) {
  if (!rt::cuda_device_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 32768;
  const std::string config = argc > 2 ? argv[2] : "configs/models/qwen2.5-0.5b.json";
  const std::string backend = argc > 3 ? argv[3] : "full_causal";

  auto ops = rt::make_cuda_ops();
  rt::PluginRegistry reg;
  reg.scan_directory(std::filesystem::read_symlink("/proc/self/exe").parent_path());
  auto attention = reg.create_attention(backend, rt::Device::CUDA);
  rt::Options options;
  for (int i = 4; i < argc; ++i) {
    const std::string kv = argv[i];
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "expected key=value, found '%s'\n", argv[i]);
      return 2;
    }
    options.set(kv.substr(0, eq), kv.substr(eq + 1));
  }
  const rt::HfConfig cfg = rt::parse_hf_config(config);
  rt::RouterPtr router;
  if (attention->capabilities().router) {
    router = reg.create_router(options.get_string("router", "linear_sigmoid"));
    attention->attach_router(router.get());
  }
  attention->configure(options, rt::dims_from_config(cfg));
  rt::Qwen2Model model(cfg, *ops, *attention);
  model.init_random(0);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>((t * 7919 + 17) % model.dims().vocab);
  const char* train_env = std::getenv("TRACE_TRAIN");
  const bool train = train_env != nullptr && *train_env != 0 && std::string(train_env) != "0";
  rt::Qwen2Model::GradMap grads;  // the attention regime's: attention weights, norms, routers
  for (const auto& n : model.parameter_names()) {
    if (n.find("attn") == std::string::npos && n.find("norm") == std::string::npos &&
        n.find("router") == std::string::npos)
      continue;
    const rt::TensorView p = model.parameter(n);
    rt::Tensor g = p.ndim == 1 ? ops->alloc(rt::DType::F32, {p.shape[0]}) : ops->alloc(rt::DType::F32, {p.shape[0], p.shape[1]});
    ops->fill(g, 0.f);
    grads[n] = g;
  }
  rt::Tensor lm = ops->alloc(rt::DType::F32, {1});
  const char* decode_env = std::getenv("TRACE_DECODE");
  const int decode_steps = decode_env != nullptr ? std::atoi(decode_env) : 0;
  std::unique_ptr<rt::DecodeSession> session;
  if (decode_steps > 0) {
    // Four runs of decode_steps each follow (two warm-up, one thrown away, one traced).
    session = std::make_unique<rt::DecodeSession>(model, T + 4 * decode_steps + 1);
    session->prefill(ids);
  }
  int32_t next_id = 17;
  auto run = [&] {
    if (session) {
      const auto vocab = static_cast<int32_t>(model.dims().vocab);
      for (int i = 0; i < decode_steps; ++i) session->step(next_id = (next_id * 7919 + 3) % vocab);
      return;
    }
    if (!train) {
      model.forward(ids, nullptr, true);
      return;
    }
    rt::TrainContext tc;
    model.train_sequence(ids, tc, grads, false, lm);
  };

  for (int i = 0; i < 2; ++i) run();  // warm-up (per-shape choices, pool)
  ops->synchronize();
  cupti_ok(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks");
  cupti_ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels");
  cupti_ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpy");
  cupti_ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memset");
  cupti_ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "enable runtime API");
  cupti_ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER), "enable driver API");
  // One traced forward first, thrown away: CUPTI's first records (buffer requests, its own
  // setup) stall the host for ~10 ms, which would otherwise show up as an idle gap.
  run();
  ops->synchronize();
  cupti_ok(cuptiActivityFlushAll(1), "flush");
  g_acts.clear();
  g_api.clear();
  uint64_t host_t0 = 0, host_ret = 0, host_done = 0;
  cupti_ok(cuptiGetTimestamp(&host_t0), "timestamp");
  run();
  cupti_ok(cuptiGetTimestamp(&host_ret), "timestamp");
  ops->synchronize();
  cupti_ok(cuptiGetTimestamp(&host_done), "timestamp");
  cupti_ok(cuptiActivityFlushAll(1), "flush");
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMSET);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_RUNTIME);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_DRIVER);

  if (g_acts.empty()) {
    std::printf("no activity recorded\n");
    return 1;
  }
  std::sort(g_acts.begin(), g_acts.end(), [](const Activity& a, const Activity& b) { return a.start < b.start; });
  const uint64_t first = g_acts.front().start;
  uint64_t last = 0, busy = 0, cur_end = first;
  struct Gap {
    uint64_t ns;
    size_t after;  // index of the activity the gap follows
  };
  std::vector<Gap> gaps;
  size_t cur_idx = 0;
  std::map<std::string, std::pair<double, int>> per_name;
  for (size_t i = 0; i < g_acts.size(); ++i) {
    const Activity& a = g_acts[i];
    if (a.start > cur_end) gaps.push_back({a.start - cur_end, cur_idx});
    busy += a.end > std::max(a.start, cur_end) ? a.end - std::max(a.start, cur_end) : 0;
    if (a.end > cur_end) {
      cur_end = a.end;
      cur_idx = i;
    }
    last = std::max(last, a.end);
    auto& e = per_name[short_name(a.name)];
    e.first += (a.end - a.start) / 1e6;
    e.second += 1;
  }
  uint64_t idle = 0, idle_small = 0;
  for (const Gap& g : gaps) (g.ns < 5000 ? idle_small : idle) += g.ns;
  if (session)
    std::printf("%d decode steps after T=%lld (%s, %s, %s): %zu activities\n", decode_steps, static_cast<long long>(T),
                config.c_str(), backend.c_str(), rt::DecodeSession::mode_name(session->mode()), g_acts.size());
  else
    std::printf("%s T=%lld (%s, %s): %zu activities\n", train ? "training step" : "prefill", static_cast<long long>(T),
                config.c_str(), backend.c_str(), g_acts.size());
  std::printf("  host: forward() returned after %.2f ms, device done after %.2f ms\n", (host_ret - host_t0) / 1e6,
              (host_done - host_t0) / 1e6);
  std::printf("  first activity starts %.3f ms after the call\n", (first - host_t0) / 1e6);
  std::printf("  span %.2f ms = busy %.2f ms + idle %.2f ms (gaps >= 5 us: %.2f ms; smaller: %.2f ms over %zu gaps)\n",
              (last - first) / 1e6, busy / 1e6, (idle + idle_small) / 1e6, idle / 1e6, idle_small / 1e6, gaps.size());
  std::sort(gaps.begin(), gaps.end(), [](const Gap& a, const Gap& b) { return a.ns > b.ns; });
  std::printf("  longest idle gaps:\n");
  for (size_t i = 0; i < std::min<size_t>(12, gaps.size()); ++i) {
    const size_t a = gaps[i].after;
    std::printf("    %9.1f us at %8.2f ms after  %s\n%36s before %s\n", gaps[i].ns / 1e3,
                (g_acts[a].end - first) / 1e6, short_name(g_acts[a].name).c_str(), "",
                a + 1 < g_acts.size() ? short_name(g_acts[a + 1].name).c_str() : "(end)");
  }
  // The host side, in call order up to the first launch: what runs before the GPU gets work.
  std::sort(g_api.begin(), g_api.end(), [](const Activity& a, const Activity& b) { return a.start < b.start; });
  std::printf("  first host CUDA API calls:\n");
  for (size_t i = 0; i < std::min<size_t>(10, g_api.size()); ++i)
    std::printf("    at %8.3f ms, %8.1f us  %s\n", (static_cast<double>(g_api[i].start) - static_cast<double>(host_t0)) / 1e6,
                (g_api[i].end - g_api[i].start) / 1e3, g_api[i].name.c_str());
  // The host side: CUDA API calls that took long (a blocking call stalls every launch behind it).
  std::sort(g_api.begin(), g_api.end(), [](const Activity& a, const Activity& b) { return a.end - a.start > b.end - b.start; });
  double api_total = 0;
  for (const Activity& a : g_api) api_total += (a.end - a.start) / 1e6;
  std::printf("  host CUDA API: %zu calls, %.2f ms in total; the longest:\n", g_api.size(), api_total);
  for (size_t i = 0; i < std::min<size_t>(8, g_api.size()); ++i)
    std::printf("    %9.1f us at %8.2f ms  %s\n", (g_api[i].end - g_api[i].start) / 1e3,
                (static_cast<double>(g_api[i].start) - static_cast<double>(host_t0)) / 1e6, g_api[i].name.c_str());
  std::vector<std::pair<std::string, std::pair<double, int>>> names(per_name.begin(), per_name.end());
  std::sort(names.begin(), names.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  const char* top_env = std::getenv("TRACE_TOP");  // how many names to print (default 20)
  const size_t top = top_env != nullptr && std::atoi(top_env) > 0 ? static_cast<size_t>(std::atoi(top_env)) : 20;
  std::printf("  time per name (ms, calls):\n");
  for (size_t i = 0; i < std::min(top, names.size()); ++i)
    std::printf("    %9.3f %5d  %s\n", names[i].second.first, names[i].second.second, names[i].first.c_str());
  return 0;
}
