#!/bin/sh
# calibration's recommendation (issue 17 item 2): never a candidate that saves nothing; the
# ranking shows each candidate's KV and prefill-compute saving beside its quality cost; when no
# saving candidate fits the budget it says so and names the one that costs least quality
. tests/lib.sh
require_shared cli_calibrate
S=$SHARED/models/stories260K
D=$SHARED/data/tinystories_val.txt
KD="$BIN/kvdistill"
run() { desc=$1; shift; expect_rc 0 "$desc" -- "$KD" calibrate "$S" --data "$D" --seq-len 64 --batch 4 --eval-seqs 4 --quiet --threads 1 "$@"; }
# the default candidates on this 5-layer model include swiftkv:4,1: the last layer's K/V from its
# own input, exactly what the original computes (KL 0): it saves nothing and was recommended
run "default candidates, loose budget" --budget 1000000
expect_grep "^   1  swiftkv:4,1 .* 0.0%     0.0% .*(saves nothing: never recommended)" "$TMP/out" "no-op marked in the ranking"
expect_grep "^rank  map .* KV  prefill .* KL .* ppl +%" "$TMP/out" "ranking shows both savings and the quality cost"
if grep -q "^recommended: swiftkv:4,1" "$TMP/out"; then bad "the no-op swiftkv:4,1 is recommended"; else ok; fi
expect_grep "^recommended: swiftkv:1,4 (2 of 5 KV slots: KV cache saving 60.0%, prefill compute saving 73.3%" "$TMP/out" "cheapest saving candidate recommended"
run "default candidates, 5% budget"
expect_grep "^recommended: none: no candidate that saves anything is within +5.0% zero-shot. The one that costs least quality is swiftkv:3,1 (KV cache saving 0.0%, prefill compute saving 22.2%" "$TMP/out" "nothing fits: says so and names the best"
run "only the no-op" --swiftkv 4 --groups 1
expect_grep "^recommended: none: no candidate saves KV-cache memory or prefill compute" "$TMP/out" "only no-ops: none"
run "json" --json --budget 1000000
if command -v python3 >/dev/null 2>&1; then
    python3 - "$TMP/out" <<'PY' && ok || bad "calibrate JSON: the recommendation saves nothing or savings missing"
import json, sys
d = json.load(open(sys.argv[1]))
by = {c["map"]: c for c in d["candidates"]}
assert all("prefill_compute_saving" in c and "saves" in c for c in d["candidates"])
assert by["swiftkv:4,1"]["saves"] is False
rec = by[d["recommended"]]
assert rec["saves"] and (rec["cache_saving"] > 0 or rec["prefill_compute_saving"] > 0), rec
PY
fi
run "json, 5% budget" --json
expect_grep '"best_saving_over_budget":	"swiftkv:3,1"' "$TMP/out" "json names the best over budget"
# the heat map (issue 17 item 8): three panels with their own legible titles, one shared colour
# scale with a colour bar, layer numbers on both axes; checked structurally, and rendered when
# rsvg-convert is installed
run "svg" --swiftkv 3 --svg "$TMP/sim.svg"
expect_grep "<svg" "$TMP/sim.svg" "svg written"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$TMP/sim.svg" 5 <<'PY' >"$TMP/svgcheck" 2>&1 && ok || bad "heat map structure: $(cat "$TMP/svgcheck")"
import re, sys, xml.etree.ElementTree as ET
path, L = sys.argv[1], int(sys.argv[2])
NS = "{http://www.w3.org/2000/svg}"
root = ET.parse(path).getroot()
W, H = float(root.get("width")), float(root.get("height"))
panels = [g for g in root.iter(NS + "g") if g.get("class") == "panel"]
assert len(panels) == 3, "%d panels" % len(panels)
def box(t):  # estimated extent of a text element (0.62 font sizes per character)
    fs, x, y = float(t.get("font-size")), float(t.get("x")), float(t.get("y"))
    w = len(t.text or "") * fs * 0.62
    a = t.get("text-anchor")
    x -= w if a == "end" else w / 2 if a == "middle" else 0
    return (x, y - fs, x + w, y)
def overlap(a, b): return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
titles, grids, cells = [], [], []
for n, g in zip((L + 1, L, L), panels):
    t = [e for e in g if e.tag == NS + "text" and e.get("class") == "title"]
    assert len(t) == 1 and t[0].text and float(t[0].get("font-size")) >= 12, "panel title"
    sub = [e for e in g if e.tag == NS + "text" and e.get("class") == "subtitle"]
    assert len(sub) == 1, "subtitle"
    titles += [box(t[0]), box(sub[0])]
    rects = [e for e in g if e.tag == NS + "rect"]
    assert len(rects) == n * n, "%d cells, want %d" % (len(rects), n * n)
    xs = [float(r.get("x")) for r in rects]; ys = [float(r.get("y")) for r in rects]
    cw = float(rects[0].get("width"))
    grid = (min(xs), min(ys), max(xs) + cw, max(ys) + cw)
    grids.append(grid)
    for tb in titles[-2:]:
        assert tb[3] <= grid[1], "title below the top of its grid"
        assert 0 <= tb[0] and tb[2] <= W, "title outside the picture"
    for r in rects:
        v = float(r.find(NS + "title").text.split(": ")[1])
        c = tuple(int(x) for x in re.findall(r"\d+", r.get("fill")))
        cells.append((v, c))
    xl = [e.text for e in g if e.get("class") == "xlabel"]
    yl = [e.text for e in g if e.get("class") == "ylabel"]
    want = [str(i) for i in range(L)] + (["out"] if n == L + 1 else [])
    assert xl == want and yl == want, "axis labels %s %s" % (xl, yl)
    assert any(e.get("class") == "axis" for e in g), "axis names"
for i in range(len(titles)):
    for j in range(i + 1, len(titles)):
        assert not overlap(titles[i], titles[j]), "titles overlap: %s %s" % (titles[i], titles[j])
for i in range(3):
    for j in range(i + 1, 3):
        assert not overlap(grids[i], grids[j]), "panels overlap"
# one colour scale: the colour is a function of the value alone, the same in every panel
cells.sort()
for (v1, c1), (v2, c2) in zip(cells, cells[1:]):
    assert c2[1] <= c1[1], "colour not monotonic in the value across panels: %s %s %s %s" % (v1, c1, v2, c2)
bars = [g for g in root.iter(NS + "g") if g.get("class") == "colorbar"]
assert len(bars) == 1, "one colour bar"
ticks = [e for e in bars[0] if e.get("class") == "tick"]
assert len(ticks) >= 2 and ticks[0].text == "1.000", "colour bar ticks"
assert any(e.get("class") == "heading" for e in root.iter(NS + "text")), "heading"
PY
fi
if command -v rsvg-convert >/dev/null 2>&1; then
    rsvg-convert "$TMP/sim.svg" -o "$TMP/sim.png" && [ -s "$TMP/sim.png" ] && ok || bad "rsvg-convert could not render the heat map"
fi
done_tests cli_calibrate
