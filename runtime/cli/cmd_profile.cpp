// runtime profile: A/B timings of attention backends on one model and device.
//
// Per sequence length it measures
//   - the attention kernels alone (ops.attention) for the causal mask and, with --window, the
//     sliding-window mask: the numbers to hold against PyTorch SDPA / FlexAttention; and the
//     training pair (attention_forward_lse + attention_backward);
//   - per backend: its attention sublayer of layer 0 (norm, projections, RoPE, kernel, o_proj),
//     whole-model prefill (time to first token), greedy decode tokens/s at that context (the step
//     replayed as a CUDA graph, and op by op), KV-cache bytes and peak device memory.
// Timing: synchronize, host clock, synchronize; warm-up, then the median of --repeats.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/durable_file.h"
#include "common/flag_paths.h"
#include "common/text_table.h"
#include "cli/model_session.h"
#include "model/decode_session.h"
#include "model/random_weights.h"
#include "rt/sdk/attention_sublayer.h"
#include "dist/process_group.h"
#include "train/adamw_optimizer.h"
#include "train/grad_buffer.h"

namespace rt {

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

template <typename F>
double median_ms(Ops& ops, int repeats, F&& f) {
  f();  // warm-up
  ops.synchronize();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    ops.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ops.synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// A device tensor of normal(0, 1) values (random_parameter with stddev 1).
Tensor random_tensor(Ops& ops, DType dtype, std::initializer_list<int64_t> shape, const std::string& name) {
  Tensor t = ops.alloc(dtype, shape);
  std::vector<float> host(static_cast<size_t>(t.view.numel()));
  random_parameter(name, t.view.numel(), 7, host.data(), 1.0f);
  TensorView src = t.view;
  src.data = host.data();
  src.dtype = DType::F32;
  src.device = Device::CPU;
  ops.copy(src, t.view);
  return t;
}

size_t peak_bytes(Ops& ops) {
  if (ops.device() != Device::CPU) return ops.memory_stats().peak;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;  // process high-water mark on the CPU
}

// L2A's routed global attention at a controlled sparsity (random routing, seeded): the routed
// kernel alone, and the whole L2A attention (window over every token + compaction + routed rows),
// forward (as l2a_fused's inference runs it) and forward+backward (as its training does). FLOPs
// are counted on visible pairs: 4 D Hq sum over routed rows of (pos + 1), backward 2.5x. `causal` is the dense causal row of the same T, for the speedups.
nlohmann::json routed_kernel_row(Ops& ops, const ModelDims& d, int64_t T, double sparsity, int64_t window,
                                 int repeats, const TensorView q, const TensorView k, const TensorView v,
                                 const nlohmann::json& causal) {
  const DType act = ops.activation_dtype();
  std::vector<float> flags(static_cast<size_t>(T));
  uint64_t x = 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(T);
  double pairs = 0;
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const bool on = static_cast<double>(x >> 11) * 0x1.0p-53 >= sparsity;
    flags[static_cast<size_t>(t)] = on ? 1.f : 0.f;
    if (on) {
      ++n;
      pairs += static_cast<double>(t + 1);
    }
  }
  Tensor f = ops.alloc(ops.accum_dtype(), {T});
  ops.copy(TensorView::contiguous(flags.data(), DType::F32, Device::CPU, {T}), f);
  Tensor index = ops.alloc(DType::I32, {T}), count = ops.alloc(DType::I32, {1});
  ops.compact_rows(f, index, count);
  Tensor q_r = ops.alloc(act, {T, d.n_heads, d.head_dim});
  ops.gather_rows(q.reshaped({T, d.n_heads * d.head_dim}), index, count, q_r.view.reshaped({T, d.n_heads * d.head_dim}));
  AttentionSpec routed;
  routed.q_index = index;
  routed.q_count = count;
  // The forward as l2a_fused's inference runs it: queries read from q through the index, nothing
  // written past the count. Training keeps the gathered q and the zeros (its backward reads them).
  AttentionSpec routed_inference = routed;
  routed_inference.q_indexed = routed_inference.inactive_unwritten = true;
  AttentionSpec local;
  local.window = window;
  Tensor o = ops.alloc(act, {T, d.n_heads, d.head_dim}), o_l = ops.alloc(act, {T, d.n_heads, d.head_dim});
  Tensor lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T}), lse_l = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
  Tensor dout = random_tensor(ops, act, {T, d.n_heads, d.head_dim}, "dout");
  Tensor dq = ops.alloc(act, {T, d.n_heads, d.head_dim}), dq_l = ops.alloc(act, {T, d.n_heads, d.head_dim});
  Tensor dk = ops.alloc(act, {T, d.n_kv_heads, d.head_dim}), dv = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
  const double flops = 4.0 * pairs * d.head_dim * d.n_heads;
  const double fwd = median_ms(ops, repeats, [&] { ops.attention(q, k, v, o, routed_inference); });
  const std::string impl = ops.last_attention_impl();  // "reference" on the CPU
  const double fwd_bwd = median_ms(ops, repeats, [&] {
    ops.attention_forward_lse(q_r, k, v, o, lse, routed);
    ops.attention_backward(q_r, k, v, o, lse, dout, dq, dk, dv, routed);
  });
  // The whole L2A attention of a layer as l2a_fused runs it (parallel layout): the window over
  // every token beside the compaction and the routed rows (Ops::concurrently), and in the backward
  // the two parts' dK and dV summed.
  Tensor dk_l = ops.alloc(act, {T, d.n_kv_heads, d.head_dim}), dv_l = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
  const double l2a_fwd = median_ms(ops, repeats, [&] {
    ops.concurrently([&] { ops.attention(q, k, v, o_l, local); },
                     [&] {
                       ops.compact_rows(f, index, count);
                       ops.attention(q, k, v, o, routed_inference);
                     });
  });
  const double l2a_fwd_bwd = median_ms(ops, repeats, [&] {
    ops.concurrently([&] { ops.attention_forward_lse(q, k, v, o_l, lse_l, local); },
                     [&] {
                       ops.compact_rows(f, index, count);
                       ops.attention_forward_lse(q_r, k, v, o, lse, routed);
                     });
    ops.concurrently([&] { ops.attention_backward(q, k, v, o_l, lse_l, dout, dq_l, dk_l, dv_l, local); },
                     [&] { ops.attention_backward(q_r, k, v, o, lse, dout, dq, dk, dv, routed); });
    ops.add(dk, dk_l, dk);
    ops.add(dv, dv_l, dv);
  });
  nlohmann::json row = {{"mask", "routed"},      {"seq", T},           {"sparsity", sparsity},
                        {"routed_rows", n},      {"window", window},   {"fwd_ms", fwd},
                        {"fwd_tflops", flops / fwd / 1e9},             {"fwd_bwd_ms", fwd_bwd},
                        {"fwd_bwd_tflops", 3.5 * flops / fwd_bwd / 1e9}, {"l2a_fwd_ms", l2a_fwd},
                        {"l2a_fwd_bwd_ms", l2a_fwd_bwd},              {"impl", impl}};
  if (causal.contains("fwd_ms")) {
    row["l2a_speedup_fwd"] = causal["fwd_ms"].get<double>() / l2a_fwd;
    row["l2a_speedup_fwd_bwd"] = causal["fwd_bwd_ms"].get<double>() / l2a_fwd_bwd;
  }
  return row;
}

