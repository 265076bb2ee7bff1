"""See GRPO learn: a question, its G sampled outputs, and how each token is pushed up or down.

    python -m support.viewer out/classroom                  # every RL method found under out/classroom/rl/
    python -m support.viewer out/classroom/rl/grpo_outcome  # one run
    python -m support.viewer out/classroom --out=/tmp/r.html  # default: {out_dir}/rollouts.html (or {run}/rollouts.html)

Every RL run of grpo.py records, for a few fixed probe questions at a few steps (first, middle
and last by default), what the step computed for their rollouts: `record_rollouts` appends one
line per output to rl/{method}/rollouts.jsonl, beside metrics.jsonl. This script turns those
records into one self-contained HTML page (inline CSS and JS, the data as a JSON blob; no
server, no network: open it from disk in any browser). The page shows

- a question with its G outputs, each marked correct or wrong, and the group's mean and std;
- every response token coloured by its advantage on a diverging scale (blue: the update makes
  the token more likely, red: less likely), with the rewards as small tags where they land;
- hover (or click, to pin) a token to read its numbers: advantage, reward, the ratio
  pi_theta/pi_old and whether the clip bit, the k3 KL to pi_ref, and PPO's value and return.
  The record is taken before the step's update, where pi_theta is pi_old: with rl_mu = 1 the
  ratio reads 1 and nothing is clipped; they move only with rl_mu > 1;
- the methods side by side for the same question at the same step, or one method's group at
  each recorded step (how the group changes as the policy learns).

What to look for, against the paper:
- 4.1.2 outcome supervision: one reward on the last token, and every token of an output gets
  the same advantage (r_i - mean(r)) / std(r): a whole output is blue or red;
- 4.1.3 process supervision: one reward per reasoning step, and A_i,t sums the normalised
  rewards of the steps ending at or after t, so the colour changes at every step's end inside
  one output: a wrong step pushes down its own tokens and all before it, a right one pulls
  them up, and tokens after the last reward (EOS) get 0;
- PPO (eq. 1, GAE): the advantage comes from a learned value model, delta_t = r_t + V_t+1 - V_t
  summed with (gamma lambda)^l, so it varies token by token even with one outcome reward;
- RFT and online RFT (5.2.1): the gradient coefficient is 1 on correct outputs and 0 on wrong
  ones: nothing is ever pushed down;
- GRPO groups whose outputs are all right or all wrong have std 0 and advantage 0 (no
  signal); RFT's coefficient is I(o) whatever the group, and PPO's advantage comes from GAE.

Tests: pytest -q tests/test_viewer.py
"""

import argparse
import html
import json
import math
import os
import sys

from support.fileio import BadInput, atomic_path, read_jsonl

ROLLOUTS_FILE = "rollouts.jsonl"
PAGE_FILE = "rollouts.html"
# The paper's methods in the order the page shows them; other folders follow alphabetically.
METHOD_ORDER = ("grpo_outcome", "grpo_process", "ppo", "online_rft", "rft")
# The end token is shown as this short mark: DeepSeek's "<｜end▁of▁sentence｜>" would crowd it.
EOS_TEXT = "<eos>"
# Per-token arrays of a record, rounded to this many significant digits: 4 keeps every value
# readable on the page while a 7B run's records stay a few bytes per number.
DIGITS = 4
# A long output (a 7B solution runs to 1,024 tokens) is shown as its first and last KEEP_TOKENS
# tokens with a marker for the hidden middle: the start shows how the solution sets out, the
# end holds the final answer and the outcome reward. 48 + 48 tokens are 3-5 lines of a page
# column; classroom outputs (~60 tokens) are shown whole.
KEEP_TOKENS = 48
# Outputs shown per group: all of the classroom's G = 8; of the paper's G = 64, up to half
# correct and half wrong (the first by index), so both signs of advantage stay in view. The
# group's mean, std and accuracy are always of all G outputs.
MAX_OUTPUTS = 8
# |advantage| at which a token's colour is full. Outcome GRPO with G = 8 reaches at most
# (1 - 1/8) / sqrt(7/64) = 2.65; PPO's whitened advantages have std 1.
ADVANTAGE_SCALE = 2.0


# =============================================================================================
# 1. Recording (called by grpo.py's run at the probe steps)
# =============================================================================================


def rounded(x):
    """x to DIGITS significant digits; a non-finite value (a diverged run) as null, which JSON
    (and so the page) can hold, unlike NaN."""
    return float(f"{x:.{DIGITS}g}") if math.isfinite(x) else None


