#!/usr/bin/env python3
"""Build the `runtime eval` parity fixtures under tests/fixtures/eval/ with lm-evaluation-harness.

    python3 tools/make_eval_fixtures.py            # regenerates everything (deterministic, CPU only)
    python3 tools/make_eval_fixtures.py --skip-lm-eval   # model, data and task files only

Needs torch, transformers and lm-eval 0.4.13 with the HF backend (`pip install "lm-eval[hf]==0.4.13"`).
Nothing is downloaded: lm-eval reads the local JSON-lines files through `dataset_path: json`.

What it writes:

    model/             a random Qwen2ForCausalLM (fixed seed) with the real Qwen2.5 vocabulary
                       (151,936): hidden 16, 2 layers, 2 heads / 1 KV head (head_dim 8), inter 32,
                       tied embeddings, float32 safetensors, plus the shared Qwen2.5 tokenizer.json
                       and tokenizer_config.json (AutoTokenizer loads the directory as it is)
    data/              items in the Hugging Face row formats: hellaswag.jsonl (Rowan/hellaswag,
                       label a string), piqa.jsonl (label an int), arc_challenge.jsonl and
                       arc_easy.jsonl (allenai/ai2_arc), wikitext.jsonl ({"page": ...}, three
                       WikiText-2 articles in the raw style), ppl.txt (WikiText-2 test text)
    tasks/             lm-eval task YAMLs reading data/ (`dataset_path: json`, `data_files`), with
                       the official 0.4.13 definitions (doc_to_text / doc_to_target / doc_to_choice,
                       metrics); hellaswag_utils.py and preprocess_wikitext.py are byte copies of
                       the installed lm-eval's tasks/hellaswag/utils.py and
                       tasks/wikitext/preprocess_wikitext.py
    reference.json     lm-eval's metrics per task and, per document, the target, the per-choice
                       summed log-likelihoods (choice order), is_greedy, the exact context and
                       continuation strings of every request and their token ids (lm-eval's
                       _encode_pair); for wikitext the per-page rolling log-likelihood with its
                       windows (max_length 64); and the token perplexity of ppl.txt computed
                       directly with transformers (HF "perplexity of fixed-length models") at
                       (seq 32, stride 32) and (seq 32, stride 16)

lm-eval runs as a subprocess (batch size 1, fp32, CPU, --log_samples), twice: the multiple-choice
tasks with the model's max length (max_position_embeddings = 512, longer than any item), and
wikitext with max_length=64 so that every page spans several windows. Every log-likelihood that
lm-eval reports is recomputed here from the token ids with transformers and must agree (1e-5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
import transformers  # noqa: E402
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import randomize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "eval"
SHARED = ROOT.parent / "shared" / "data"
TOKENIZER_DIR = SHARED / "qwen2.5-tokenizer"
WIKITEXT_TEST = SHARED / "wikitext-2" / "test.txt"

LM_EVAL_VERSION = "0.4.13"
SEED = 2012
MC_TASKS = ["hellaswag", "piqa", "arc_challenge", "arc_easy"]
WIKITEXT_MAX_LENGTH = 64
PPL_RUNS = [(32, 32), (32, 16)]          # (seq, stride)
SELF_CHECK_TOL = 1e-5                    # our recomputation vs lm-eval, relative
MODEL_SPEC = dict(
    vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
    rope_theta=1e6, rms_norm_eps=1e-6,
)
QWEN_EOS = 151643                        # <|endoftext|>: Qwen2.5 base bos_token_id / eos_token_id


def rel(a: str | Path) -> str:
    return str(Path(a).resolve().relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# Model


def build_model(d: Path) -> dict:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    s = MODEL_SPEC
    cfg = Qwen2Config(
        vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_key_value_heads"],
        max_position_embeddings=s["max_position_embeddings"], rms_norm_eps=s["rms_norm_eps"],
        rope_parameters={"rope_theta": float(s["rope_theta"]), "rope_type": "default"},
        tie_word_embeddings=True, use_sliding_window=False,
        sliding_window=s["max_position_embeddings"], max_window_layers=s["num_hidden_layers"],
        hidden_act="silu", initializer_range=0.02, attention_dropout=0.0,
        bos_token_id=QWEN_EOS, eos_token_id=QWEN_EOS, use_cache=True, attn_implementation="eager",
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).eval()
    randomize(model, SEED)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.to(torch.float32).save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / f, d / f)
    for f in d.iterdir():
        f.chmod(0o644)
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert shards == ["model.safetensors"], shards
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    return dict(config=dict(s, tie_word_embeddings=True, head_dim=head_dim, dtype="float32",
                            seed=SEED))


def load_model(d: Path) -> Qwen2ForCausalLM:
    m = Qwen2ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


# ---------------------------------------------------------------------------------------------
# Items (Hugging Face row formats)


def hellaswag_rows() -> list[dict]:
    """Rowan/hellaswag rows. `ctx` is ctx_a + " " + ctx_b as in the dataset (ctx_a when ctx_b is
    empty); lm-eval rebuilds it from ctx_a and ctx_b.capitalize() and ignores `ctx`."""
    R = []

    def add(ind, activity, ctx_a, ctx_b, endings, label, source, split_type="indomain"):
        assert len(endings) == 4
        R.append(dict(ind=ind, activity_label=activity, ctx_a=ctx_a, ctx_b=ctx_b,
                      ctx=(ctx_a + " " + ctx_b) if ctx_b else ctx_a, endings=endings,
                      source_id=source, split="val", split_type=split_type, label=str(label)))

    # 0: plain ActivityNet row, lower-case ctx_b.
    add(24, "Roof shingle removal", "A man is sitting on a roof.", "he",
        ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
         "is holding a rubik's cube.", "starts pulling up roofing on a roof."], 3,
        "activitynet~v_-JhWjGDPHMY")
    # 1: WikiHow row: " [title]" markers, [header]/[step]/[substeps] brackets, empty ctx_b.
    add(4051, "Home and Garden",
        "[header] How to clean a cast iron pan [title] Rinse the pan with hot water. [step] "
        "Avoid dish soap, which strips the seasoning.", "",
        ["[substeps] Scrub any stuck food with coarse salt and a folded paper towel.",
         "Put the pan in the dishwasher on the hottest setting. [title] Let it air dry.",
         "[title] Leave the pan to soak overnight. [step] Rust will form within hours.",
         "Dry the pan over low heat on the stove, then rub in a thin coat of oil."], 0,
        "wikihow~6621", "zeroshot")
    # 2: upper case in the middle of ctx_b: capitalize() lower-cases "NBA", "Them", "Dribble".
    add(311, "Playing basketball", "A coach stands in the middle of a gym with a group of kids.",
        "the coach from the NBA shows Them how to Dribble",
        ["the ball between their legs while running down the court.",
         "a cake for the party after the game.", "the ball and then the kids try it themselves.",
         "in front of the camera and waves to the crowd."], 2, "activitynet~v_5Bj3eWwRL_A")
    # 3: double and triple spaces (one pass of "  " -> " " leaves a double space from a triple),
    #    brackets in the middle of a sentence whose removal leaves a double space.
    add(1207, "Cleaning windows", "A woman sprays  the window with a blue liquid.",
        "she wipes it [quickly] with   a cloth",
        ["and then sprays  the mirror next to it.", "while her dog watches from the couch.",
         "and then   climbs a ladder to reach the top.", "off the window and throws it away."], 0,
        "activitynet~v_cFHkQ0NCY3w")
    # 4: ctx_b starting with a quote: capitalize() leaves '"' and lower-cases the rest ("OK").
    #    Non-ASCII characters (acc_norm divides by the character count, not bytes).
    add(5120, "Making a crème brûlée", "A chef torches the sugar on top of a custard.",
        '"OK, now we wait," she says to the camera',
        ["and the café audience applauds — loudly.", "and puts the ramekin in the fridge.",
         "before cracking the caramel with a spoon.", "while the oven timer beeps twice."], 3,
        "activitynet~v_bM8HVqEzvVQ")
    # 5: WikiHow row whose ctx_b is " [title]"-ended: the query ends in ". " after preprocess
    #    (strip comes first), so the trailing space moves to the continuation.
    add(8802, "Sports and Fitness",
        "[header] How to prepare for a long hike [title] Check the weather forecast. [step] "
        "Pack enough water for the whole trip.", "[title]",
        ["Wear shoes that you have already broken in.", "Buy a new tent the morning of the hike.",
         "[step] Leave your map at home, you will not need it.",
         "Tell a friend where you are going and when you will be back."], 3,
        "wikihow~30141", "zeroshot")
    # 6: ctx_b starting with a digit and holding capitals; endings with outer whitespace.
    add(2290, "Rock climbing", "A climber chalks her hands at the base of a cliff.",
        "2 Friends hold the Rope below her",
        [" as she starts to climb the first section. ", "and eat sandwiches on the grass.",
         "  while a helicopter lands on the top.", "and she falls asleep against the wall. "], 0,
        "activitynet~v_Zu8Qb6KzFj8")
    # 7: [bracketed] text inside the context and the endings, a " [title]" in an ending.
    add(9931, "Food and Entertaining",
        "[header] How to make iced tea [title] Boil four cups of water. [step] Remove the pot "
        "from the heat [substeps] once the water reaches a rolling boil.", "add the Tea Bags",
        ["[step] Steep for five minutes, then remove the bags.",
         "and put the pot back on the heat for an hour. [title] Serve hot.",
         "to the freezer and wait [about] a week.", "[title] Pour the tea over the ice cubes."], 0,
        "wikihow~71622", "zeroshot")
    return R


def piqa_rows() -> list[dict]:
    items = [
        ("How do I ready a guinea pig cage for it's new occupants?",
         "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper "
         "strips, you will also need to supply it with a water bottle and a food dish.",
         "Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
         "jeans material, you will also need to supply it with a water bottle and a food dish.", 0),
        ("To keep a cutting board from sliding on the counter,",
         "place a damp paper towel under it.", "place a dry ice cube under it.", 0),
        ("Remove a stripped screw.",
         "Press a wide rubber band between the screwdriver and the screw head, then turn slowly.",
         "Press a wide rubber band between the screwdriver and the screw head, then hammer it in.", 0),
        ("How to make a quick \"ice pack\" for a bruise?",
         "Wet a sponge, seal it in a zip bag and freeze it.",
         "Wet a sponge, seal it in a zip bag and microwave it for two minutes.", 0),
        ("Keep brown sugar soft.",
         "Store it in a paper bag in the oven.",
         "Store it in an airtight jar with a slice of bread.", 1),
        ("To sharpen a pencil without a sharpener, you can",
         "rub the tip on a piece of fine sandpaper while turning it.",
         "rub the tip on a wet bar of soap while turning it.", 0),
        ("Make café-style foam for a latte at home.",
         "Shake warm milk hard in a closed jar — about 30 seconds.",
         "Shake warm water hard in a closed jar — about 30 seconds.", 0),
        ("how do you unclog a drain without chemicals",
         "pour a kettle of boiling water down it, then baking soda and vinegar.",
         "pour a kettle of cold cooking oil down it, then flour and butter.", 0),
    ]
    return [dict(goal=g, sol1=a, sol2=b, label=lab) for g, a, b, lab in items]


def arc_rows(kind: str) -> list[dict]:
    def row(id_, q, texts, labels, key):
        assert len(texts) == len(labels) and key in labels
        return dict(id=id_, question=q, choices=dict(text=texts, label=labels), answerKey=key)

    L4, D4 = list("ABCD"), ["1", "2", "3", "4"]
    if kind == "challenge":
        return [
            row("Mercury_SC_415702", "George wants to warm his hands quickly by rubbing them. "
                "Which skin surface will produce the most heat?",
                ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"],
                L4, "A"),
            row("MCAS_2009_5_6516", "Which of the following statements best explains why magnets "
                "usually stick to a refrigerator door?",
                ["The refrigerator door is smooth.", "The refrigerator door contains iron.",
                 "The refrigerator door is a good conductor.", "The refrigerator door has electric "
                 "wires in it."], L4, "B"),
            row("Mercury_7188563", "A student puts a thermometer in a cup of hot water. What will "
                "most likely happen to the reading over the next hour?",
                ["It will rise.", "It will fall.", "It will stay the same."], list("ABC"), "B"),
            row("NYSEDREGENTS_2015_4_27", "Which object is the best conductor of electricity?",
                ["a wax crayon", "a plastic spoon", "a rubber eraser", "an iron nail"], D4, "4"),
            row("Mercury_SC_407695", "Juan and LaKeisha roll a few objects down a ramp. They want "
                "to see which object rolls the farthest. What should they do so they can repeat "
                "their investigation?",
                ["Put the objects in groups.", "Change the height of the ramp.",
                 "Choose different objects to roll.", "Record the details of the investigation.",
                 "Use a longer ramp each time."], list("ABCDE"), "D"),
            row("NYSEDREGENTS_2008_8_12", "The unit \"light-year\" measures",
                ["time", "distance", "brightness"], ["1", "2", "3"], "2"),
            row("Mercury_7234203", "Which process in the water cycle happens when water vapor "
                "cools and forms droplets?",
                ["evaporation", "condensation", "precipitation", "transpiration"], L4, "B"),
            row("TIMSS_2011_4_pg48", "Which of these is NOT a mixture?",
                ["salt water", "sand and iron filings", "pure water", "air", "fruit salad"],
                ["1", "2", "3", "4", "5"], "3"),
        ]
    return [
        row("Mercury_7179953", "Which two body systems are directly involved in movement?",
            ["muscular and skeletal", "digestive and excretory", "respiratory and reproductive",
             "circulatory and endocrine"], L4, "A"),
        row("Mercury_SC_401169", "Which is the function of the gallbladder?",
            ["store bile", "produce bile", "store digestive enzymes", "produce digestive enzymes"],
            L4, "A"),
        row("NYSEDREGENTS_2012_4_8", "Which human body part is most like a camera's lens?",
            ["ear", "eye", "nose", "skin"], D4, "2"),
        row("Mercury_7013388", "A student wants to know how far a toy car rolls. Which tool "
            "should the student use?",
            ["a meter stick", "a balance", "a thermometer"], list("ABC"), "A"),
        row("MDSA_2008_5_21", "Plants need sunlight to make food. Which part of a plant "
            "usually absorbs the most sunlight?",
            ["roots", "stem", "leaves", "flowers", "seeds"], list("ABCDE"), "C"),
        row("CSZ_2009_8_CSZ20740", "What is the boiling point of water at sea level in °C?",
            ["0", "50", "100", "212"], L4, "C"),
        row("NYSEDREGENTS_2010_4_14", "Which object is attracted to a magnet?",
            ["glass marble", "steel paper clip", "wooden pencil"], ["1", "2", "3"], "2"),
        row("Mercury_416503", "Earth's moon reflects light from which source?",
            ["the Sun", "Earth's core", "other planets", "the Moon's own surface", "stars"],
            ["1", "2", "3", "4", "5"], "1"),
    ]


def wikitext_articles() -> list[list[str]]:
    """WikiText-2 test split as articles (lists of raw lines, each ending in "\\n")."""
    lines = WIKITEXT_TEST.read_text(encoding="utf-8").splitlines(keepends=True)
    heading = re.compile(r"^ = [^=].* = \n$")
    arts, cur = [], None
    for ln in lines:
        if heading.match(ln):
            cur = [ln]
            arts.append(cur)
        elif cur is not None:
            cur.append(ln)
    return arts


def wikitext_pages() -> list[dict]:
    """Three articles cut at a line boundary (1.8K-3K characters: ~6-10 windows of 64 tokens),
    each with a "= = Section = =" heading, " @-@ " and " @,@ " or " @.@ " in the kept part."""
    pages = []
    for art in wikitext_articles():
        kept, n = [], 0
        for ln in art:
            kept.append(ln)
            n += len(ln)
            if n >= 1800 and any(k.startswith(" = = ") for k in kept):
                break
        text = "".join(kept)
        if not (1800 <= len(text) <= 3000) or " = = " not in text or " @-@ " not in text:
            continue
        if " @,@ " not in text and " @.@ " not in text:
            continue
        pages.append(dict(page=text))
        if len(pages) == 3:
            break
    assert len(pages) == 3
    return pages


def ppl_text() -> str:
    """The first ~4 KB of the WikiText-2 test split, cut at a line boundary."""
    out, n = [], 0
    for ln in WIKITEXT_TEST.read_text(encoding="utf-8").splitlines(keepends=True):
        out.append(ln)
        n += len(ln.encode("utf-8"))
        if n >= 4000:
            break
    return "".join(out)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_data(d: Path) -> dict:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    files = {
        "hellaswag": ("hellaswag.jsonl", hellaswag_rows()),
        "piqa": ("piqa.jsonl", piqa_rows()),
        "arc_challenge": ("arc_challenge.jsonl", arc_rows("challenge")),
        "arc_easy": ("arc_easy.jsonl", arc_rows("easy")),
        "wikitext": ("wikitext.jsonl", wikitext_pages()),
    }
    out = {}
    for task, (name, rows) in files.items():
        write_jsonl(d / name, rows)
        out[task] = d / name
    (d / "ppl.txt").write_text(ppl_text(), encoding="utf-8")
    out["ppl"] = d / "ppl.txt"
    return out


# ---------------------------------------------------------------------------------------------
# lm-eval task YAMLs (the official 0.4.13 definitions, reading the local files)


def lm_eval_dir() -> Path:
    import lm_eval
    return Path(lm_eval.__file__).resolve().parent


def write_tasks(d: Path, data: dict) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    src = lm_eval_dir() / "tasks"
    shutil.copyfile(src / "hellaswag" / "utils.py", d / "hellaswag_utils.py")
    shutil.copyfile(src / "wikitext" / "preprocess_wikitext.py", d / "preprocess_wikitext.py")

    def header(task: str, output_type: str) -> str:
        return (f"# lm-eval {LM_EVAL_VERSION}'s tasks/{task_src[task]} reading a local file "
                f"(written by tools/make_eval_fixtures.py;\n# paths are relative to the repository root, "
                f"where lm-eval is run)\n"
                f"task: {task}\ndataset_path: json\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    test: {rel(data[task])}\n"
                f"output_type: {output_type}\ntest_split: test\n")

    task_src = {"hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml",
                "arc_challenge": "arc/arc_challenge.yaml (includes arc/arc_easy.yaml)",
                "arc_easy": "arc/arc_easy.yaml", "wikitext": "wikitext/wikitext.yaml"}
    mc_metrics = ("metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                  "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    (d / "hellaswag.yaml").write_text(
        header("hellaswag", "multiple_choice")
        + "process_docs: !function hellaswag_utils.process_docs\n"
        + 'doc_to_text: "{{query}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "choices"\n'
        + mc_metrics + "metadata:\n  version: 1.0\n")
    (d / "piqa.yaml").write_text(
        header("piqa", "multiple_choice")
        + 'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\n'
        + 'doc_to_choice: "{{[sol1, sol2]}}"\nshould_decontaminate: true\n'
        + "doc_to_decontamination_query: goal\n" + mc_metrics + "metadata:\n  version: 1.0\n")
    for t in ("arc_challenge", "arc_easy"):
        (d / f"{t}.yaml").write_text(
            header(t, "multiple_choice")
            + 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
            + 'doc_to_target: "{{choices.label.index(answerKey)}}"\n'
            + 'doc_to_choice: "{{choices.text}}"\nshould_decontaminate: true\n'
            + 'doc_to_decontamination_query: "Question: {{question}}\\nAnswer:"\n'
            + mc_metrics + "metadata:\n  version: 1.0\n")
    (d / "wikitext.yaml").write_text(
        header("wikitext", "loglikelihood_rolling")
        + 'doc_to_text: ""\ndoc_to_target: !function preprocess_wikitext.wikitext_detokenizer\n'
        + "process_results: !function preprocess_wikitext.process_results\n"
        + 'should_decontaminate: true\ndoc_to_decontamination_query: "{{page}}"\n'
        + "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        + "  - metric: bits_per_byte\nmetadata:\n  version: 2.0\n")


# ---------------------------------------------------------------------------------------------
# Running lm-eval


def lm_eval_cmd(model_dir: Path, tasks_dir: Path, tasks: list[str], out: Path,
                max_length: int | None) -> list[str]:
    margs = f"pretrained={rel(model_dir)},dtype=float32"
    if max_length is not None:
        margs += f",max_length={max_length}"
    return ["python3", "-m", "lm_eval", "run", "--model", "hf", "--model_args", margs,
            "--tasks", ",".join(tasks), "--include_path", rel(tasks_dir),
            "--device", "cpu", "--batch_size", "1", "--log_samples", "--seed", "1234",
            "--output_path", str(out)]


def run_lm_eval(cmd: list[str], reuse: bool = False) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONHASHSEED="0")
    out = Path(cmd[cmd.index("--output_path") + 1])
    p = None if reuse else subprocess.run([sys.executable] + cmd[1:], cwd=ROOT, env=env,
                                          capture_output=True, text=True)
    if p is not None and p.returncode != 0:
        sys.stderr.write(p.stdout[-5000:] + "\n" + p.stderr[-10000:])
        raise RuntimeError(f"lm-eval failed ({p.returncode}): {' '.join(cmd)}")
    res = sorted(out.rglob("results_*.json"))
    assert len(res) == 1, res
    results = json.loads(res[0].read_text())
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+)_\d{4}-\d\d-\d\dT.*\.jsonl$", f.name).group(1)
        samples[task] = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    return results, samples


# ---------------------------------------------------------------------------------------------
# Direct transformers computations (self-check of lm-eval's numbers, and ppl)


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13 TemplateLM._encode_pair for a causal model (no special tokens for Qwen)."""
    n = len(context) - len(context.rstrip())
    if n > 0:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def token_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax(logits) in float32 for input ids (lm-eval scores with F.log_softmax in fp32)."""
    logits = model(torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def score(model, ctx: list[int], cont: list[int], max_length: int) -> tuple[float, bool]:
    """lm-eval HFLM._loglikelihood_tokens for one request (batch 1)."""
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    lp = token_logprobs(model, inp)[-len(cont):]
    tgt = torch.tensor(cont)
    greedy = bool((lp.argmax(-1) == tgt).all())
    return float(lp.gather(1, tgt[:, None]).sum()), greedy


def rolling_windows(tokens: list[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window."""
    out = []
    first = min(max_len, len(tokens))
    out.append(([prefix] + tokens[:first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        k = min(len(tokens) - done, max_len)
        end = done + k
        out.append((tokens[max(0, end - max_len - 1):end - 1], tokens[end - k:end]))
        done += k
    return [(a[:len(a) - (len(b) - 1)], b) for a, b in out]


@torch.no_grad()
def fixed_length_ppl(model, ids: list[int], seq: int, stride: int) -> dict:
    """HF "perplexity of fixed-length models": windows of `seq` tokens starting every `stride`
    tokens; each scores its last min(new, len - 1) tokens, `new` = tokens past the previous end."""
    n = len(ids)
    nll, scored, windows, prev_end = 0.0, 0, 0, 0
    hf_nll = 0.0
    for begin in range(0, n, stride):
        end = min(begin + seq, n)
        new = end - prev_end
        w = ids[begin:end]
        k = min(new, len(w) - 1)
        lp = token_logprobs(model, w)
        tgt = torch.tensor(w[len(w) - k:])
        nll -= float(lp[len(w) - k - 1:len(w) - 1].double().gather(1, tgt[:, None]).sum())
        # The documented loop, for comparison: labels -100 outside the last `new` tokens, the
        # model's mean loss times the number of labels it really scored (after its shift by one:
        # min(new, len - 1); the doc's `num_valid_tokens - batch_size` undercounts by one when
        # new < len, which is not what the procedure means to compute).
        x = torch.tensor([w])
        labels = x.clone()
        labels[:, :-new] = -100
        loss = model(x, labels=labels, use_cache=False).loss
        assert int((labels[:, 1:] != -100).sum()) == k
        hf_nll += float(loss) * k
        scored += k
        windows += 1
        prev_end = end
        if end == n:
            break
    assert abs(hf_nll - nll) <= 1e-4 * abs(nll), (hf_nll, nll)
    return dict(seq=seq, stride=stride, windows=windows, tokens_scored=scored, nll_sum=nll,
                token_perplexity=math.exp(nll / scored))


def check_close(what: str, ours: float, theirs: float) -> None:
    if abs(ours - theirs) > SELF_CHECK_TOL * max(1.0, abs(theirs)):
        raise AssertionError(f"{what}: recomputed {ours!r} != lm-eval {theirs!r}")


# ---------------------------------------------------------------------------------------------


def mc_reference(task: str, results: dict, samples: list[dict], model, tok, max_length: int) -> dict:
    r = results["results"][task]
    metrics = {k: r[k] for k in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none")}
    docs = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        reqs, lls, greedy = [], [], []
        choices = []
        args = [s["arguments"][f"gen_args_{i}"] for i in range(len(s["arguments"]))]
        for a, fr in zip(args, s["filtered_resps"], strict=True):
            context, continuation = a["arg_0"], a["arg_1"]
            ll, is_greedy = float(fr[0]), {"True": True, "False": False, True: True, False: False}[fr[1]]
            ctx_ids, cont_ids = encode_pair(tok, context, continuation)
            ours, ours_greedy = score(model, ctx_ids, cont_ids, max_length)
            check_close(f"{task} doc {s['doc_id']}", ours, ll)
            assert ours_greedy == is_greedy
            reqs.append(dict(context=context, continuation=continuation, context_ids=ctx_ids,
                             continuation_ids=cont_ids))
            lls.append(ll)
            greedy.append(is_greedy)
            assert continuation.startswith(" ")
            choices.append(continuation[1:])
        target = int(s["target"])
        # acc / acc_norm as lm-eval defines them (first maximum wins), checked against its own.
        acc = float(int(np.argmax(lls)) == target)
        acc_norm = float(int(np.argmax(np.array(lls) / np.array([len(c) for c in choices]))) == target)
        assert acc == s["acc"] and acc_norm == s["acc_norm"], (task, s["doc_id"])
        docs.append(dict(doc_id=s["doc_id"], target=target, lls=lls, is_greedy=greedy,
                         acc=s["acc"], acc_norm=s["acc_norm"], choices=choices, requests=reqs))
    n = len(docs)
    assert metrics["acc,none"] == sum(d["acc"] for d in docs) / n
    return dict(metrics=metrics, n_docs=n, docs=docs)


def wikitext_reference(results: dict, samples: list[dict], model, tok, pages: list[dict]) -> dict:
    r = results["results"]["wikitext"]
    metrics = {k: r[k] for k in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none")}
    docs = []
    tot_ll, tot_words, tot_bytes = 0.0, 0, 0
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        page = pages[s["doc_id"]]["page"]
        assert list(s["arguments"]) == ["gen_args_0"]
        string = s["arguments"]["gen_args_0"]["arg_0"]
        assert string == s["target"]
        (ll,) = (float(x) for x in s["filtered_resps"])
        ids = tok.encode(string)
        wins = rolling_windows(ids, QWEN_EOS, WIKITEXT_MAX_LENGTH)
        from lm_eval import utils as lu
        theirs = [lu.make_disjoint_window(w) for w in lu.get_rolling_token_windows(
            token_list=ids, prefix_token=QWEN_EOS, max_seq_len=WIKITEXT_MAX_LENGTH, context_len=1)]
        assert [(list(a), list(b)) for a, b in theirs] == wins
        ours = sum(score(model, a, b, WIKITEXT_MAX_LENGTH)[0] for a, b in wins)
        check_close(f"wikitext doc {s['doc_id']}", ours, ll)
        words = len(re.split(r"\s+", page))
        nbytes = len(page.encode("utf-8"))
        assert s["word_perplexity"] == [ll, words] and s["byte_perplexity"] == [ll, nbytes]
        tot_ll, tot_words, tot_bytes = tot_ll + ll, tot_words + words, tot_bytes + nbytes
        docs.append(dict(doc_id=s["doc_id"], loglikelihood=ll, words=words, bytes=nbytes,
                         tokens=len(ids), windows=[[len(a), len(b)] for a, b in wins],
                         target=string))
    # lm-eval's aggregations: weighted_perplexity / bits_per_byte over the pages.
    check_close("word_perplexity", math.exp(-tot_ll / tot_words), metrics["word_perplexity,none"])
    check_close("byte_perplexity", math.exp(-tot_ll / tot_bytes), metrics["byte_perplexity,none"])
    check_close("bits_per_byte", -tot_ll / tot_bytes / math.log(2), metrics["bits_per_byte,none"])
    return dict(metrics=metrics, max_length=WIKITEXT_MAX_LENGTH, prefix_token_id=QWEN_EOS,
                n_docs=len(docs), docs=docs)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output root (default: %(default)s)")
    ap.add_argument("--skip-lm-eval", action="store_true",
                    help="write the model, data and task files only (reference.json untouched)")
    ap.add_argument("--lm-eval-out", type=Path,
                    help="keep lm-eval's own output (results and samples) in this directory")
    ap.add_argument("--reuse-lm-eval-out", action="store_true",
                    help="read lm-eval's output from --lm-eval-out instead of running it again")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    try:
        out.relative_to(ROOT)
    except ValueError:
        ap.error("--out must be inside the repository (lm-eval reads the data by relative path)")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    out.mkdir(parents=True, exist_ok=True)
    model_dir, data_dir, tasks_dir = out / "model", out / "data", out / "tasks"
    model_info = build_model(model_dir)
    data = write_data(data_dir)
    write_tasks(tasks_dir, data)
    if args.skip_lm_eval:
        print(f"model, data and tasks written under {out}")
        return 0

    import lm_eval
    version = getattr(lm_eval, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version
        version = pkg_version("lm_eval")
    if version != LM_EVAL_VERSION:
        print(f"warning: lm-eval {version} installed, the fixtures are meant for {LM_EVAL_VERSION}")

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir)
    mc_max_length = MODEL_SPEC["max_position_embeddings"]

    with tempfile.TemporaryDirectory(prefix="rt_eval_fixtures_") as tmp:
        lm_out = args.lm_eval_out.resolve() if args.lm_eval_out else Path(tmp)
        cmd_mc = lm_eval_cmd(model_dir, tasks_dir, MC_TASKS, lm_out / "mc", None)
        cmd_wt = lm_eval_cmd(model_dir, tasks_dir, ["wikitext"], lm_out / "wikitext",
                             WIKITEXT_MAX_LENGTH)
        reuse = args.reuse_lm_eval_out and args.lm_eval_out is not None
        if not reuse:
            for c in (cmd_mc, cmd_wt):
                shutil.rmtree(c[c.index("--output_path") + 1], ignore_errors=True)
        res_mc, samp_mc = run_lm_eval(cmd_mc, reuse)
        res_wt, samp_wt = run_lm_eval(cmd_wt, reuse)

    tasks = {}
    for t in MC_TASKS:
        tasks[t] = dict(data=rel(data[t]), max_length=mc_max_length,
                        **mc_reference(t, res_mc, samp_mc[t], model, tok, mc_max_length))
    pages = [json.loads(ln) for ln in data["wikitext"].read_text(encoding="utf-8").splitlines()]
    tasks["wikitext"] = dict(data=rel(data["wikitext"]),
                             **wikitext_reference(res_wt, samp_wt["wikitext"], model, tok, pages))

    ppl_ids = tok.encode(data["ppl"].read_text(encoding="utf-8"))
    ppl = dict(data=rel(data["ppl"]), tokens=len(ppl_ids),
               runs=[fixed_length_ppl(model, ppl_ids, s, st) for s, st in PPL_RUNS])
    assert ppl["runs"][0]["tokens_scored"] < ppl["runs"][1]["tokens_scored"] == len(ppl_ids) - 1

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    def strip_out(c: list[str]) -> list[str]:
        return [x if i != c.index("--output_path") + 1 else "OUT" for i, x in enumerate(c)]
    ref = {
        "generator": "tools/make_eval_fixtures.py",
        "command": "python3 tools/make_eval_fixtures.py",
        "versions": {
            "lm_eval": version,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": __import__("datasets").__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "model": dict(dir=rel(model_dir), **model_info, prefix_token_id=QWEN_EOS),
        "lm_eval": {
            "commands": [" ".join(strip_out(cmd_mc)), " ".join(strip_out(cmd_wt))],
            "cwd": "repository root",
            "batch_size": 1,
            "dtype": "float32",
            "device": "cpu",
            "num_fewshot": 0,
            "reported": {"max_length": {"mc": res_mc.get("max_length"), "wikitext": res_wt.get("max_length")},
                         "eot_token_id": res_wt.get("eot_token_id"),
                         "tokenizer_bos_token": res_wt.get("tokenizer_bos_token"),
                         "tokenizer_eos_token": res_wt.get("tokenizer_eos_token"),
                         "lm_eval_version": res_wt.get("lm_eval_version")},
            "self_check_tolerance": SELF_CHECK_TOL,
            "notes": "lls are lm-eval's summed log-likelihoods (fp32 log_softmax) per choice in "
                     "choice order; requests[i] is choice i; context/continuation are the strings "
                     "lm-eval scored, the ids its _encode_pair (trailing context spaces moved to "
                     "the continuation, split at the context's own token count). acc_norm divides "
                     "by len(choice) in characters. wikitext: loglikelihood is the page's rolling "
                     "sum, windows are [context tokens, scored tokens] of lm-eval's disjoint "
                     "windows (prefix token <|endoftext|>), words/bytes counted on the raw page.",
        },
        "data_sha256": {k: sha(v) for k, v in data.items()},
        "tasks": tasks,
        "ppl": ppl,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")

    # Summary
    print(f"lm-eval {version}, transformers {transformers.__version__}, torch {torch.__version__}")
    for c in ref["lm_eval"]["commands"]:
        print(f"  $ {c}")
    for t in MC_TASKS:
        m = tasks[t]["metrics"]
        print(f"{t:14s} n={tasks[t]['n_docs']:2d}  acc {m['acc,none']:.4f} ± {m['acc_stderr,none']:.4f}"
              f"  acc_norm {m['acc_norm,none']:.4f} ± {m['acc_norm_stderr,none']:.4f}")
    m = tasks["wikitext"]["metrics"]
    print(f"{'wikitext':14s} n={tasks['wikitext']['n_docs']:2d}  word_ppl {m['word_perplexity,none']:.6g}"
          f"  byte_ppl {m['byte_perplexity,none']:.6g}  bits_per_byte {m['bits_per_byte,none']:.6g}"
          f"  windows/page {[len(d['windows']) for d in tasks['wikitext']['docs']]}")
    for r in ppl["runs"]:
        print(f"{'ppl':14s} seq {r['seq']} stride {r['stride']}: {r['tokens_scored']} of "
              f"{ppl['tokens']} tokens scored, NLL {r['nll_sum']:.6f}, ppl {r['token_perplexity']:.6g}")
    for sub in ("model", "data", "tasks"):
        print(f"{sub + '/':14s} {dir_bytes(out / sub):9d} bytes")
    print(f"reference.json {(out / 'reference.json').stat().st_size:9d} bytes")
    print(f"total          {dir_bytes(out):9d} bytes in {rel(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
