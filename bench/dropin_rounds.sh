#!/bin/bash
# The Python issue's bars in one go, in rounds (docs/python.md, "Speed"): for each preset,
# lstmgrad.torch.LSTM's forward + backward as a hot loop (`bench/torch_dropin.py --alone`) against
# `lstmgrad bench --mode fwdbwd` in alternating fresh processes (the wrapper's cost), then
# `bench/torch_dropin.py --torch-threads 1 --lm-step` (the module against nn.LSTM at PyTorch's best
# setting, fwd+bwd and the language-model step), then the language-model step of each module alone
# in its own process (`--lm-only`), as a user's training loop runs it, with glibc's thresholds as
# bench_env.sh sets them and with glibc's defaults.
#
#   bench/dropin_rounds.sh [BUILD_DIR] [ROUNDS]     (defaults: build, 3)
#
# Prints each round's ratios, then the ratio of the medians over the rounds, which is the number
# docs/python.md reports; the wrapper's cost also from the two alternating in one process
# (`bench/torch_dropin.py --alone --against-bench`). The environment is bench/compare.sh's
# (bench_env.sh).
source "$(dirname "$0")/bench_env.sh"
trap 'rm -rf "$OUT"' EXIT
PRESETS=${PRESETS:-"zaremba-small zaremba-medium char-rnn"}  # env: a subset
DROPIN="/usr/bin/python3 $ROOT/bench/torch_dropin.py"
export PYTHONPATH=$BUILD/python${PYTHONPATH:+:$PYTHONPATH}

for round in $(seq "$ROUNDS"); do
  for p in $PRESETS; do
    echo "round $round: $p" >&2
    $DROPIN --alone --presets "$p" --warmup 20 --runs 50 --json >"$OUT/alone.$p.$round.json"
    "$LSTMGRAD" bench --preset "$p" --mode fwdbwd --warmup 20 --runs 50 --json \
      >"$OUT/bench.$p.$round.json"
  done
  $DROPIN --presets "${PRESETS// /,}" --torch-threads 1 --runs 9 --lm-step --json \
    >"$OUT/pair.$round.json"
  for glibc in tuned default; do
    for m in nn.LSTM lstmgrad; do
      echo "round $round: LM steps, $m alone, glibc $glibc" >&2
      run=()
      [ "$glibc" = tuned ] || run=(env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_)
      "${run[@]}" $DROPIN --presets "${PRESETS// /,}" --torch-threads 1 --runs 5 --lm-only "$m" \
        --json >>"$OUT/alone_lm.$glibc.$round.json"
    done
  done
done
# The wrapper's cost once more, the two alternating inside one process (what differs between
# processes, memory layout and which core is whose, then touches both), ROUNDS rounds.
echo "in one process" >&2
$DROPIN --alone --against-bench --rounds "$ROUNDS" --presets "${PRESETS// /,}" --warmup 20 \
  --runs 50 --json >"$OUT/inproc.json"

/usr/bin/python3 - "$OUT" "$ROUNDS" $PRESETS <<'PY'
import json, statistics, sys
out, rounds, presets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def lines(path):
    return [json.loads(l) for l in open(path) if l.strip()]
print("ms: medians of each round; the last column: the ratio of the medians over the rounds")
for p in presets:
    mine = [lines(f"{out}/alone.{p}.{r}.json")[0]["lstmgrad_ms"] for r in range(1, rounds + 1)]
    bench = [json.load(open(f"{out}/bench.{p}.{r}.json"))[0]["ms"] for r in range(1, rounds + 1)]
    per = ", ".join(f"{a / b:.3f}" for a, b in zip(mine, bench))
    print(f"{p:<15} wrapper's cost: module {statistics.median(mine):.2f} ms, `lstmgrad bench` "
          f"{statistics.median(bench):.2f} ms; rounds {per}; "
          f"{statistics.median(mine) / statistics.median(bench):.3f}")
for r in lines(f"{out}/inproc.json"):
    per = ", ".join(f"{a / b:.3f}" for a, b in zip(r["lstmgrad_ms"], r["bench_ms"]))
    print(f"{r['preset']:<15} wrapper's cost in one process: module "
          f"{statistics.median(r['lstmgrad_ms']):.2f} ms, `lstmgrad bench` "
          f"{statistics.median(r['bench_ms']):.2f} ms; rounds {per}; {r['ratio']:.3f}")
pairs = [lines(f"{out}/pair.{r}.json") for r in range(1, rounds + 1)]
for p in presets:
    for mode in ("fwdbwd", "lm_step"):
        rows = [[x for x in rs if (x["preset"], x["mode"]) == (p, mode)] for rs in pairs]
        if not all(rows):
            continue
        ref = [r[0]["nn_lstm_ms"] for r in rows]
        mine = [r[0]["lstmgrad_ms"] for r in rows]
        per = ", ".join(f"{a / b:.2f}" for a, b in zip(ref, mine))
        print(f"{p:<15} {mode:<8} nn.LSTM {statistics.median(ref):.1f} ms, lstmgrad.torch.LSTM "
              f"{statistics.median(mine):.1f} ms; rounds {per}; "
              f"{statistics.median(ref) / statistics.median(mine):.2f}x")
for glibc in ("tuned", "default"):
    alone = [lines(f"{out}/alone_lm.{glibc}.{r}.json") for r in range(1, rounds + 1)]
    for p in presets:
        ms = {m: [x["ms"] for rs in alone for x in rs if (x["preset"], x["module"]) == (p, m)]
              for m in ("nn.LSTM", "lstmgrad")}
        ref, mine = ms["nn.LSTM"], ms["lstmgrad"]
        if len(ref) != rounds or len(mine) != rounds:
            continue
        per = ", ".join(f"{a / b:.2f}" for a, b in zip(ref, mine))
        print(f"{p:<15} lm_step, each module alone in its process, glibc {glibc}: nn.LSTM "
              f"{statistics.median(ref):.1f} ms, lstmgrad.torch.LSTM {statistics.median(mine):.1f} "
              f"ms; rounds {per}; {statistics.median(ref) / statistics.median(mine):.2f}x")
PY
