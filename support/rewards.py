"""Where grpo.py's rewards come from: the rule grader, the per-step checker, and the learned
ORM and PRM (DeepSeekMath sections 4.1.2-4.1.3, 4.2).

    python grpo.py configs/classroom.py --rl_reward=orm                          # outcome RM
    python grpo.py configs/classroom.py --rl_reward=prm                          # process RM
    python grpo.py configs/classroom.py --rl_reward=orm --rl_iteration_steps=20  # iterative RL

A reward is a list of (column, value) per output: outcome supervision puts one value on the
output's last token; process supervision one value on the last token of every reasoning step.
The rule-based labels (correctness, outcome_labels, process_labels) say both where a reward sits
and what it is; a learned reward model reads the same positions and gives its own value.

A reward model is a copy of the policy (trunk and LM head) with a scalar head `score` (model.py,
head="reward"), trained with binary cross-entropy to predict the rule grader's labels:
    ORM: is the output's final answer right?  read at the output's last token;
    PRM: is this reasoning step right?        read at the last token of each step.
Its reward is sigmoid(log-odds), a probability of being right, in (0, 1), where the log-odds at
token t add two terms (rl_rm_likelihood; without it, only the first, as the paper's RMs):
    log-odds_t = w . h_t  +  min over the stated values' tokens s <= t of log pi_phi(o_s | q, o_<s)
h_t is the trunk's last hidden state (D,), w the scalar head; the second term is how surprised
the RM's own language model is by the most surprising result the output has written down so
far ("= 38", "\\boxed{38}"; tasks.result_spans; 0 before the first): one value it would not
have written lowers the reward of that step and of every later one (an error propagates), a
value it would have written itself costs ~0. (In our trials the sum of the log-probs ranked the
classroom's held-out samples less well than the minimum.) BCE trains both terms, the LM head
included, so the RM learns to find wrong results unlikely. Why: a 1M-parameter trunk read
through a new zero head alone stays near chance (held-out ROC AUC 0.517 ORM, 0.655 PRM: git
show 8cccae9:results/classroom.md); the information is in its next-token predictions (most of
the classroom policy's wrong samples hold an arithmetic slip), and this term hands them to the
head. README "Learned reward models
that learn" gives the figures.

The paper trains its reward models on the policy's own samples and, in iterative RL (Algorithm
1), retrains them after each iteration on the new policy's samples plus "a replay mechanism that
incorporates 10% of historical data" (rl_rm_replay). Where we differ or the paper is silent:
  - its reward models start from DeepSeekMath-Base 7B (section 4.2); ours from an SFT checkpoint
    (the policy's, as InstructGPT's do, or rl_rm_init's: the classroom's is a longer SFT run, as
    the likelihood term is only as good as the RM's arithmetic; configs/classroom.py says why);
  - it does not evaluate them in the paper's RL section: ours are scored on held-out samples
    every time they are (re)trained, by accuracy at the 0.5 threshold and ROC AUC against the
    grader. Held out means questions that round did not train on; at a retraining, a held-out
    question may be one an earlier round trained on, when the run's questions repeat. So a
    learner sees whether the RM separates right from wrong before trusting the RL that follows.
    AUC is the chance that a random right sample scores above a random wrong one: 0.5 is a
    coin, 1.0 a perfect ranking.

Tests: pytest -q tests/test_grpo.py
"""

import random
from bisect import bisect_right

import torch
import torch.nn.functional as F

from model import padding_positions_and_mask
from support import distributed, rl_support, tasks, training


# ---------------------------------------------------------------------------------------------
# Rule-based rewards: the grader's verdicts, and where each reward lands
# ---------------------------------------------------------------------------------------------


def correctness(rollouts, grader, failures):
    """I(o): 1.0 where the output's final answer equals the gold answer (evaluate.Grader)."""
    rows = list(range(len(rollouts.texts)))
    graded = guarded(lambda rs: grader.grade([rollouts.texts[r] for r in rs],
                                             [rollouts.problems[r].answer for r in rs]),
                     rollouts, rows, failures)
    return torch.tensor([g or 0.0 for g in graded], device=rollouts.tokens.device)  # (N,)


def outcome_labels(rollouts, correct):
    """[(column of the last response token, I(o))] per output."""
    return [[(rollouts.response_columns(r)[-1], float(correct[r]))] for r in range(len(correct))]


def process_labels(rollouts, tokenizer, failures):
    """tasks.step_rewards per output: [(column of the step's last token, 0/1)] per step."""
    def label(rows):
        out = []
        for r in rows:
            steps = tasks.step_rewards(rollouts.problems[r], rollouts.texts[r])
            ends = step_end_columns(rollouts, r, tokenizer, [end for end, _ in steps])
            out.append(list(zip(ends, [value for _, value in steps])))
        return out
    return [labels or [] for labels in guarded(label, rollouts, list(range(len(rollouts.texts))), failures)]