// One training step's forward and backward of one sequence of T tokens (no optimizer update: that
// is a fixed per-parameter cost) with the gradients of `regime`'s parameters; the time as tokens/s
// and the peak device memory. null when the regime trains nothing with this backend. Launched over
// N ranks (runtime launch): also the data-parallel step (each rank's sequence, then the gradients
// summed over ranks as the trainer sums them), its global tokens/s, and the scaling efficiency:
// tokens/s at N over N x tokens/s of one rank alone.
nlohmann::json train_step_row(Ops& ops, Qwen2Model& model, const std::string& attention, const std::string& regime,
                              const std::vector<int32_t>& ids, int repeats, dist::ProcessGroup* group) {
  std::vector<std::string> names;
  try {
    names = trainable_parameters(regime, model.parameter_names(), attention);
  } catch (const Error&) {
    return nullptr;
  }
  const GradBuffer grads(ops, model, names);
  Tensor lm = ops.alloc(ops.accum_dtype(), {1});
  TrainContext tc;
  const int64_t T = static_cast<int64_t>(ids.size());
  ops.reset_peak_memory();
  const double ms = median_ms(ops, repeats, [&] { model.train_sequence(ids, tc, grads.grads(), /*recompute=*/false, lm); });
  nlohmann::json row = {{"regime", regime}, {"step_ms", ms}, {"tok_s", T / ms * 1e3}, {"peak_memory_bytes", peak_bytes(ops)}};
  if (group && group->size() > 1) {
    const double dp_ms = median_ms(ops, repeats, [&] {
      model.train_sequence(ids, tc, grads.grads(), /*recompute=*/false, lm);
      grads.sum_over_ranks(*group);
    });
    const double n = group->size();
    row["ranks"] = group->size();
    row["dp_step_ms"] = dp_ms;
    row["dp_tok_s"] = n * T / dp_ms * 1e3;
    row["scaling_efficiency"] = ms / dp_ms;
  }
  return row;
}

