#!/usr/bin/env bash
# README.md as written: runs the "Writing a plugin" commands verbatim in a scratch directory laid out
# like the repository root (build -> this build, sdk, tests), and checks that the weights download
# uses today's hub client (`hf download`), not the deprecated `huggingface-cli download`.
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$src/README.md" "$work/plugin.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text[text.index("## Writing a plugin"):]
block = re.search(r"```bash\n(.*?)```", section, re.S)
assert block, "README: no bash block under 'Writing a plugin'"
open(sys.argv[2], "w").write("set -euo pipefail\n" + block.group(1))
commands = [l for b in re.findall(r"```bash\n(.*?)```", text, re.S) for l in b.splitlines()]
assert any(re.match(r"\s*hf download Qwen/", l) for l in commands), "README: no `hf download` command"
assert not any("huggingface-cli download" in l for l in commands), "README: deprecated huggingface-cli command"
PY
ln -s "$build" "$work/build"
ln -s "$src/sdk" "$work/sdk"
ln -s "$src/tests" "$work/tests"
(cd "$work" && bash plugin.sh >"$work/log" 2>&1) || { cat "$work/log"; echo "README plugin example failed" >&2; exit 1; }
grep -q "my_plugin" "$work/log" || { cat "$work/log"; echo "the plugin was not listed" >&2; exit 1; }
test -s "$work/x.npy"
echo "README examples OK"
