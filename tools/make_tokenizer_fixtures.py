#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/parity.json: Hugging Face `tokenizers` reference ids for the
C++ tokenizer (tests/tokenizer/test_tokenizer.cpp asserts exact equality).

The reference tokenizer is the shared Qwen2.5 tokenizer.json. Besides the file as it is
("qwen"), a few *variants* exercise code paths Qwen does not use (GPT-2 style ByteLevel with its
own regex and add_prefix_space, "a b" string merges, added-token flags, other Split behaviors,
Digits, other normalizers, ignore_merges). A variant is the Qwen file with a small `patch`
applied; the C++ test applies the same patch (see apply_patch there) so that no large
tokenizer file is stored in the repository.

Usage: python3 tools/make_tokenizer_fixtures.py [--data /work/shared/data] [--out PATH]
"""

import argparse
import json
import os
import random
import unicodedata

import tokenizers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MASK61 = (1 << 61) - 1


def apply_patch(doc, patch):
    """Mirror of apply_patch() in test_tokenizer.cpp."""
    doc = json.loads(json.dumps(doc))
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        if key in patch:
            doc[key] = patch[key]
    for key, value in patch.get("model", {}).items():
        doc["model"][key] = value
    if patch.get("merges_as_strings"):
        doc["model"]["merges"] = [" ".join(m) for m in doc["model"]["merges"]]
    doc["added_tokens"] = doc["added_tokens"] + patch.get("added_tokens", [])
    return doc


def added(id_, content, special=False, normalized=None, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": (not special) if normalized is None else normalized,
            "special": special}


def nfd(s):
    return unicodedata.normalize("NFD", s)


def handwritten_cases():
    c = []
    add = lambda name, text: c.append((name, text))
    add("empty", "")
    add("english", "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it?")
    add("english_para", "Homarus gammarus, known as the European lobster or common lobster, is a "
        "species of clawed lobster from the eastern Atlantic Ocean.\nIt may grow to 60 cm (24 in).")
    add("python_code", "def f(x):\n    if x > 0:\n        return x ** 2\n    return -x  # neg\n\n\nprint(f(3))\n")
    add("cpp_code", "#include <vector>\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& x : v) x *= 2;\n\treturn 0;\n}\n")
    add("tabs", "a\tb\t\tc\t\t\t\td \t e\t")
    add("chinese", "我们今天去公园散步，天气非常好。机器学习是人工智能的一个分支。")
    add("japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字。ｶﾀｶﾅ半角")
    add("korean", "안녕하세요. 오늘 날씨가 정말 좋네요! 한국어 형태소")
    add("greek", "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. ΣΊΣΥΦΟΣ ς σ")
    add("cyrillic", "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖ ёж Ї")
    add("arabic", "مرحبا بالعالم! هذا نص عربي للاختبار ١٢٣٤٥")
    add("hebrew_devanagari_thai", "שלום עולם नमस्ते दुनिया สวัสดีชาวโลก")
    add("emoji", "I love 🍕 and 🎉! 😀😃😄 ❤️ ✔️")
    add("emoji_zwj", "Family: 👨‍👩‍👧‍👦, couple: 👩‍❤️‍👨, flag: 🏳️‍🌈 🇺🇸🇯🇵")
    add("emoji_skin", "👍🏻 👍🏼 👍🏽 👍🏾 👍🏿 🧑🏽‍💻")
    add("accents_nfc", "café naïve résumé Ångström Ñandú Zoë")
    add("accents_nfd", nfd("café naïve résumé Ångström Ñandú Zoë"))
    add("combining_stack", "e\u0301\u0302\u0323 a\u0323\u0301 q\u0307\u0323 \u0301start")
    add("hangul_jamo_nfd", nfd("한국어 형태소"))
    add("crlf", "line one\r\nline two\r\n\r\nline four\r\n")
    add("lone_cr", "a\rb\r\rc\r")
    add("mixed_newlines", "x\n\ry\r\n\nz\n\n\n  \n \t\n")
    for n in range(1, 11):
        add(f"spaces_{n}", "a" + " " * n + "b")
    for n in range(1, 6):
        add(f"newlines_{n}", "a" + "\n" * n + "b")
    add("trailing_spaces", "hello world   ")
    add("leading_spaces", "   hello world")
    add("only_spaces", "     ")
    add("only_newlines", "\n\n\n")
    add("space_newline_mix", "  \n  \n\t \n x")
    add("digits", "1234567890 3.14159 1,000,000 2024-01-01 0x1F 1e-10")
    add("long_number", "12345678901234567890123456789012345678901234567890")
    add("contractions", "I'm you're he's we've they'll she'd DON'T I'M YOU'RE It'S wE'Ve")
    add("contraction_oddities", "'s 's's ''s '''t don''t ' s 'ſ 'ſok 'ſs I'ſ")
    add("special_chat", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>")
    add("endoftext_adjacent", "end.<|endoftext|>Start again<|endoftext|><|endoftext|>x")
    add("special_spaces", "  <|im_start|>  system <|im_end|>  ")
    add("special_all", "<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2)<|box_end|>"
        "<|quad_start|><|quad_end|><|vision_start|><|vision_pad|><|vision_end|><|image_pad|>"
        "<|video_pad|><tool_call></tool_call><|fim_prefix|><|fim_middle|><|fim_suffix|>"
        "<|fim_pad|><|repo_name|><|file_sep|>")
    add("partial_special", "<|im_start <|im_end| <| |> <|endoftext <|im_start|<|im_end|>")
    add("special_in_word", "abc<|im_end|>def")
    add("urls", "See https://example.com/path?q=1&r=two#frag and http://a.b/c_d-e.html, ftp://x.y")
    add("email_paths", "mail me: foo.bar+baz@example.co.uk; C:\\Users\\x\\file.txt /usr/local/bin")
    add("math", "∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ = ∫₀^∞ f(t) dt ≈ π/2 ± ε; α≠β ⇒ ¬(α=β) √2 ∞")
    add("zero_width", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj\u00adsoft")
    add("unicode_spaces", "a\u00a0b\u2000c\u2003d\u3000e\u202ff\u205fg\u1680h\u180ei\u0085j\u2028k\u2029l")
    # U+180E is not White_Space (Oniguruma's \s) but is in PCRE2's UCP \s: see regex.cpp.
    add("mongolian_vowel_separator", "\u180e=i a \u180e b\u180e\u180e  c \u180e\n\u180e& \u180eI \x1c\u180e:t")
    add("unicode_space_runs", "x \u00a0 \u3000\u3000 y\u2003\u2003\nz")
    add("control_chars", "a\x00b\x01c\x1fd\x7fe\x1cf\x1dg\x1eh\x0bi\x0cj")
    add("fullwidth", "ＡＢＣ１２３！？ｱｲｳ")
    add("ligatures_compat", "ﬁﬂﬀ ① ² ½ Ⅻ ㎏ ℌ")
    add("punctuation_runs", "Wait... what?!?! (yes) [no] {maybe} --- *** ### !!!")
    add("quotes", "\"double\" 'single' “curly” ‘curly’ «guillemets» „low“")
    add("html", "<div class=\"a\">Hello &amp; <b>bye</b></div><br/>")
    add("json_text", '{"key": [1, 2.5, "three", null, true], "nested": {"a": "b"}}')
    add("repeated_char", "a" * 300)
    add("repeated_space_long", "x" + " " * 200 + "y")
    add("repeated_emoji", "😀" * 50)
    add("long_word", "pneumonoultramicroscopicsilicovolcanoconiosis" * 3)
    add("mixed_scripts", "Hello世界Привет𝔘𝔫𝔦𝔠𝔬𝔡𝔢 Ωmega123abc")
    add("astral", "𝕳𝖊𝖑𝖑𝖔 𓀀𓀁 🀄 𐍈 𠜎𠜱")
    add("variation_selectors", "☺︎ ☺️ 葛󠄀 0️⃣ #️⃣")
    add("nonchar_private", "\ue000\uf8ff\U000f0000 \ufdd0\ufffe\uffff")
    add("replacement_char", "bad \ufffd char")
    return c


def random_unicode_strings(rng, n):
    """Random strings over a mix of scripts, marks, spaces and symbols (fixed seed)."""
    pools = [
        (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0xFF), (0x100, 0x24F), (0x300, 0x36F), (0x370, 0x3FF),
        (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
        (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2190, 0x22FF), (0x3040, 0x30FF),
        (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),
        (0x1D400, 0x1D7FF),
    ]
    out = []
    for _ in range(n):
        length = rng.randint(1, 40)
        chars = []
        for _ in range(length):
            lo, hi = rng.choice(pools)
            cp = rng.randint(lo, hi)
            if rng.random() < 0.15:
                cp = 0x20
            chars.append(chr(cp))
        out.append("".join(chars))
    return out


def wikitext_lines(path, rng, n):
    with open(path, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    picked = rng.sample(lines, n)
    # Long paragraphs are cut (at a space) to keep the fixture small.
    return [l if len(l) <= 400 else l[: l.rfind(" ", 0, 400)] for l in picked]


def variant_patches():
    base = 151665  # first id after Qwen2.5's added tokens
    bytelevel_gpt2 = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return [
        ("qwen", {}),
        ("gpt2_bytelevel", {
            "normalizer": None,
            "pre_tokenizer": bytelevel_gpt2,
            "merges_as_strings": True,
            "added_tokens": [
                added(base, "<mask>", special=True, lstrip=True),
                added(base + 1, "[name]", single_word=True, normalized=False),
                added(base + 2, "tok en", rstrip=True, normalized=False),
                added(base + 3, "<sep>", special=True, lstrip=True, rstrip=True),
            ],
        }),
        ("added_flags_nfc", {
            "added_tokens": [
                # normalized=True tokens match the NFC form of their (here NFD) content
                added(base, nfd("Café"), normalized=True),
                added(base + 1, "ĳssel", normalized=True, single_word=True),
                added(base + 2, "<b>", normalized=False, lstrip=True, rstrip=True),
                added(base + 3, "word", normalized=False, single_word=True),
                added(base + 4, "<b><b>", normalized=False),
            ],
        }),
        ("split_behaviors", {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "NFC"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
                {"type": "Digits", "individual_digits": False},
                {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "MergedWithNext", "invert": False},
                {"type": "Split", "pattern": {"String": ","}, "behavior": "Removed", "invert": False},
                {"type": "Split", "pattern": {"Regex": "x+"}, "behavior": "Contiguous", "invert": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ]},
        }),
        ("digits_nfd_isolated", {
            "normalizer": {"type": "NFD"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": False},
            ]},
        }),
        ("ignore_merges", {"model": {"ignore_merges": True}}),
    ]


VARIANT_TEXTS = [
    "Hello world, this is a test of 12345 and 3.14!",
    "  leading and trailing  ",
    "<mask> is <mask>here and  <mask>  there<mask>",
    "[name] said hi to [name]! x[name] [name]y _[name] é[name] [name]\u0301",
    "tok en tok en   x tok entok en\t\tend",
    "a<sep>b  <sep>  c<sep><sep>",
    "Café " + nfd("Café") + " CAFÉ café",
    "ĳssel Ĳssel ijssel xĳssel ĳssels",
    "a<b>b  <b>  c<b><b>d <b><b><b>",
    "word words sword word. (word) word_x",
    "one,two, three,,four xx yxxxz axe oxo 2024 ½ ① ﬁ",
    "caf\u00e9 ｶﾀｶﾅ 123 4 5six seven8 ٣٤ ⅻ",
    "The quick brown fox jumps over the lazy dog 1234567890",
    "<|im_start|>user\nhi there<|im_end|>",
    "DON'T stop me now I'm having such a good time",
    "unbelievable internationalization antidisestablishmentarianism",
    "def main():\n    return 42\n",
    "中文测试 日本語 한국어",
]


def encode_cases(tok, named_texts):
    cases = []
    for name, text in named_texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        case = {"name": name, "text": text, "ids": ids}
        decoded = tok.decode(ids, skip_special_tokens=False)
        if decoded != text:
            case["decoded"] = decoded
        cases.append(case)
    return cases


def byte_token_ids(tok):
    """Id of the token standing for each single byte (GPT-2 byte <-> unicode table)."""
    kept = [b for b in range(256) if ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table, n = {}, 0
    for b in range(256):
        table[b] = chr(b) if b in kept else chr(256 + n)
        n += b not in kept
    return {b: tok.token_to_id(c) for b, c in table.items()}


def decode_cases(tok, rng):
    """Id sequences whose bytes are not valid UTF-8: HF's lossy decode is the reference."""
    byte_ids = byte_token_ids(tok)
    seqs = [
        [byte_ids[0xC3]],                                   # truncated 2-byte sequence
        [byte_ids[0xE6], byte_ids[0x88]],                   # truncated 3-byte sequence
        [byte_ids[0x80], byte_ids[0xBF], byte_ids[0x41]],   # stray continuation bytes
        [byte_ids[0xED], byte_ids[0xA0], byte_ids[0x80]],   # encoded surrogate
        [byte_ids[0xF4], byte_ids[0x90], byte_ids[0x80], byte_ids[0x80]],  # above U+10FFFF
        [byte_ids[0xC0], byte_ids[0xAF]],                   # overlong
        [byte_ids[0xF0], byte_ids[0x9F], byte_ids[0x98], 151643, byte_ids[0x80]],
        [byte_ids[0xFF], byte_ids[0xFE], 14990],
    ]
    for _ in range(40):
        seqs.append([byte_ids[rng.randrange(256)] if rng.random() < 0.8 else rng.randrange(151665)
                     for _ in range(rng.randint(1, 12))])
    return [{"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)} for ids in seqs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "tokenizer", "parity.json"))
    args = ap.parse_args()

    tok_path = os.path.join(args.data, "qwen2.5-tokenizer", "tokenizer.json")
    with open(tok_path, encoding="utf-8") as f:
        base_doc = json.load(f)

    rng = random.Random(20240601)
    qwen_texts = handwritten_cases()
    qwen_texts += [(f"wikitext_valid_{i}", t) for i, t in
                   enumerate(wikitext_lines(os.path.join(args.data, "wikitext-2", "valid.txt"), rng, 300))]
    qwen_texts += [(f"random_unicode_{i}", t) for i, t in enumerate(random_unicode_strings(rng, 150))]

    variants = []
    for name, patch in variant_patches():
        tok = Tokenizer.from_str(json.dumps(apply_patch(base_doc, patch)))
        texts = qwen_texts if name == "qwen" else [(f"{name}_{i}", t) for i, t in enumerate(VARIANT_TEXTS)]
        variants.append({"name": name, "patch": patch, "cases": encode_cases(tok, texts)})

    # Whole-file check: count, a position-weighted hash and the first/last ids.
    tok = Tokenizer.from_file(tok_path)
    with open(os.path.join(args.data, "wikitext-2", "test.txt"), "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids
    whole = {
        "path": "wikitext-2/test.txt",
        "count": len(ids),
        "hash": sum(i * (p + 1) for p, i in enumerate(ids)) & MASK61,
        "hash_rule": "sum(id * (position + 1)) mod 2^61",
        "first": ids[:1000],
        "last": ids[-1000:],
    }

    decode_only = decode_cases(tok, rng)

    out = {
        "generator": "tools/make_tokenizer_fixtures.py",
        "hf_tokenizers_version": tokenizers.__version__,
        "tokenizer": "qwen2.5-tokenizer/tokenizer.json",
        "decode_rule": "decode(ids, skip_special_tokens=False); 'decoded' is stored only when it differs from 'text'",
        "variants": variants,
        "decode_cases": decode_only,
        "whole_file": whole,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    n = sum(len(v["cases"]) for v in variants)
    print(f"wrote {args.out}: {n} cases in {len(variants)} variants, whole file {len(ids)} tokens, "
          f"{os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