def token_text(tokenizer, token_id):
    """A token's text. A byte-level BPE token can hold part of a UTF-8 character: that part
    shows as U+FFFD rather than failing."""
    if token_id == tokenizer.eos_id:
        return EOS_TEXT
    return tokenizer.encoding.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")


def record_rollouts(path, method, step, rollouts, tokenizer, *, rewards, reward_mask, correct,
                    advantages, ratio, clipped, kl, group_mean, group_std, values=None, returns=None):
    """Append one JSON line per output (row) of `rollouts` to `path`.

    `rollouts` is grpo.Rollouts, G consecutive rows per question (G = N // len(group_mean));
    every per-token tensor is (N, L-1) in log-prob column space (column j scores token j + 1);
    correct (N,), group_mean and group_std (B,). A line holds the output's response tokens and,
    for each of them, advantage, ratio, clipped, kl (and PPO's value and return), plus the
    rewards as [(token index in the response, value)]."""
    G = len(rollouts.texts) // len(group_mean)
    cpu = {name: t.detach().float().cpu() for name, t in {
        "advantage": advantages, "ratio": ratio, "kl": kl, "value": values, "return": returns,
        "rewards": rewards}.items() if t is not None}
    tokens, reward_mask, clipped = rollouts.tokens.cpu(), reward_mask.cpu(), clipped.cpu()
    correct, truncated = correct.cpu().reshape(-1).tolist(), rollouts.truncated.cpu().tolist()
    group_mean, group_std = group_mean.cpu().reshape(-1).tolist(), group_std.cpu().reshape(-1).tolist()
    lines = []
    for row, problem in enumerate(rollouts.problems):
        columns = rollouts.response_columns(row)
        ids = tokens[row, [c + 1 for c in columns]].tolist()  # column c scores token c + 1
        landed = reward_mask[row, columns].nonzero().squeeze(-1).tolist()  # response indices
        record = {
            "method": method, "step": step, "q": row // G, "i": row % G, "G": G,
            "question": problem.question, "answer": problem.answer,
            "correct": bool(correct[row]), "truncated": bool(truncated[row]),
            "group_mean": rounded(group_mean[row // G]), "group_std": rounded(group_std[row // G]),
            "tokens": [token_text(tokenizer, t) for t in ids],
            "clipped": clipped[row, columns].int().tolist(),
            "rewards": [[k, rounded(float(cpu["rewards"][row, columns[k]]))] for k in landed],
        }
        for name in ("advantage", "ratio", "kl", "value", "return"):
            if name in cpu:
                record[name] = [rounded(x) for x in cpu[name][row, columns].tolist()]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))  # one write per step, as metrics.jsonl


# =============================================================================================
# 2. Reading the records of one run or of every run of an out_dir
# =============================================================================================

REQUIRED = ("method", "step", "q", "i", "question", "answer", "correct", "group_mean", "group_std",
            "tokens", "advantage", "ratio", "clipped", "kl", "rewards")


def run_folders(path):
    """{method: folder} to show, and the default page path. `path` is an out_dir (its rl/
    holds one folder per method; the extra RL seeds of `pipeline.py --seeds=N`, rl/METHOD-seedS,
    are left to their own pages) or one run folder."""
    if not os.path.isdir(path):
        raise BadInput(f"{path}: no such folder; give an out_dir (e.g. out/classroom) or a run folder under its rl/")
    rl = os.path.join(path, "rl")
    if os.path.isdir(rl):
        folders = {m: os.path.join(rl, m) for m in sorted(os.listdir(rl))
                   if os.path.isfile(os.path.join(rl, m, ROLLOUTS_FILE)) and "-seed" not in m}
        if not folders:
            raise BadInput(f"{rl}: no run folder holds {ROLLOUTS_FILE} (runs made before the viewer "
                           "existed have none); rerun grpo.py")
        return folders, os.path.join(path, PAGE_FILE)
    if not os.path.isfile(os.path.join(path, ROLLOUTS_FILE)):
        raise BadInput(f"{path}: no {ROLLOUTS_FILE} here, nor an rl/ folder of runs; grpo.py writes it in "
                       "every run folder, out_dir/rl/METHOD/ (runs made before the viewer existed have none)")
    return {os.path.basename(os.path.normpath(path)): path}, os.path.join(path, PAGE_FILE)