def step_end_columns(rollouts, row, tokenizer, step_ends):
    """The log-prob column of the token that holds character `end - 1` of each step (the paper's
    'last token of each step')."""
    columns, _, token_of = response_offsets(rollouts, row, tokenizer)
    return [columns[token_of(end - 1)] for end in step_ends]


def result_columns(rollouts, tokenizer):
    """Per output, the log-prob columns of the tokens that hold the values it states
    (tasks.result_spans): where a likelihood reward model reads its LM's surprise."""
    out = []
    for row in range(len(rollouts.texts)):
        columns, text, token_of = response_offsets(rollouts, row, tokenizer)
        out.append(sorted({columns[token_of(ch)] for start, end in tasks.result_spans(text) for ch in range(start, end)}))
    return out


def response_offsets(rollouts, row, tokenizer):
    """A response's log-prob columns, its text and character -> token index. Offsets come from
    the replacement-decoded text (a token may hold part of a UTF-8 character), the same text
    the grader and the step checker read."""
    columns = rollouts.response_columns(row)
    text, starts = tokenizer.decode_with_offsets([t for t in rollouts.tokens[row, 1:][columns].tolist()
                                                  if t not in tokenizer.eos_ids])
    return columns, text, lambda ch: max(0, bisect_right(starts, ch) - 1)


def guarded(reward_fn, rollouts, rows, failures):
    """reward_fn(rows) -> one result per row. If it raises, each row is retried alone and a row
    that still raises is reported with its question and output and scores nothing (None)."""
    try:
        return reward_fn(rows)
    except Exception:
        results = []
        for row in rows:
            try:
                results += reward_fn([row])
            except Exception as e:
                failures.append(row)
                distributed.print0(
                    f"\nreward function failed ({type(e).__name__}: {e}); no reward (outcome: 0) for\n"
                    f"  question: {rollouts.problems[row].question!r}\n  output:   {rollouts.texts[row]!r}")
                results.append(None)
        return results


# ---------------------------------------------------------------------------------------------
# The learned reward model
# ---------------------------------------------------------------------------------------------


def samples_of(rollouts, labels, questions, results):
    """Training samples, one per output: its token ids, the labelled columns and their 0/1
    labels, its result columns, and which question it answers (held-out splits are by
    question, never by output)."""
    samples = []
    for row, row_labels in enumerate(labels):
        n = int(rollouts.mask[row].sum())
        samples.append({"tokens": rollouts.tokens[row, :n].tolist(), "question": questions[row],
                        "columns": [c for c, _ in row_labels], "labels": [v for _, v in row_labels],
                        "results": results[row]})
    return samples


def split_by_question(samples, heldout_share, seed):
    """(train, held-out): a share of the questions, with all their outputs, is held out."""
    questions = sorted({s["question"] for s in samples})
    held = set(random.Random(seed).sample(questions, round(heldout_share * len(questions))))
    return [s for s in samples if s["question"] not in held], [s for s in samples if s["question"] in held]


