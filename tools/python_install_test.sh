#!/usr/bin/env bash
# docs/python.md's install, as a user runs it: a virtual environment that sees Debian's numpy and
# torch, `pip install --no-build-isolation .` (offline: setup.py drives CMake), then, from outside
# the repository so that only the installed package can be imported, docs/python.md's example as
# written. .ci/run runs it on the fresh machine.
#   tools/python_install_test.sh [WORK_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work=${1:-$(mktemp -d)}
python=${PYTHON:-python3}  # Debian's /usr/bin/python3 on a fresh machine
"$python" -m venv --system-site-packages "$work/env"
"$work/env/bin/pip" install --no-build-isolation --no-index -q "$root" >"$work/pip.log" 2>&1 ||
  { cat "$work/pip.log"; exit 1; }
# The first python block under "## Example" in docs/python.md.
"$python" - "$root/docs/python.md" >"$work/example.py" <<'PY'
import sys
doc = open(sys.argv[1]).read()
block = doc[doc.index("## Example"):]
print(block[block.index("```python\n") + 10 : block.index("```", block.index("```python\n") + 10)])
PY
cd "$work"
"$work/env/bin/python" example.py
echo "python_install_test: installed into $work/env and ran docs/python.md's example"
