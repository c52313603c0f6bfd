// runtime train: fine-tune a model with any attention backend in one of the three regimes.
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/model_session.h"
#include "common/flag_paths.h"
#include "dist/process_group.h"
#include "train/trainer.h"

namespace rt {



void register_train(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string config, data, val_data, out, tokenizer;
    int64_t steps = 0;
    int64_t stop_at = 0;
    bool resume = false, quiet = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Train a model (router_only, attention or full regime) and export the result to OUT/model");
  cmd->footer(
      "\nThe TOML config has a [train] section (regime, seq_len, batch_size, lr, warmup_steps, min_lr_ratio,\n"
      "weight_decay, beta1, beta2, eps, clip_norm, seed, shuffle, recompute, checkpoint_every,\n"
      "checkpoint_minutes, keep_checkpoints, log_every, eval_every, val_sequences, collapse_*,\n"
      "max_nonfinite_steps)\n"
      "and an [attention] section with the plugin's options (L2A: layout, window, tau, threshold,\n"
      "force_local, rope_theta, leak_prob, lambda, reg_norm, lambda_schedule, router). --set overrides\n"
      "either: --set train.lr=3e-4 --set attention.window=512 (a bare key goes to [train] if it is a train\n"
      "key, else to [attention]). --set BACKEND.key=value is an [attention] option for that backend only,\n"
      "e.g. --attention l2a_dense --set l2a_dense.router=fixed_rate --set l2a_dense.sparsity=0.8.\n\n"
      "Data: .txt or .jsonl (field \"text\") tokenized with the model's tokenizer, or .bin (little-endian\n"
      "uint32 ids). Writes OUT/metrics.jsonl (one JSON object per step), OUT/checkpoints/ (atomic; --resume\n"
      "continues bit-identically from the newest) and, after the last step, OUT/model (loads with --model).\n"
      "A checkpoint is written every checkpoint_every steps (default 100) or checkpoint_minutes of wall time\n"
      "(default 30), whichever comes first, and on Ctrl-C / SIGTERM after the step in progress (exit code\n"
      "130 / 143; a second signal stops at once); the newest keep_checkpoints (default 2) are kept.\n"
      "A step whose loss or gradient is NaN/Inf is skipped (no update; \"skipped\": true in metrics.jsonl);\n"
      "max_nonfinite_steps (default 3) such steps in a row stop the run with an error naming the first\n"
      "parameter whose gradient went non-finite. When stderr is not a terminal, a progress line is printed\n"
      "every log_every steps (default 0: every ~5% of the run or 30 s).\n\n"
      "--val-data FILE (same formats as --data): every eval_every steps (default: checkpoint_every, or 100\n"
      "when that is 0; 0: none) and at the last step, the mean next-token loss over val_sequences (default\n"
      "32) fixed sequences of seq_len tokens spread over FILE is logged as val_loss and val_ppl in that\n"
      "step's metrics.jsonl row (the language-model loss only, without the L2A regularizer).\n"
      "--resume checks that --data has the size and the head and tail (crc32 of the first and last MiB)\n"
      "of the data the checkpoint was trained on; its path may differ.\n\n"
      "Examples:\n"
      "  runtime train --model qwen2.5-0.5b --attention l2a_dense --config configs/l2a_router_only.toml \\\n"
      "      --data ../shared/data/wikitext-2/valid.txt --steps 500 --out runs/router --device cuda\n"
      "  runtime train ... --stop-at 100      # stop after step 100 as if interrupted\n"
      "  runtime train ... --resume           # continue from the last checkpoint in --out");
  add_model_options(*cmd, args->model);
  cmd->add_option("--config,-c", args->config, "Training config (TOML); omitted: the built-in defaults");
  cmd->add_option("--data,-d", args->data, "Training data: .txt, .jsonl (field text) or .bin (uint32 ids)")
      ->required();
  cmd->add_option("--val-data", args->val_data,
                  "Held-out validation data (same formats as --data): val_loss/val_ppl every train.eval_every steps");
  cmd->add_option("--steps", args->steps, "Optimizer steps in the whole run (schedules span them)")
      ->required()
      ->check(at_least(1));
  cmd->add_option("--out,-o", args->out, "Run directory: metrics, checkpoints, exported model")->required()->check(non_empty_path());
  cmd->add_option("--stop-at", args->stop_at, "Stop after this step as if interrupted (a checkpoint is written)")
      ->check(at_least(1));
  cmd->add_flag("--resume", args->resume, "Continue from the newest checkpoint in --out");
  cmd->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json / tokenizer.model / directory for text data (default: the model directory's)");
  cmd->add_flag("--quiet,-q", args->quiet, "No progress bar");
  cmd->callback([args] {
    // Unscoped --set (train.lr=..., attention.window=..., bare keys) goes through the config; a
    // backend-scoped one (l2a_dense.router=...) goes to the session, which checks its scope
    // against the backend and applies it over the config's [attention] options.
    // Paths first, each named by its flag: a run must not train for an hour and then fail on them.
    check_input_path("--data", args->data, false);
    if (!args->val_data.empty()) check_input_path("--val-data", args->val_data, false);
    if (!args->tokenizer.empty()) check_input_path("--tokenizer", args->tokenizer, true);
    {
      std::error_code ec;
      RT_CHECK(!std::filesystem::exists(args->out, ec) || std::filesystem::is_directory(args->out, ec), "--out ",
               args->out, ": exists and is not a directory (the run directory holds metrics, checkpoints and the "
               "exported model)");
    }
    const std::vector<SetOption> sets = parse_set_options(args->model.set);
    std::vector<std::string> config_sets, scoped_sets;
    for (const SetOption& s : sets) (s.scope.empty() ? config_sets : scoped_sets).push_back(s.arg);
    TrainConfig cfg = args->config.empty() ? parse_train_config("", "<built-in defaults>", config_sets)
                                           : load_train_config(args->config, config_sets);
    if (args->model.window > 0 && cfg.attention.count("window") &&
        cfg.attention.at("window") != std::to_string(args->model.window))
      fail("--window ", args->model.window, " disagrees with window = ", cfg.attention.at("window"), " in ",
           cfg.source, " [attention] (or --set attention.window); give one of them");
    ModelOptions mo = args->model;
    mo.set.clear();
    for (const auto& [k, v] : cfg.attention) mo.set.push_back(k + "=" + v);
    mo.set.insert(mo.set.end(), scoped_sets.begin(), scoped_sets.end());
    // Data parallelism: the world of the launcher that started this process (runtime launch,
    // torchrun, mpirun, srun), if any; each rank drives the GPU of its local rank.
    const std::optional<dist::WorldInfo> world = dist::world_from_env();
    const bool parallel = world && world->world_size > 1;
    if (parallel && mo.device == "cuda") dist::use_local_gpu(world->local_rank);
    auto session = open_model_session(mo);
    std::unique_ptr<dist::ProcessGroup> group;
    if (parallel) group = dist::join_process_group(*world, session->ops->device());
    const bool lead = !group || group->rank() == 0;
    // The scoped options this backend took are part of the run's config (record, resume hash).
    for (const SetOption& s : sets)
      if (s.scope == session->attention_name) cfg.attention[s.key] = s.value;
    std::unique_ptr<Tokenizer> tok;
    const bool text_data = std::filesystem::path(args->data).extension().string() != ".bin";
    const bool text_val =
        !args->val_data.empty() && std::filesystem::path(args->val_data).extension().string() != ".bin";
    if (text_data || text_val) {
      std::filesystem::path src = args->tokenizer;
      if (src.empty()) {
        RT_CHECK(!session->model_dir.empty(), "train: ", text_data ? args->data : args->val_data,
                 " is text and the model has no directory to take a tokenizer from; pass --tokenizer");
        src = session->model_dir;
      }
      tok = with_flag(args->tokenizer.empty() ? "" : "--tokenizer", src.string(), [&] { return load_tokenizer(src); });
    }
    TrainRun run;
    run.data = args->data;
    run.val_data = args->val_data;
    run.out = args->out;
    run.steps = args->steps;
    if (args->stop_at > 0) run.stop_at = args->stop_at;
    run.resume = args->resume;
    run.attention = session->attention_name;
    run.attention_options = session->attention_options;
    for (const PluginInfo& p : session->registry.plugins())
      if (p.kind == PluginKind::Attention && p.caps.config_section != nullptr) run.backend_sections.push_back(p.caps.config_section);
    run.model_dir = session->model_dir;
    run.model_name = session->model_name;
    run.quiet = args->quiet || !lead;
    run.handle_signals = true;
    run.group = group.get();
    const TrainSummary s = run_training(*session->ops, *session->model, cfg, run, tok.get());
    if (s.interrupted_by != 0) {
      const char* sig = s.interrupted_by == SIGTERM ? "SIGTERM" : "SIGINT";
      if (lead && !s.last_checkpoint.empty())
        std::cerr << "interrupted at step " << s.last_step << " (" << sig << "): checkpoint written to "
                  << s.last_checkpoint.string() << "; resume with the same command plus --resume" << std::endl;
      else if (lead)
        std::cerr << "interrupted (" << sig << ") before any step of this run finished: no new checkpoint (--resume "
                  << "continues from the newest one in --out, if there is one)" << std::endl;
      std::cout.flush();
      // The conventional 128 + signal, without going through the error path (this is not a failure
      // of the run, and the checkpoint is complete).
      std::exit(128 + s.interrupted_by);
    }
    if (lead && s.last_step >= s.first_step)
      std::cerr << "trained steps " << s.first_step << ".." << s.last_step << ", last loss " << s.last_loss << "\n";
    if (s.collapsed && cfg.collapse_action == CollapseAction::Stop)
      fail("train: stopped by the collapse detector at step ", s.last_step, " (see above; checkpoint written)");
  });
}

}  // namespace rt