// One status line, rewritten in place on a terminal; silent when stderr is a file or pipe.
// Cut to the terminal's width: a longer line would wrap, and "\r" would then redraw only its
// last part, leaving a trail of stale lines.
void progress(const std::string& what) {
  static const bool tty = isatty(STDERR_FILENO);
  if (tty)
    std::cerr << "\r\033[K" << fit_to_width("[profile] " + what, terminal_columns(STDERR_FILENO) - 1) << std::flush;
}

}  // namespace

// A/B ratios against the first backend of the run at the same length (and training regime):
// prefill_speedup = its prefill ms / this one's, decode_speedup = this decode tok/s / its, and per
// training regime step_speedup = its step ms / this one's. Nothing with a single backend.
void add_ab_ratios(nlohmann::json& out) {
  auto& rows = out["backends"];
  if (rows.empty()) return;
  const std::string first = rows[0]["backend"].get<std::string>();
  bool several = false;
  for (const auto& r : rows) several = several || r["backend"] != first;
  if (!several) return;
  out["ab_baseline"] = first;
  auto positive = [](const nlohmann::json& r, const char* key) {
    return r.contains(key) && r[key].is_number() && r[key].get<double>() > 0;
  };
  for (auto& r : rows) {
    const nlohmann::json* base = nullptr;
    for (const auto& b : rows)
      if (b["backend"] == first && b["seq"] == r["seq"]) base = &b;
    if (!base) continue;
    if (positive(*base, "prefill_ms") && positive(r, "prefill_ms"))
      r["prefill_speedup"] = (*base)["prefill_ms"].get<double>() / r["prefill_ms"].get<double>();
    if (positive(*base, "decode_tok_s") && positive(r, "decode_tok_s"))
      r["decode_speedup"] = r["decode_tok_s"].get<double>() / (*base)["decode_tok_s"].get<double>();
    if (!r.contains("train") || !base->contains("train")) continue;
    for (auto& t : r["train"]) {
      if (t.is_null() || !positive(t, "step_ms")) continue;
      for (const auto& bt : (*base)["train"])
        if (!bt.is_null() && bt["regime"] == t["regime"] && positive(bt, "step_ms"))
          t["step_speedup"] = bt["step_ms"].get<double>() / t["step_ms"].get<double>();
    }
  }
}

