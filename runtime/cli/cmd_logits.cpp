// runtime logits: full-sequence logits as a float32 .npy [T, vocab], for parity checks.
#include <cstring>
#include <iostream>

#include "cli/commands.h"
#include "cli/model_session.h"
#include "common/flag_paths.h"
#include "common/npy.h"

namespace rt {

void register_logits(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string ids;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "logits", "Run one forward pass over token ids and write the logits [T, vocab] as float32 .npy");
  cmd->footer(
      "\nExample:\n  runtime logits --model models/qwen2.5-0.5b --ids 9707,11,1879 --out logits.npy\n"
      "  python3 -c \"import numpy; print(numpy.load('logits.npy').shape)\"");
  add_model_options(*cmd, args->model);
  cmd->add_option("--ids", args->ids, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--out,-o", args->out, "Output .npy file")->required();
  cmd->callback([args] {
    const std::vector<int32_t> ids = parse_ids(args->ids, "--ids");
    check_output_path("--out", args->out);  // before the model is loaded and run
    auto session = open_model_session(args->model);
    Tensor logits = session->model->forward(ids, nullptr, /*last_only=*/false);
    const int64_t T = logits.view.shape[0], V = logits.view.shape[1];
    std::vector<float> host(static_cast<size_t>(T * V));
    session->ops->copy(logits.view, TensorView::contiguous(host.data(), DType::F32, Device::CPU, {T, V}));
    with_flag("--out", args->out, [&] { write_npy_f32(args->out, host.data(), {T, V}); });
    std::cerr << "wrote " << args->out << ": logits [" << T << ", " << V << "] (" << session->model_name
              << ", attention " << session->attention_name << ")\n";
  });
}

}  // namespace rt