def read_run(folder):
    """The records of one run, {(step, q, i): record}; a step recorded twice (a resumed run)
    keeps its latest record."""
    path = os.path.join(folder, ROLLOUTS_FILE)
    records = {}
    for lineno, record in enumerate(read_jsonl(path), 1):
        missing = [key for key in REQUIRED if key not in record]
        if missing:
            raise BadInput(f"{path}: record {lineno} lacks {', '.join(missing)}; rerun grpo.py to rewrite it")
        records[record["step"], record["q"], record["i"]] = record
    if not records:
        raise BadInput(f"{path}: empty, no rollouts recorded; rerun grpo.py")
    return records


def method_key(method):
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


# =============================================================================================
# 3. What the page holds: few outputs per group, long outputs cut in the middle
# =============================================================================================


def shown_outputs(outputs):
    """Up to MAX_OUTPUTS of a group's outputs (sorted by index): half correct, half wrong where
    the group has them, the rest filled from the other kind."""
    right = [o for o in outputs if o["correct"]]
    wrong = [o for o in outputs if not o["correct"]]
    n_right = min(len(right), max(MAX_OUTPUTS // 2, MAX_OUTPUTS - len(wrong)))
    return sorted(right[:n_right] + wrong[:MAX_OUTPUTS - n_right], key=lambda o: o["i"])


def page_output(record):
    """One output as the page needs it: its first and last KEEP_TOKENS tokens, and `gap` =
    [index of the first hidden token, how many are hidden] when the middle is cut."""
    n = len(record["tokens"])
    cut = n > 2 * KEEP_TOKENS + 1  # hiding a single token would save nothing
    out = {"i": record["i"], "correct": record["correct"], "truncated": record.get("truncated", False),
           "n": n, "rewards": record["rewards"]}
    for name in ("tokens", "advantage", "ratio", "clipped", "kl", "value", "return"):
        if name in record:
            x = record[name]
            out[name] = x[:KEEP_TOKENS] + x[-KEEP_TOKENS:] if cut else x
    if cut:
        out["gap"] = [KEEP_TOKENS, n - 2 * KEEP_TOKENS]
    return out


def page_data(runs):
    """The JSON blob the page renders: questions, methods, recorded steps per method, and
    groups[method][step][question] = the group's statistics and shown outputs."""
    questions, groups, steps = [], {}, {}
    for method in sorted(runs, key=method_key):
        by_group = {}
        for (step, q, _), record in sorted(runs[method].items()):
            by_group.setdefault((step, q), []).append(record)
        for (step, _), outputs in by_group.items():
            first = outputs[0]
            # the same probe question is found by its text, whatever its index in each run
            key = (first["question"], first["answer"])
            if key not in questions:
                questions.append(key)
            groups.setdefault(method, {}).setdefault(step, {})[questions.index(key)] = {
                "mean": first["group_mean"], "std": first["group_std"], "G": len(outputs),
                "correct": sum(o["correct"] for o in outputs),
                "outputs": [page_output(o) for o in shown_outputs(outputs)],
            }
        steps[method] = sorted(groups[method])
    return {"questions": [{"text": t, "answer": a} for t, a in questions], "methods": list(groups),
            "steps": steps, "groups": groups, "scale": ADVANTAGE_SCALE, "eos": EOS_TEXT}


# =============================================================================================
# 4. The page
# =============================================================================================


def render_page(data, title):
    # "<" escaped inside the JSON so no text of a question or token can close the <script>
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return (PAGE.replace("__TITLE__", html.escape(title)).replace("__CSS__", CSS)
            .replace("__JS__", JS).replace("__DATA__", blob))


def write_page(path, out=None):
    """Read the rollouts under `path` (an out_dir or a run folder), write the page; its path."""
    folders, default = run_folders(path)
    runs = {method: read_run(folder) for method, folder in folders.items()}
    out = out or default
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(render_page(page_data(runs), f"GRPO rollouts: {os.path.normpath(path)}"))
    return out


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>__CSS__</style></head>
<body>
<header>
  <h1>__TITLE__</h1>
  <p class="intro">Each question's <b>G outputs</b>, sampled from the policy at one RL step, with
  what the step computed for them. A token's colour is its <b>advantage</b>: the update raises the
  probability of blue tokens and lowers that of red ones. Tags like <span class="rw pos">r 1</span>
  mark where a reward lands. Hover a token for its numbers; click to pin them.</p>
  <div class="legend"><span>pushed down</span><span class="bar"></span><span>pushed up</span>
  <span class="ticks" id="ticks"></span></div>
</header>
<nav id="controls"></nav>
<div class="top"><section id="question"></section><section id="summary"></section></div>
<main id="columns"></main>
<aside id="panel"></aside>
<script type="application/json" id="data">__DATA__</script>
<script>__JS__</script>
</body></html>
"""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:16px 20px 90px;
  background:#f4f5f7;color:#1d2330}
h1{font-size:20px;margin:0 0 4px}
.intro{margin:0 0 8px;max-width:1000px;color:#444}
.legend{display:flex;align-items:center;gap:8px;font-size:12px;color:#444}
.legend .bar{width:220px;height:12px;border-radius:3px;border:1px solid #ccc;
  background:linear-gradient(to right,rgba(178,24,43,.8),#fff,rgba(33,102,172,.8))}
.legend .ticks{color:#666}
nav{margin:10px 0;display:flex;flex-direction:column;gap:6px}
nav .row{display:flex;flex-wrap:wrap;gap:6px;align-items:center}
nav .label{font-size:12px;color:#555;width:70px}
button{font:inherit;font-size:12.5px;border:1px solid #c8ccd4;background:#fff;border-radius:5px;
  padding:2px 9px;cursor:pointer;max-width:340px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
button.on{background:#1d2330;color:#fff;border-color:#1d2330}
.top{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start;margin-bottom:10px}
#question{flex:1 1 400px;background:#fff;border:1px solid #dde0e6;border-radius:6px;padding:8px 12px}
#question .gold{color:#555;font-size:12.5px}
#summary table{border-collapse:collapse;font-size:12.5px;background:#fff}
#summary th,#summary td{border:1px solid #dde0e6;padding:2px 9px;text-align:center}
#summary td{cursor:pointer}
#summary td.on{outline:2px solid #1d2330}
#summary .label{font-size:12px;color:#555;margin-bottom:2px}
main{display:flex;gap:12px;overflow-x:auto;align-items:flex-start}
.col{flex:1 1 0;min-width:330px;background:#fff;border:1px solid #dde0e6;border-radius:6px;padding:8px 10px}
.col h2{font-size:15px;margin:0}
.col .formula{font-size:12px;color:#555;margin:1px 0 3px}
.col .stats{font-size:12.5px;margin-bottom:6px}
.col .none{color:#888;font-style:italic}
.out{border-left:4px solid #bbb;padding:3px 0 3px 7px;margin:6px 0}
.out.ok{border-color:#2e9d4f}.out.bad{border-color:#c8392b}
.out .head{font-size:12px;color:#333;margin-bottom:1px}
.out .head .mark{font-weight:600}
.out.ok .mark{color:#2e7d32}.out.bad .mark{color:#b3261e}
.toks{font:12.5px/1.6 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
  word-break:break-word}
.tok{border-radius:2px;cursor:pointer}
.tok:hover,.tok.pin{outline:1.5px solid #1d2330}
.tok.clip{text-decoration:underline dotted #000}
.tok.eos{color:#333;font-style:italic}
.rw{font:600 9.5px/1 system-ui,sans-serif;border-radius:6px;padding:1px 4px;margin:0 2px;white-space:nowrap;
  vertical-align:2px;color:#fff;background:#777}
.rw.pos{background:#2e9d4f}
.gap{font:11px system-ui,sans-serif;white-space:nowrap;color:#555;background:#e8eaee;border-radius:8px;
  padding:0 7px;margin:0 3px}
.flag{font-size:11px;color:#8a5a00;background:#fff3d6;border-radius:6px;padding:0 5px}
#panel{position:fixed;left:0;right:0;bottom:0;background:#1d2330;color:#fff;padding:6px 20px 8px;
  font-size:12.5px;display:flex;flex-wrap:wrap;gap:2px 20px;align-items:baseline;
  box-shadow:0 -2px 10px rgba(0,0,0,.2)}
#panel .where{color:#b9c0cc;font-size:11.5px;width:100%}
#panel b{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600;color:#ffd479}
#panel .tokname{font-family:ui-monospace,Menlo,Consolas,monospace;background:#39414f;padding:0 4px;border-radius:3px}
"""

JS = r"""
const D = JSON.parse(document.getElementById("data").textContent);
const allSteps = [...new Set(Object.values(D.steps).flat())].sort((a, b) => a - b);
const S = {q: 0, mode: "methods", step: allSteps[0], method: D.methods[0], pin: null};
const FORMULA = {
  grpo_outcome: "outcome supervision (4.1.2): A = (r - mean) / std on every token",
  grpo_process: "process supervision (4.1.3): A_t = sum of normalised step rewards ending at or after t",
  ppo: "PPO (eq. 1): A_t = GAE over the value model V, whitened",
  online_rft: "online RFT (5.2.1): gradient coefficient 1 if correct, else 0",
  rft: "RFT (5.2.1): gradient coefficient 1 if correct, else 0",
};
const ADV_NAME = {ppo: "advantage (GAE, whitened)", rft: "gradient coefficient", online_rft: "gradient coefficient"};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function signed(x) { return (x > 0 ? "+" : "") + x; }
function colour(a) {
  const t = Math.max(-1, Math.min(1, a / D.scale));
  return "rgba(" + (t >= 0 ? "33,102,172," : "178,24,43,") + (Math.abs(t) * 0.8).toFixed(3) + ")";
}
function group(m, s, q) { return ((D.groups[m] || {})[s] || {})[q]; }
function stepName(m, s) {
  const st = D.steps[m] || allSteps;
  return "step " + s + (s === st[0] ? " (first)" : s === st[st.length - 1] ? " (last)" : "");
}
function button(text, on, click, title) {
  const b = el("button", on ? "on" : "", text);
  b.onclick = click;
  if (title) b.title = title;
  return b;
}
function navRow(label, buttons) {
  const r = el("div", "row");
  r.append(el("span", "label", label), ...buttons);
  return r;
}

function controls() {
  const nav = document.getElementById("controls");
  nav.replaceChildren(
    navRow("question", D.questions.map((q, i) =>
      button("Q" + (i + 1) + ": " + q.text, i === S.q, () => { S.q = i; render(); }, q.text))),
    navRow("compare", [
      button("the methods at one step", S.mode === "methods", () => { S.mode = "methods"; render(); }),
      button("one method over training", S.mode === "steps", () => { S.mode = "steps"; render(); })]),
    S.mode === "methods"
      ? navRow("step", allSteps.map(s => button("step " + s, s === S.step, () => { S.step = s; render(); })))
      : navRow("method", D.methods.map(m => button(m, m === S.method, () => { S.method = m; render(); }))));
}

function question() {
  const q = D.questions[S.q], box = document.getElementById("question");
  box.replaceChildren(el("div", "", q.text), el("div", "gold", "gold answer: " + q.answer));
}

// How the question's group changes: correct outputs and mean reward, per method and step.
function summary() {
  const t = el("table");
  const head = el("tr");
  head.append(el("th", "", "method"), ...allSteps.map(s => el("th", "", "step " + s)));
  t.append(head);
  for (const m of D.methods) {
    const tr = el("tr");
    tr.append(el("th", "", m));
    for (const s of allSteps) {
      const g = group(m, s, S.q);
      const td = el("td", "", g ? g.correct + "/" + g.G + " \u00b7 " + g.mean : "-");
      const on = S.mode === "methods" ? s === S.step : m === S.method;
      if (g && on) td.className = "on";
      td.onclick = () => { S.mode = "methods"; S.step = s; render(); };
      tr.append(td);
    }
    t.append(tr);
  }
  document.getElementById("summary").replaceChildren(
    el("div", "label", "the group at each recorded step: correct of G \u00b7 group mean (click to open)"), t);
}

function column(m, s) {
  const c = el("div", "col"), g = group(m, s, S.q);
  c.append(el("h2", "", S.mode === "methods" ? m : stepName(m, s)), el("div", "formula", FORMULA[m] || m));
  if (!g) { c.append(el("div", "none", "not recorded at step " + s)); return c; }
  const shown = g.outputs.length < g.G ? " (showing " + g.outputs.length + ")" : "";
  c.append(el("div", "stats", g.correct + " of G = " + g.G + " correct" + shown +
    " \u00b7 group mean " + g.mean + " \u00b7 std " + g.std +
    (g.std === 0 && m.startsWith("grpo") ? " (no signal: advantages 0)" : "")));
  for (const o of g.outputs) c.append(output(m, s, o));
  return c;
}

// index in the whole response of the k-th shown token (the middle of a long output is cut)
function position(o, k) { return o.gap && k >= o.gap[0] ? k + o.gap[1] : k; }

function output(m, s, o) {
  const box = el("div", "out " + (o.correct ? "ok" : "bad"));
  const a = o.advantage, first = a[0], last = a[a.length - 1];
  const adv = first === last ? "A " + signed(first) : "A " + signed(first) + " \u2192 " + signed(last);
  const head = el("div", "head");
  head.append(el("span", "mark", (o.correct ? "\u2713 correct" : "\u2717 wrong")),
    " \u00b7 output " + (o.i + 1) + " \u00b7 " + o.n + " tokens \u00b7 " + adv + " ");
  if (o.truncated) head.append(el("span", "flag", "hit max_new_tokens"));
  const toks = el("div", "toks"), reward = new Map(o.rewards);
  o.tokens.forEach((text, k) => {
    if (o.gap && k === o.gap[0]) toks.append(el("span", "gap", "\u22ef " + o.gap[1] + " tokens not shown \u22ef"));
    const r = reward.get(position(o, k));
    // a step's reward tag goes at the end of its line, before the token's own line break
    const body = r === undefined ? text : text.replace(/\n+$/, "");
    const t = el("span", "tok" + (o.clipped[k] ? " clip" : "") + (text === D.eos ? " eos" : ""), body);
    t.style.background = colour(a[k]);
    t.onmouseenter = () => { if (!S.pin) show(m, s, o, k); };
    t.onclick = () => {
      if (S.pin) S.pin.classList.remove("pin");
      S.pin = S.pin === t ? null : t;
      if (S.pin) t.classList.add("pin");
      show(m, s, o, k);
    };
    toks.append(t);
    if (r !== undefined) toks.append(el("span", "rw" + (r > 0 ? " pos" : ""), "r " + r), text.slice(body.length));
  });
  box.append(head, toks);
  return box;
}

function show(m, s, o, k) {
  const t = position(o, k), r = new Map(o.rewards).get(t);
  const cells = [
    [ADV_NAME[m] || "advantage A", signed(o.advantage[k])],
    ["reward landing here", r === undefined ? "-" : r],
    ["ratio \u03c0\u03b8/\u03c0old", o.ratio[k]],
    ["clipped", o.clipped[k] ? "yes" : "no"],
    ["k3 KL to \u03c0ref", o.kl[k]],
  ];
  if (o.value) cells.push(["value V", o.value[k]]);
  if (o.return) cells.push(["return (GAE target)", o.return[k]]);
  const tok = el("span", "cell");
  tok.append("token ", el("span", "tokname", JSON.stringify(o.tokens[k])), " (" + (t + 1) + " of " + o.n + ")");
  document.getElementById("panel").replaceChildren(
    el("div", "where", m + " \u00b7 step " + s + " \u00b7 output " + (o.i + 1) +
      (S.pin ? " \u00b7 pinned: click the token again to release" : " \u00b7 hover a token, click to pin it")),
    tok, ...cells.map(([name, value]) => {
      const c = el("span", "cell", name + " ");
      c.append(el("b", "", String(value)));
      return c;
    }));
}

function render() {
  controls(); question(); summary();
  const cols = S.mode === "methods" ? D.methods.map(m => [m, S.step]) : D.steps[S.method].map(s => [S.method, s]);
  document.getElementById("columns").replaceChildren(...cols.map(([m, s]) => column(m, s)));
  // the panel starts on the first output's last token: where an outcome reward lands
  const [m, s] = cols[0], g = group(m, s, S.q);
  if (g && !S.pin) show(m, s, g.outputs[0], g.outputs[0].tokens.length - 1);
}

document.getElementById("ticks").textContent =
  "scale: -" + D.scale + " \u2026 0 \u2026 +" + D.scale + " (beyond: full colour); underlined: clipped " +
  "(recorded before the update: with rl_mu = 1 nothing is)";
render();
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m support.viewer", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="an out_dir (every run under its rl/) or one run folder")
    parser.add_argument("--out", default=None, help=f"the page to write (default: PATH/{PAGE_FILE})")
    args = parser.parse_args(argv)
    try:
        out = write_page(args.path, args.out)
    except BadInput as e:
        sys.exit(f"support.viewer: {e}")
    except OSError as e:  # --out names a folder, or a place it cannot write
        sys.exit(f"support.viewer: cannot write the page to {e.filename}: {e.strerror}; give --out a file path")
    print(out)


if __name__ == "__main__":
    main()