void register_profile(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string attention_list = "full_causal,swa";
    std::string seqs = "4096";
    int repeats = 5;
    int decode_tokens = 32;
    std::string sparsities;
    std::string train_regimes;
    bool skip_model = false;
    std::string json, csv;
  };
  auto args = std::make_shared<Args>();
  args->model.init = "random";
  CLI::App* cmd = app.add_subcommand("profile", "Time attention backends side by side: kernels, prefill, decode, memory");
  cmd->footer(
      "\nExample (GPU):\n  runtime profile --attention full_causal,swa --model qwen2.5-0.5b --init random \\\n"
      "      --seq 4096,16384,32768 --window 2048 --device cuda --json profile.json\n"
      "  python3 tools/plot_profile.py profile.json   # PNG charts: time vs sequence length\n"
      "Plugin options per backend (a bare --set key=value goes to every backend, and full_causal takes none):\n"
      "  runtime profile --attention full_causal,l2a_dense,l2a_fused --window 2048 ... \\\n"
      "      --set l2a_fused.router=fixed_rate --set l2a_fused.sparsity=0.8 --set l2a_dense.router=fixed_rate\n"
      "FLOPs: attention kernel = 4 * D * Hq * (visible query-key pairs); TFLOP/s = FLOPs / median time\n"
      "(GFLOP/s on the CPU; the JSON keeps *_tflops). A column no row has a value for is left out.");
  add_model_options(*cmd, args->model);
  cmd->remove_option(cmd->get_option("--attention"));
  cmd->add_option("--attention,-a", args->attention_list,
                  "Comma-separated attention plugins to compare; the first is the baseline of the x (speedup) columns")
      ->capture_default_str();
  cmd->add_option("--seq,-s", args->seqs, "Comma-separated sequence lengths")->capture_default_str();
  cmd->add_option("--repeats,-r", args->repeats, "Timed repeats per measurement (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--decode-tokens", args->decode_tokens, "Tokens decoded per decode measurement")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--sparsity", args->sparsities,
                  "Comma-separated L2A sparsities (fraction of tokens NOT routed, e.g. 0.5,0.8,0.9,0.95): adds routed "
                  "kernel rows (random routing) and the whole L2A attention (window + routed) against causal");
  cmd->add_option("--train", args->train_regimes,
                  "Comma-separated training regimes (router_only, attention, full): time one training forward+"
                  "backward of a --seq sequence per regime and backend (tokens/s, peak memory)");
  cmd->add_flag("--kernels-only", args->skip_model,
                "Only the attention kernels and one attention sublayer: no prefill, decode or training rows (the "
                "model is still built, for its shapes and layer 0)");
  cmd->add_option("--json", args->json, "Write the results as JSON");
  cmd->add_option("--csv", args->csv, "Write the results as CSV");
  cmd->callback([args] {
    const std::vector<std::string> backends = split(args->attention_list, ',');
    std::vector<int64_t> seqs;
    for (const auto& s : split(args->seqs, ',')) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(s, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      RT_CHECK(used > 0 && used == s.size() && v > 0, "--seq: '", s,
               "' is not a sequence length (expected positive integers separated by commas, e.g. 4096,16384)");
      seqs.push_back(v);
    }
    RT_CHECK(!backends.empty() && !seqs.empty(), "profile: give --attention and --seq");
    const std::vector<Capabilities> caps = check_backend_list(args->model, backends);
    for (const auto& regime : split(args->train_regimes, ',')) {
      RT_CHECK(regime.empty() || regime == "router_only" || regime == "attention" || regime == "full", "--train: '",
               regime, "' is not a training regime (expected router_only, attention or full)");
      // Only routed backends have router weights; an A/B list shows its other backends without the row.
      RT_CHECK(regime != "router_only" || std::any_of(caps.begin(), caps.end(), [](const Capabilities& c) { return c.router; }),
               "--train router_only: none of --attention ", args->attention_list,
               " has router weights to train (a routed backend does, e.g. l2a_dense)");
    }
    // Before minutes of measurements, not after them.
    if (!args->json.empty()) check_output_path("--json", args->json);
    if (!args->csv.empty()) check_output_path("--csv", args->csv);

    // Launched over several ranks (runtime launch): the training rows add the data-parallel step and
    // its scaling efficiency; every rank measures, rank 0 reports.
    std::unique_ptr<dist::ProcessGroup> group;
    if (const auto world = dist::world_from_env(); world && world->world_size > 1) {
      if (args->model.device == "cuda") dist::use_local_gpu(world->local_rank);
      group = dist::join_process_group(*world, args->model.device == "cuda" ? Device::CUDA : Device::CPU);
    }
    const bool lead = !group || group->rank() == 0;

    nlohmann::json out;
    out["model"] = args->model.model;
    out["device"] = args->model.device;
    out["repeats"] = args->repeats;
    out["kernels"] = nlohmann::json::array();
    out["backends"] = nlohmann::json::array();

    // One session per backend: plugins may add parameters, so each gets its own model.
    for (size_t bi = 0; bi < backends.size(); ++bi) {
      ModelOptions mo = args->model;
      mo.attention = backends[bi];
      mo.run_backends = backends;  // --set l2a_dense.key=value reaches only l2a_dense
      mo.window_has_other_use = true;  // the kernel rows' window, whatever the backends take
      progress("building " + mo.model + " for " + mo.attention);
      auto session = open_model_session(mo);
      Ops& ops = *session->ops;
      Qwen2Model& model = *session->model;
      const ModelDims& d = model.dims();
      const DType act = ops.activation_dtype();

      if (bi == 0) {  // the kernels do not depend on the backend: measure them once
        out["device_name"] = ops.description();
        std::vector<int64_t> windows = {0};
        if (args->model.window > 0) windows.push_back(args->model.window);
        for (int64_t T : seqs) {
          Tensor q = random_tensor(ops, act, {T, d.n_heads, d.head_dim}, "q");
          Tensor k = random_tensor(ops, act, {T, d.n_kv_heads, d.head_dim}, "k");
          Tensor v = random_tensor(ops, act, {T, d.n_kv_heads, d.head_dim}, "v");
          Tensor o = ops.alloc(act, {T, d.n_heads, d.head_dim});
          for (int64_t w : windows) {
            progress("kernel " + std::string(w ? "window " + std::to_string(w) : "causal") + " T=" + std::to_string(T));
            AttentionSpec spec;
            spec.window = w;
            const double flops = 4.0 * visible_pairs(T, w) * d.head_dim * d.n_heads;
            nlohmann::json row = {{"mask", w ? "window" : "causal"}, {"window", w}, {"seq", T}, {"fwd_bwd_ms", nullptr}};
            // Each implementation the backend has (RT_ATTENTION_IMPL), then its own choice.
            for (const char* impl : {"flash", "cudnn", "auto"}) {
              if (ops.device() == Device::CPU && std::string(impl) != "auto") continue;
              setenv("RT_ATTENTION_IMPL", impl, 1);
              const double ms = median_ms(ops, args->repeats, [&] { ops.attention(q, k, v, o, spec); });
              const std::string ran = ops.last_attention_impl();
              if (std::string(impl) == "auto") {
                row["fwd_ms"] = ms;
                row["fwd_tflops"] = flops / ms / 1e9;
                row["impl"] = ran;
              } else if (ran == impl) {  // cuDNN may decline a shape; then there is no cuDNN number
                row[std::string("fwd_ms_") + impl] = ms;
              }
            }
            unsetenv("RT_ATTENTION_IMPL");
            // Training: the forward that keeps lse, then the backward (each the backend's own
            // per-shape choice). Backward FLOPs = 2.5x forward (dV, dP, dQ, dK GEMMs + recompute).
            progress("kernel fwd+bwd " + std::string(w ? "window " + std::to_string(w) : "causal") + " T=" +
                     std::to_string(T));
            Tensor lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
            Tensor dout = random_tensor(ops, act, {T, d.n_heads, d.head_dim}, "dout");
            Tensor dq = ops.alloc(act, {T, d.n_heads, d.head_dim});
            Tensor dk = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
            Tensor dv = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
            const double fb = median_ms(ops, args->repeats, [&] {
              ops.attention_forward_lse(q, k, v, o, lse, spec);
              ops.attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec);
            });
            row["fwd_bwd_ms"] = fb;
            row["fwd_bwd_tflops"] = 3.5 * flops / fb / 1e9;
            out["kernels"].push_back(row);
          }
          const nlohmann::json causal = out["kernels"][out["kernels"].size() - windows.size()];
          for (const auto& sp : split(args->sparsities, ',')) {
            if (sp.empty()) continue;
            const double s = std::stod(sp);
            RT_CHECK(s >= 0 && s <= 1, "--sparsity: expected fractions in [0, 1], found '", sp, "'");
            progress("kernel routed sparsity " + sp + " T=" + std::to_string(T));
            out["kernels"].push_back(
                routed_kernel_row(ops, d, T, s, args->model.window, args->repeats, q, k, v, causal));
          }
        }
      }

      for (int64_t T : seqs) {
        nlohmann::json row = {{"backend", mo.attention}, {"seq", T}, {"options", session->attention_options.all()}};
        // Attention sublayer of layer 0, from the same input every repeat.
        progress(mo.attention + " sublayer T=" + std::to_string(T));
        Tensor x0 = random_tensor(ops, DType::F32, {T, d.hidden}, "x");
        Tensor x = ops.alloc(DType::F32, {T, d.hidden});
        const double sub_ms = median_ms(ops, args->repeats, [&] {
          ops.copy(x0, x);
          model.attention_layer_forward(0, x);
        });
        const double flops = session->attention->forward_flops(d, T);
        row["sublayer_fwd_ms"] = sub_ms;
        row["sublayer_fwd_tflops"] = flops > 0 ? nlohmann::json(flops / sub_ms / 1e9) : nlohmann::json(nullptr);

        if (!args->skip_model) {
          std::vector<int32_t> ids(static_cast<size_t>(T));
          for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>((t * 7919 + 17) % d.vocab);
          ops.reset_peak_memory();
          progress(mo.attention + " prefill T=" + std::to_string(T));
          const double prefill_ms =
              median_ms(ops, std::min(args->repeats, 3), [&] { model.forward(ids, nullptr, /*last_only=*/true); });
          row["prefill_ms"] = prefill_ms;
          row["prefill_tok_s"] = T / prefill_ms * 1e3;

          if (session->attention->capabilities().decode && T + 4 + args->decode_tokens <= d.max_positions) {
            // A greedy loop (step, argmax to the host, next step) after a prefill of T tokens, through
            // DecodeSession: the captured step replayed (CUDA graphs), then the same step op by op.
            // A few untimed steps first: the graph is captured and the allocator pool settles.
            const int warmup = 4;
            for (const bool graphs : {true, false}) {
              progress(mo.attention + " decode at T=" + std::to_string(T) + (graphs ? "" : " (eager)"));
              DecodeSession decoder(model, T + warmup + args->decode_tokens, graphs);
              int32_t next = static_cast<int32_t>(ops.argmax(decoder.prefill(ids)));
              for (int i = 0; i < warmup; ++i) next = static_cast<int32_t>(ops.argmax(decoder.step(next)));
              ops.synchronize();
              const auto t0 = std::chrono::steady_clock::now();
              for (int i = 0; i < args->decode_tokens; ++i) next = static_cast<int32_t>(ops.argmax(decoder.step(next)));
              ops.synchronize();
              const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
              row[graphs ? "decode_tok_s" : "decode_eager_tok_s"] = args->decode_tokens / s;
              if (graphs) {
                row["decode_mode"] = DecodeSession::mode_name(decoder.mode());
                row["kv_cache_bytes"] = decoder.kv_bytes();
                const DecodeSession::Routing routing = decoder.routing();  // warmup and timed steps
                if (routing.steps > 0)
                  row["decode_routed_share"] =
                      static_cast<double>(routing.routed) / static_cast<double>(routing.steps);
              }
            }
          } else {
            row["decode_tok_s"] = nullptr;
            row["decode_eager_tok_s"] = nullptr;
            row["decode_mode"] = nullptr;
            row["kv_cache_bytes"] = nullptr;
          }
          row["peak_memory_bytes"] = peak_bytes(ops);
          nlohmann::json train = nlohmann::json::array();
          for (const auto& regime : split(args->train_regimes, ',')) {
            if (regime.empty()) continue;
            progress(mo.attention + " train " + regime + " T=" + std::to_string(T));
            train.push_back(train_step_row(ops, model, mo.attention, regime, ids, std::min(args->repeats, 3), group.get()));
          }
          if (!train.empty()) row["train"] = train;
        }
        out["backends"].push_back(row);
      }
    }
    if (isatty(STDERR_FILENO)) std::cerr << "\r\033[K";
    if (!lead) return;

    auto num = [](const nlohmann::json& j, int prec) {
      if (j.is_null()) return std::string("-");
      std::ostringstream s;
      s << std::fixed << std::setprecision(prec) << j.get<double>();
      return s.str();
    };
    // FLOP rates: TFLOP/s on a GPU; on the CPU, where a kernel reaches a few GFLOP/s and TFLOP/s
    // would print a column of 0.0, GFLOP/s. Three significant digits either way.
    const bool gflops = args->model.device == "cpu";
    const std::string rate_unit = gflops ? "GFLOP/s" : "TFLOP/s";
    auto rate = [&](const nlohmann::json& r, const char* key) {
      if (!r.contains(key) || r[key].is_null()) return std::string("-");
      const double v = r[key].get<double>() * (gflops ? 1e3 : 1.0);
      std::ostringstream s;
      if (v >= 100) s << std::fixed << std::setprecision(0) << v;
      else if (v >= 10) s << std::fixed << std::setprecision(1) << v;
      else if (v >= 1) s << std::fixed << std::setprecision(2) << v;
      else s << std::setprecision(3) << v;
      return s.str();
    };
    // The tables go to stdout, unless stdout carries the JSON or CSV ("-").
    std::ostream& report = is_stdout_path(args->json) || is_stdout_path(args->csv) ? std::cerr : std::cout;
    using Col = TextTable::Column;
    const auto L = TextTable::Align::Left;
    // Column widths come from the widest cell (a long plugin name widens the backend column);
    // columns no row has a value for (cuDNN on the CPU, a FLOP rate no backend counts) are left out.
    report << "Attention kernels (" << args->model.model << ", " << out["device_name"].get<std::string>() << ", median of "
              << args->repeats << ")\n";
    TextTable kernels({Col{"mask", L}, Col{"seq"}, Col{"fwd ms"}, Col{rate_unit, TextTable::Align::Right, true},
                       Col{"impl"}, Col{"flash ms", TextTable::Align::Right, true},
                       Col{"cudnn ms", TextTable::Align::Right, true}, Col{"fwd+bwd ms"},
                       Col{rate_unit, TextTable::Align::Right, true}});
    for (const auto& k : out["kernels"]) {
      const std::string mask = k["mask"] == "window" ? "window " + std::to_string(k["window"].get<int64_t>())
                               : k["mask"] == "routed" ? "routed " + num(k["sparsity"], 2)
                                                       : "causal";
      kernels.add_row({mask, std::to_string(k["seq"].get<int64_t>()), num(k["fwd_ms"], 3), rate(k, "fwd_tflops"),
                       k["impl"].get<std::string>(), k.contains("fwd_ms_flash") ? num(k["fwd_ms_flash"], 3) : "-",
                       k.contains("fwd_ms_cudnn") ? num(k["fwd_ms_cudnn"], 3) : "-", num(k["fwd_bwd_ms"], 3),
                       rate(k, "fwd_bwd_tflops")});
    }
    report << kernels.str();
    bool any_routed = false;
    for (const auto& k : out["kernels"]) any_routed = any_routed || k["mask"] == "routed";
    if (any_routed) {
      report << "\nL2A attention (window " << args->model.window
                << " over every token + routed rows) against dense causal attention\n";
      TextTable l2a({Col{"sparsity", L}, Col{"seq"}, Col{"routed"}, Col{"fwd ms"}, Col{"speedup"}, Col{"fwd+bwd ms"},
                     Col{"speedup"}});
      for (const auto& k : out["kernels"]) {
        if (k["mask"] != "routed") continue;
        auto get = [&](const char* key, int prec) { return k.contains(key) ? num(k[key], prec) : std::string("-"); };
        l2a.add_row({num(k["sparsity"], 2), std::to_string(k["seq"].get<int64_t>()),
                     std::to_string(k["routed_rows"].get<int64_t>()), get("l2a_fwd_ms", 3), get("l2a_speedup_fwd", 2),
                     get("l2a_fwd_bwd_ms", 3), get("l2a_speedup_fwd_bwd", 2)});
      }
      report << l2a.str();
    }
    add_ab_ratios(out);
    report << "\nBackends\n";
    const auto R = TextTable::Align::Right;
    TextTable backends_table({Col{"backend", L}, Col{"seq"}, Col{"sublayer ms"}, Col{rate_unit, R, true},
                              Col{"prefill ms"}, Col{"prefill x", R, true}, Col{"decode tok/s"},
                              Col{"decode x", R, true}, Col{"routed %"}, Col{"eager tok/s"}, Col{"KV MiB"},
                              Col{"peak MiB"}});
    for (const auto& r : out["backends"]) {
      auto mib = [&](const char* key) {
        return r.contains(key) && !r[key].is_null() ? num(nlohmann::json(r[key].get<double>() / (1 << 20)), 1)
                                                     : std::string("-");
      };
      auto get = [&](const char* key, int prec) { return r.contains(key) ? num(r[key], prec) : std::string("-"); };
      const std::string routed = r.contains("decode_routed_share")
                                     ? num(nlohmann::json(100.0 * r["decode_routed_share"].get<double>()), 1)
                                     : std::string("-");
      backends_table.add_row({r["backend"].get<std::string>(), std::to_string(r["seq"].get<int64_t>()),
                              get("sublayer_fwd_ms", 3), rate(r, "sublayer_fwd_tflops"), get("prefill_ms", 2),
                              get("prefill_speedup", 2), get("decode_tok_s", 1), get("decode_speedup", 2), routed,
                              get("decode_eager_tok_s", 1), mib("kv_cache_bytes"), mib("peak_memory_bytes")});
    }
    report << backends_table.str();
    if (out.contains("ab_baseline"))
      report << "\n(x: speedup against " << out["ab_baseline"].get<std::string>()
             << " at the same length: its time / this one's, this rate / its)\n";
    bool any_train = false;
    for (const auto& r : out["backends"]) any_train = any_train || r.contains("train");
    if (any_train) {
      report << "\nTraining step (forward + backward of one sequence, no optimizer update)\n";
      std::vector<Col> cols = {Col{"backend", L}, Col{"seq"},     Col{"regime"},          Col{"step ms"},
                               Col{"tok/s"},      Col{"step x", R, true}, Col{"peak MiB"}};
      if (group) {  // the data-parallel step over every rank, and how well it scales
        cols.push_back(Col{"ranks"});
        cols.push_back(Col{"DP step ms"});
        cols.push_back(Col{"DP tok/s"});
        cols.push_back(Col{"scaling"});
      }
      TextTable train(cols);
      for (const auto& r : out["backends"]) {
        if (!r.contains("train")) continue;
        for (const auto& t : r["train"]) {
          if (t.is_null()) continue;
          std::vector<std::string> cells = {r["backend"].get<std::string>(), std::to_string(r["seq"].get<int64_t>()),
                                            t["regime"].get<std::string>(), num(t["step_ms"], 1), num(t["tok_s"], 0),
                                            t.contains("step_speedup") ? num(t["step_speedup"], 2) : "-",
                                            num(nlohmann::json(t["peak_memory_bytes"].get<double>() / (1 << 20)), 1)};
          if (group) {
            cells.push_back(t.contains("ranks") ? t["ranks"].dump() : "-");
            cells.push_back(t.contains("dp_step_ms") ? num(t["dp_step_ms"], 1) : "-");
            cells.push_back(t.contains("dp_tok_s") ? num(t["dp_tok_s"], 0) : "-");
            cells.push_back(t.contains("scaling_efficiency") ? num(t["scaling_efficiency"], 2) : "-");
          }
          train.add_row(cells);
        }
      }
      report << train.str();
      if (out.contains("ab_baseline"))
        report << "\n(step x: against " << out["ab_baseline"].get<std::string>() << " at the same length and regime)\n";
    }
    if (!args->json.empty()) {
      with_flag("--json", args->json, [&] { write_file_atomic(args->json, out.dump(1) + "\n"); });
    }
    if (!args->csv.empty()) {
      std::ostringstream f;
      f << "section,name,seq,fwd_ms,fwd_tflops,prefill_ms,decode_tok_s,kv_cache_bytes,peak_memory_bytes,fwd_bwd_ms,"
           "fwd_bwd_tflops,decode_eager_tok_s\n";
      auto cell = [](const nlohmann::json& r, const char* key) {
        return r.contains(key) && !r[key].is_null() ? r[key].dump() : std::string();
      };
      for (const auto& k : out["kernels"])
        f << "kernel," << (k["mask"] == "window" ? "window" + k["window"].dump() : "causal") << "," << k["seq"] << ","
          << cell(k, "fwd_ms") << "," << cell(k, "fwd_tflops") << ",,,,," << cell(k, "fwd_bwd_ms") << ","
          << cell(k, "fwd_bwd_tflops") << ",\n";
      for (const auto& r : out["backends"])
        f << "backend," << r["backend"].get<std::string>() << "," << r["seq"] << "," << cell(r, "sublayer_fwd_ms")
          << "," << cell(r, "sublayer_fwd_tflops") << "," << cell(r, "prefill_ms") << "," << cell(r, "decode_tok_s")
          << "," << cell(r, "kv_cache_bytes") << "," << cell(r, "peak_memory_bytes") << ",,," << cell(r, "decode_eager_tok_s")
          << "\n";
      with_flag("--csv", args->csv, [&] { write_file_atomic(args->csv, f.str()); });
    }
  });
}

}  // namespace rt