def roc_auc(scores, labels):
    """P(score of a random positive > score of a random negative), ties counting 1/2: the
    Mann-Whitney U statistic over n_pos * n_neg. None when one class is absent."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(1 for y in labels if y > 0.5)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = sum(r for r, y in zip(ranks, labels) if y > 0.5)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class RewardModel:
    """The reward model, its optimizer, and the data it has seen (for replay)."""

    def __init__(self, model, optimizer, cfg, pad_id, d):
        self.model, self.optimizer, self.cfg, self.pad_id, self.d = model, optimizer, cfg, pad_id, d
        self.history = []  # every sample it has trained on: the replay pool
        self.pending = []  # the current iteration's samples, for the next retraining
        self.evaluations = []  # held-out accuracy and AUC after each (re)training

    def scores_at(self, tokens, mask, columns, results):
        """The log-odds at each sample's labelled columns, concatenated. A reward at log-prob
        column j is about token j + 1 (the step's, or the output's, last token), which a causal
        model has read only at position j + 1: w . h is read there. (A value model's V at column
        j must not have seen token j + 1; a reward model must have.) The likelihood term at
        column j is the least log pi_phi over the result columns <= j."""
        positions, attn_mask = padding_positions_and_mask(mask)
        with training.autocast(self.d.device, self.cfg.dtype):
            if not self.cfg.rl_rm_likelihood:
                log_odds = self.model(tokens, positions, attn_mask).float()[:, 1:]  # (n, L-1): w . h_{j+1}
            else:
                # targets[:, j] = token j + 1, so logp[:, j] is log-prob column j; the last
                # position predicts nothing (its target repeats the last token, never a result column)
                targets = torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)  # (n, L)
                score, logp = self.model(tokens, positions, attn_mask, targets=targets)  # (n, L) each
                is_result = torch.zeros_like(mask)
                for i, cols in enumerate(results):
                    is_result[i, cols] = True
                # log-probs are <= 0, so the 0s elsewhere never win the running minimum
                surprise = torch.where(is_result, logp.float(), 0.0)[:, :-1].cummin(-1).values  # (n, L-1)
                log_odds = score.float()[:, 1:] + surprise  # (n, L-1): column j
        return torch.cat([log_odds[i, cols] for i, cols in enumerate(columns)])

    def batches(self, samples):
        for rows in rl_support.micro_batches(len(samples), self.cfg.rl_micro_batch):
            batch = [samples[i] for i in rows]
            tokens, mask = rl_support.right_padded([s["tokens"] for s in batch], self.pad_id, self.d.device)
            labels = torch.tensor([v for s in batch for v in s["labels"]], device=self.d.device)
            yield tokens, mask, [s["columns"] for s in batch], [s["results"] for s in batch], labels

    def fit(self, new_samples, heldout, step, checkpoint):
        """rl_rm_epochs passes over the new samples plus a replay of rl_rm_replay of all earlier
        ones (BCE), then the held-out evaluation. Returns that evaluation (also kept)."""
        cfg = self.cfg
        rng = random.Random(cfg.seed + len(self.history))
        data = new_samples + rng.sample(self.history, int(cfg.rl_rm_replay * len(self.history)))
        losses = []
        for _ in range(cfg.rl_rm_epochs):
            rng.shuffle(data)
            for tokens, mask, columns, results, labels in self.batches(data):
                scores = self.scores_at(tokens, mask, columns, results)
                # a micro-batch of outputs with no labelled position (empty outputs, a step checker
                # that failed) has nothing to fit: its loss is 0, not the NaN of a mean over nothing
                loss = F.binary_cross_entropy_with_logits(scores, labels) if len(labels) else scores.sum()
                loss.backward()
                norm = training.clip_gradients(self.model, cfg.rl_grad_clip)
                training.check_finite(step, checkpoint, fix="lower rl_rm_lr", reward_model_loss=float(loss.detach()),
                                      reward_model_grad_norm=norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        self.history.extend(new_samples)
        result = {"step": step, "train_samples": len(data), "loss": sum(losses[-8:]) / max(1, len(losses[-8:])),
                  **self.evaluate(heldout)}
        self.evaluations.append(result)
        return result

    @torch.no_grad()
    def evaluate(self, samples):
        """Accuracy (score > 0, i.e. sigmoid > 0.5) and ROC AUC against the grader's labels, on
        every labelled position of every rank's held-out samples."""
        scores, labels = [], []
        for tokens, mask, columns, results, batch_labels in self.batches(samples):
            scores += self.scores_at(tokens, mask, columns, results).tolist()
            labels += batch_labels.tolist()
        scores = sum(distributed.all_gather(scores, self.d), [])
        labels = sum(distributed.all_gather(labels, self.d), [])
        correct = sum((s > 0) == (y > 0.5) for s, y in zip(scores, labels))
        n = len(labels)  # 0: nothing held out, so no figure (None), not 0
        return {"heldout_positions": n, "heldout_accuracy": correct / n if n else None,
                "heldout_auc": roc_auc(scores, labels), "heldout_positive_share": sum(labels) / n if n else None}

    @torch.no_grad()
    def rewards(self, tokens, mask, labels, results):
        """sigmoid(log-odds) at each labelled column: [(column, reward)] per row. The rule labels
        only say where to read (the last token, or each step's last token)."""
        out = []
        for rows in rl_support.micro_batches(len(labels), self.cfg.rl_micro_batch):
            columns = [[c for c, _ in labels[r]] for r in rows]
            scores = self.scores_at(tokens[rows], mask[rows], columns, [results[r] for r in rows]).sigmoid().tolist()
            for r, cols in zip(rows, columns):
                out.append(list(zip(cols, scores[:len(cols)])))
                scores = scores[len(cols):]
        return out

    def state(self):
        return {"model": distributed.full_state_dict(self.model),
                "optimizer": training.optimizer_state(self.optimizer, self.model),
                "history": self.history, "pending": self.pending, "evaluations": self.evaluations}

    def load_state(self, state):
        distributed.load_full_state_dict(self.model, state["model"])
        training.load_optimizer_state(self.optimizer, self.model, state["optimizer"])
        self.history, self.pending, self.evaluations = state["history"], state["pending"], state["evaluations"]
