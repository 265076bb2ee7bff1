"""grpo.py: advantages, objectives, KL and GAE against hand computations; the GRPO gradient in
its policy-gradient form (paper eq. 5); a raising reward function is reported; short real runs
of every algorithm, exact resume, and a 2-process FSDP run equal to a 1-process run."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import evaluate
import grpo
from model import ModelArgs, Transformer, sequence_logprobs
from support import config, distributed, rl_support, tasks, training
from support.fileio import BadInput
from support.tokenizer import COT_SUFFIX, train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    problems = tasks.classroom_problems("train", 100, 1234)
    return train_bpe([p.question + " " + tasks.render_solution(p, "cot") for p in problems], 400)


def response_mask_of(spans, T):
    """(N, T) bool with columns [start, end) set per row."""
    mask = torch.zeros(len(spans), T, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        mask[row, start:end] = True
    return mask


# ------------------------------------------------------------------------- advantages


def test_outcome_advantage_is_the_normalised_reward_on_every_token():
    T = 6
    spans = [(1, 4), (2, 6), (1, 5), (0, 3), (2, 4), (1, 6)]  # two questions, G = 3
    mask = response_mask_of(spans, T)
    outcome = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    rewards, reward_mask = torch.zeros(6, T), torch.zeros(6, T, dtype=torch.bool)
    for row, ((_, end), r) in enumerate(zip(spans, outcome)):
        rewards[row, end - 1], reward_mask[row, end - 1] = r, True
    advantages, _, _, zero_var = grpo.group_advantages(rewards, reward_mask, mask, 3)
    # group 1: r = (1, 0, 0): mean 1/3, std sqrt(2/9); group 2: r = (1, 1, 0): mean 2/3, std sqrt(2/9)
    s = math.sqrt(2 / 9)
    expected = [(1 - 1 / 3) / s, -1 / 3 / s, -1 / 3 / s, 1 / 3 / s, 1 / 3 / s, -2 / 3 / s]
    for row, ((start, end), a) in enumerate(zip(spans, expected)):
        assert torch.allclose(advantages[row, start:end], torch.full((end - start,), a), atol=1e-5)
        assert advantages[row, :start].abs().sum() == 0 and advantages[row, end:].abs().sum() == 0
    assert zero_var == 0


def test_a_group_whose_rewards_spread_less_than_min_std_gets_no_advantage():
    # an untrained reward model: 0.4934 +- 0.0001 for every output; GRPO's 1/std would make it +-1
    rewards = torch.tensor([[0.4933], [0.4935], [0.4934], [0.10], [0.90], [0.50]])
    mask = torch.ones(6, 1, dtype=torch.bool)
    advantages, _, _, flat = grpo.group_advantages(rewards, mask, mask, 3, min_std=0.01)
    assert flat == 1 and advantages[:3].abs().max() == 0 and advantages[3:].abs().max() > 1
    noisy, _, _, flat = grpo.group_advantages(rewards, mask, mask, 3)
    assert flat == 0 and noisy[:3].abs().max() > 1


def test_roc_auc_counts_ordered_pairs_and_ties_half():
    from support.rewards import roc_auc
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5
    assert roc_auc([0.2, 0.9], [1, 1]) is None


def test_process_advantage_sums_the_normalised_rewards_of_later_steps():
    T = 6
    mask = response_mask_of([(0, 5), (1, 6)], T)
    rewards, reward_mask = torch.zeros(2, T), torch.zeros(2, T, dtype=torch.bool)
    for row, column, r in [(0, 1, 1.0), (0, 3, 0.0), (1, 2, 1.0)]:  # step ends and their rewards
        rewards[row, column], reward_mask[row, column] = r, True
    advantages, _, _, _ = grpo.group_advantages(rewards, reward_mask, mask, 2)
    # R = (1, 0, 1): mean 2/3, std sqrt(2/9); normalised: 1 -> 1/sqrt(2), 0 -> -sqrt(2)
    hi, lo = 1 / math.sqrt(2), -math.sqrt(2)
    expected = torch.tensor([[hi + lo, hi + lo, lo, lo, 0, 0],  # steps end at columns 1 and 3
                             [0, hi, hi, 0, 0, 0]])  # one step, ending at column 2
    assert torch.allclose(advantages, expected, atol=1e-5)


def test_zero_variance_group_gives_zero_advantage_without_nan():
    mask = response_mask_of([(0, 3)] * 4, 4)
    rewards, reward_mask = torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool)
    rewards[:2, 2] = 1.0  # group 1: both correct; group 2: both wrong
    reward_mask[:, 2] = True
    advantages, _, _, zero_var = grpo.group_advantages(rewards, reward_mask, mask, 2)
    assert not advantages.isnan().any() and advantages.abs().sum() == 0
    assert zero_var == 2


# ------------------------------------------------------------------------- objectives


def test_grpo_objective_and_k3_kl_match_a_direct_computation():
    torch.manual_seed(0)
    N, T, eps, beta = 3, 5, 0.2, 0.04
    logp, old, ref = -torch.rand(N, T) * 3, -torch.rand(N, T) * 3, -torch.rand(N, T) * 3
    ref[0, 0] = -80.0  # an extreme ratio: the clamped KL stays finite
    advantages = torch.randn(N, T)
    mask = response_mask_of([(0, 5), (1, 4), (2, 3)], T)
    loss, info = grpo.grpo_loss(logp, old, ref, advantages, mask, eps, beta, n_outputs=N)
    expected = 0.0
    for i in range(N):
        terms = []
        for t in mask[i].nonzero().squeeze(-1).tolist():
            r = math.exp(logp[i, t] - old[i, t])
            a = float(advantages[i, t])
            log_ratio = max(-20.0, min(20.0, float(ref[i, t] - logp[i, t])))
            kl = min(10.0, math.exp(log_ratio) - log_ratio - 1)
            assert kl >= 0 and abs(kl - float(info["kl"][i, t])) < 1e-4
            terms.append(min(r * a, max(1 - eps, min(1 + eps, r)) * a) - beta * kl)
        expected += -sum(terms) / len(terms) / N  # eq. 3: 1/G sum_i 1/|o_i| sum_t
    assert abs(expected - float(loss)) < 1e-5


def test_extreme_log_ratios_give_a_finite_loss_and_gradient():
    """exp(100) overflows float32: the surrogate and the KL clamp their log-ratios first (as verl
    does), so log-ratios of +-100 against pi_old and pi_ref leave loss and gradient finite."""
    old = torch.zeros(2, 4)
    logp = torch.tensor([[100.0, -100.0, 0.0, 50.0], [-100.0, 100.0, 3.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-100.0, 100.0, 0.0, 0.0], [100.0, -100.0, 0.0, 0.0]])
    advantages = torch.tensor([[0.0, 1.0, -1.0, 2.0], [-2.0, 0.0, 1.0, -1.0]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss, info = grpo.grpo_loss(logp, old, ref, advantages, mask, 0.2, 0.04, n_outputs=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert torch.isfinite(info["ratio"]).all() and torch.isfinite(info["kl"]).all()


def test_gae_matches_a_direct_loop_and_ppo_value_loss_is_clipped():
    torch.manual_seed(1)
    T, gamma, lam = 7, 0.9, 0.8
    spans = [(2, 7), (0, 4), (3, 5)]
    mask = response_mask_of(spans, T)
    rewards, values = torch.randn(3, T), torch.randn(3, T)
    advantages, returns = grpo.gae(rewards, values, mask, gamma, lam)
    for row, (start, end) in enumerate(spans):
        a_next = 0.0
        for t in reversed(range(start, end)):
            v_next = float(values[row, t + 1]) if t + 1 < end else 0.0
            delta = float(rewards[row, t]) + gamma * v_next - float(values[row, t])
            a_next = delta + gamma * lam * a_next
            assert abs(float(advantages[row, t]) - a_next) < 1e-5
            assert abs(float(returns[row, t]) - (a_next + float(values[row, t]))) < 1e-5
    assert advantages[~mask].abs().sum() == 0
    # the value loss keeps the worse of the unclipped and clipped errors
    zeros = torch.zeros(1, 1)
    one = torch.ones(1, 1, dtype=torch.bool)
    _, value_loss, _ = grpo.ppo_losses(zeros, zeros, zeros, torch.full((1, 1), 1.0), zeros,
                                       torch.full((1, 1), 2.0), one, 0.2, 0.2, n_outputs=1)
    assert abs(float(value_loss) - 0.5 * max((1 - 2) ** 2, (0.2 - 2) ** 2)) < 1e-6


def test_ppo_token_reward_is_the_score_minus_beta_log_ratio_on_response_tokens_only():
    """Eq. 2: r_t = r_phi - beta log(pi_old/pi_ref) at every response token, the score only where
    it was given (here the last token), and nothing outside the response."""
    torch.manual_seed(2)
    spans, T, beta = [(2, 7), (0, 4)], 7, 0.04
    mask = response_mask_of(spans, T)
    old_logp, ref_logp = torch.randn(2, T), torch.randn(2, T)
    scores = torch.zeros(2, T)
    scores[0, 6], scores[1, 3] = 1.0, -0.5
    token_rewards = grpo.ppo_token_rewards(scores, old_logp, ref_logp, mask, beta)
    for row, (start, end) in enumerate(spans):
        for t in range(T):
            expected = float(scores[row, t]) - (beta * float(old_logp[row, t] - ref_logp[row, t])
                                                if start <= t < end else 0.0)
            assert abs(float(token_rewards[row, t]) - expected) < 1e-6


def test_k3_gradient_is_eq5s_kl_coefficient_under_the_cap_and_zero_past_it():
    """d k3 / d log pi_theta = -(pi_ref/pi_theta - 1) (the beta term of eq. 5's GRPO row) while
    k3 <= KL_LIMIT; a token past the cap (log(pi_ref/pi_theta) > 2.61 or < -11) adds KL_LIMIT and
    no gradient."""
    log_ratios = torch.tensor([-12.0, -3.0, -0.5, 0.0, 0.7, 2.5, 2.7, 5.0])  # log(pi_ref/pi_theta)
    logp = torch.zeros(8, requires_grad=True)
    kl = grpo.k3_kl(logp, log_ratios)
    kl.sum().backward()
    under = log_ratios.exp() - log_ratios - 1 <= grpo.KL_LIMIT
    assert under.tolist() == [False, True, True, True, True, True, False, False]
    torch.testing.assert_close(logp.grad[under], -(log_ratios[under].exp() - 1))
    assert torch.all(logp.grad[~under] == 0) and torch.all(kl[~under] == grpo.KL_LIMIT)


def test_grpo_gradient_at_mu_1_is_the_policy_gradient_with_coefficient_a_plus_kl_term(tokenizer):
    """With pi_old = pi_theta (ratio 1), grad J_GRPO = 1/G sum_i 1/|o_i| sum_t
    (A_it + beta (pi_ref/pi_theta - 1)) grad log pi_theta (paper eq. 5, GRPO's row)."""
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tokenizer.n_vocab, dim=32, n_layer=2, n_head=4, n_kv_head=2,
                     intermediate_size=64, max_seq_len=64)
    policy, ref = Transformer(args), Transformer(args)
    tokens = torch.randint(0, tokenizer.n_vocab, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.bool)
    response = response_mask_of([(3, 11), (5, 11), (2, 8), (4, 11)], 11)
    advantages = torch.randn(4, 1).expand(4, 11) * response
    beta = 0.3

    def gradient(loss_fn):
        policy.zero_grad()
        logp = sequence_logprobs(policy, tokens, mask)
        loss_fn(logp).backward()
        return [p.grad.clone() for p in policy.parameters()]

    with torch.no_grad():
        ref_logp = sequence_logprobs(ref, tokens, mask)
    g_grpo = gradient(lambda logp: grpo.grpo_loss(logp, logp.detach(), ref_logp, advantages, response,
                                                  0.2, beta, n_outputs=4)[0])
    m = response.float()

    def policy_gradient(logp):
        coefficient = (advantages + beta * (torch.exp(ref_logp - logp) - 1)).detach()
        return -((coefficient * logp * m).sum(-1) / m.sum(-1)).mean()

    for a, b in zip(g_grpo, gradient(policy_gradient)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert sum(float(g.abs().sum()) for g in g_grpo) > 0


# ------------------------------------------------------------------------- rewards


def rollouts_of(tokenizer, problems, responses):
    prompts = [tokenizer.encode_prompt(p.question, COT_SUFFIX) for p in problems]
    ids = [tokenizer.encode_response(r) for r in responses]
    L = max(len(p) + len(r) for p, r in zip(prompts, ids))
    tokens = torch.zeros(len(prompts), L, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.bool)
    response = torch.zeros(len(prompts), L - 1, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, ids)):
        tokens[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, :len(p) + len(r)] = True
        response[i, len(p) - 1:len(p) + len(r) - 1] = True
    texts = [tokenizer.decode(r[:-1]) for r in ids]
    return grpo.Rollouts(problems, texts, tokens, mask, response, torch.zeros(len(prompts), dtype=torch.bool))


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_length_grouped_micro_batches_give_the_whole_batch_gradient_on_fewer_positions(tokenizer, algo):
    """Micro-batches of 2 rows of similar length, each cut to its longest row, accumulate the
    gradient (policy, and PPO's value model) of one pass over the whole padded batch, and read
    fewer positions; with one micro-batch the rows keep their order and the batch its width."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tokenizer.n_vocab, dim=32, n_layer=2, n_head=4, n_kv_head=2,
                     intermediate_size=64, max_seq_len=256)
    policy, ref, value = Transformer(args), Transformer(args), Transformer(args, head="scalar")
    problems = tasks.classroom_problems("train", 1, 5) * 6  # one question's group of 6 outputs
    responses = [(problems[0].solution * 4)[:n] for n in (5, 150, 12, 120, 30, 70)]
    rollouts = rollouts_of(tokenizer, problems, responses)
    N, L = rollouts.tokens.shape
    m = rollouts.response_mask
    run = SimpleNamespace(policy=policy, value=value, ref=ref)
    scored = SimpleNamespace(correct=torch.ones(N))

    def gradients(micro_batch):
        cfg = config.load_config(["configs/classroom.py", f"--rl_micro_batch={micro_batch}", f"--rl_algo={algo}"])
        torch.manual_seed(1)  # the same targets at every micro-batch size
        ref_logp = rl_support.logprobs_of(ref, rollouts, cfg)
        targets = grpo.Targets(torch.randn(N, L - 1) * m, None if algo == "grpo" else ref_logp + 0.1 * m, ref_logp,
                               None, None, 0, rl_support.values_of(value, rollouts, cfg), torch.randn(N, L - 1) * m)
        policy.zero_grad(), value.zero_grad()
        batches = rl_support.length_grouped_micro_batches(rollouts.mask, micro_batch)
        for rows, width in batches:
            grpo.micro_batch_loss(run, rollouts, scored, targets, rows, width, cfg)[0].backward()
        grads = [p.grad.clone() for model in (policy, value) if model is policy or algo == "ppo"
                 for p in model.parameters()]
        return grads, batches, ref_logp * m

    whole, (one,), ref_whole = gradients(N)
    assert one == (list(range(N)), L)  # the rows in their order, the batch's width
    grouped, batches, ref_grouped = gradients(2)
    lengths = rollouts.mask.sum(-1).tolist()
    assert sorted(r for rows, _ in batches for r in rows) == list(range(N))
    assert all(width == max(lengths[r] for r in rows) for rows, width in batches)
    longest_first = sorted(lengths, reverse=True)  # pairs: the 1st and 2nd longest, the 3rd and 4th, ...
    assert sum(len(rows) * width for rows, width in batches) == 2 * sum(longest_first[0::2]) < N * L
    torch.testing.assert_close(ref_grouped, ref_whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(grouped, whole):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert sum(float(g.abs().sum()) for g in whole) > 0


def test_process_rewards_land_on_each_steps_last_token(tokenizer):
    problem = tasks.classroom_problems("train", 1, 5)[0]
    wrong = problem.solution.replace(f"= {problem.steps[0].result}.", f"= {int(problem.steps[0].result) + 1}.", 1)
    rollouts = rollouts_of(tokenizer, [problem, problem], [problem.solution, wrong])
    labels = grpo.process_labels(rollouts, tokenizer, [])
    assert [v for _, v in labels[0]] == [1.0] * (len(problem.steps) + 1)
    assert labels[1][0][1] == 0.0
    for row in range(2):
        ends = [end for end, _ in tasks.step_rewards(problem, rollouts.texts[row])]
        first = rollouts.response_columns(row)[0] + 1  # the first response token (column j scores token j + 1)
        for end, (column, _) in zip(ends, labels[row]):
            before = tokenizer.decode(rollouts.tokens[row, first:column + 1].tolist())
            through = tokenizer.decode(rollouts.tokens[row, first:column + 2].tolist())
            assert len(before) < end <= len(through)  # this token holds the step's last character


def test_process_labels_of_an_output_holding_invalid_utf8(tokenizer):
    # a sampled output whose tokens cut a UTF-8 character used to raise UnicodeDecodeError
    problem = tasks.classroom_problems("train", 1, 5)[0]
    rollouts = rollouts_of(tokenizer, [problem], [problem.solution])
    first = rollouts.response_columns(0)[0] + 1
    rollouts.tokens[0, first] = tokenizer.encoding.encode_single_token(bytes([0xe2]))  # a lone lead byte
    rollouts.texts[0] = tokenizer.decode(rollouts.tokens[0, first:-1].tolist())
    failures = []
    labels = grpo.process_labels(rollouts, tokenizer, failures)
    assert failures == [] and "\ufffd" in rollouts.texts[0] and len(labels[0]) == len(problem.steps) + 1


def test_result_columns_hold_exactly_the_stated_values(tokenizer):
    problem = tasks.classroom_problems("train", 1, 5)[0]
    rollouts = rollouts_of(tokenizer, [problem], [problem.solution])
    columns = grpo.result_columns(rollouts, tokenizer)[0]
    stated = "".join(tokenizer.decode([rollouts.tokens[0, c + 1].item()]) for c in columns)
    expected = "".join(step.result for step in problem.steps) + problem.answer
    assert stated.replace(" ", "").replace(".", "") == expected  # tokens may carry a space or a full stop


def test_likelihood_reward_model_log_odds_are_the_head_plus_the_least_lm_log_prob_of_the_results(tokenizer):
    # log-odds_j = w . h_{j+1} + min over result columns c <= j of log pi(token c + 1) (0 before
    # the first), computed here from the LM head and the trunk separately
    from support.config import load_config
    from support.rewards import RewardModel
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tokenizer.n_vocab, n_layer=2, dim=32, n_head=2, n_kv_head=2,
                     intermediate_size=64, max_seq_len=256)
    model = Transformer(args, head="reward")
    torch.nn.init.normal_(model.score.weight)  # a head that reads something
    problems = tasks.classroom_problems("train", 2, 5)
    rollouts = rollouts_of(tokenizer, problems, [problems[0].solution, problems[1].solution + " 7 + 1 = 9."])
    results = grpo.result_columns(rollouts, tokenizer)
    columns = [rollouts.response_columns(r) for r in range(2)]
    cfg = load_config(["configs/classroom.py", "--rl_micro_batch=2"])
    rm = RewardModel(model, None, cfg, tokenizer.pad_id, distributed.setup("cpu"))
    got = rm.scores_at(rollouts.tokens, rollouts.mask, columns, results)
    with torch.no_grad():
        logp = sequence_logprobs(lambda *a, **k: model(*a, **k)[1], rollouts.tokens, rollouts.mask)
        head = model.score(model.trunk(rollouts.tokens)).squeeze(-1)  # right padding: causal = padded mask
    expected = [head[r, c + 1] + min([logp[r, s] for s in results[r] if s <= c], default=0.0)
                for r in range(2) for c in columns[r]]
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)


def test_a_reward_model_fits_past_outputs_without_labels_and_reports_no_held_out_figure_without_any(tokenizer):
    """A micro-batch of outputs with no labelled position (empty outputs) is a loss of 0, not
    a NaN that stops the run as diverged; with nothing held out, accuracy is None, not 0."""
    from support.rewards import RewardModel, samples_of
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tokenizer.n_vocab, n_layer=1, dim=32, n_head=2, n_kv_head=2,
                     intermediate_size=64, max_seq_len=256)
    model = Transformer(args, head="reward")
    problems = tasks.classroom_problems("train", 2, 5)
    rollouts = rollouts_of(tokenizer, problems, [problems[0].solution, ""])
    labels = [grpo.outcome_labels(rollouts, torch.tensor([1.0, 0.0]))[0], []]  # the empty output: no label
    samples = samples_of(rollouts, labels, [0, 1], grpo.result_columns(rollouts, tokenizer))
    cfg = config.load_config(["configs/classroom.py", "--rl_micro_batch=1", "--rl_rm_epochs=1"])
    rm = RewardModel(model, training.make_adamw(model, 1e-3, 0.0, training.PAPER_BETAS, torch.device("cpu")), cfg,
                     tokenizer.pad_id, distributed.setup("cpu"))
    result = rm.fit(samples, [], 0, "nowhere")
    assert math.isfinite(result["loss"]) and result["heldout_positions"] == 0
    assert result["heldout_accuracy"] is None and result["heldout_auc"] is None


def test_only_grpo_is_warned_of_a_flat_reward_and_a_collapse_names_what_was_saved(tmp_path, capsys):
    cfg = config.load_config(["configs/classroom.py", "--rl_flat_reward_steps=2", "--rl_algo=ppo"])
    rl_support.watch_signal([0.0, 0.0], None, 0.5, cfg, 5, str(tmp_path))
    assert "WARNING" not in capsys.readouterr().out  # PPO's groups of one output have no spread
    cfg = config.load_config(["configs/classroom.py", "--rl_flat_reward_steps=2"])
    rl_support.watch_signal([0.0, 0.0], None, 0.5, cfg, 5, str(tmp_path))
    assert "GRPO learns from noise" in capsys.readouterr().out
    with pytest.raises(training.Diverged, match="no checkpoint was saved"):
        rl_support.watch_signal([1.0], 0.1, 0.5, cfg, 5, str(tmp_path))
    outcome = config.load_config(["configs/classroom.py", "--rl_questions_per_step=3", "--rl_rm_questions=512"])
    rl_support.check_rl_config(outcome, 3, grpo.ALGOS, grpo.REWARDS)  # no reward model: rl_rm_questions unused


def test_a_raising_reward_function_is_reported_with_question_and_output(tokenizer, monkeypatch, capsys):
    problems = tasks.classroom_problems("train", 2, 5)
    rollouts = rollouts_of(tokenizer, problems, ["fine 1 + 1 = 2.", "boom"])
    real = tasks.step_rewards

    def fragile(problem, response):
        if "boom" in response:
            raise ValueError("checker crashed")
        return real(problem, response)

    monkeypatch.setattr(tasks, "step_rewards", fragile)
    failures = []
    labels = grpo.process_labels(rollouts, tokenizer, failures)
    out = capsys.readouterr().out
    assert failures == [1] and labels[1] == [] and len(labels[0]) == 1
    assert "checker crashed" in out and problems[1].question in out and "' boom'" in out


def test_the_compile_key_sends_rollouts_and_evaluation_through_the_compiled_decode_steps(tokenizer, monkeypatch):
    """--compile=true decodes through model.generate's compiled decode steps (here a stand-in that counts
    its calls and runs the eager steps, so nothing compiles), with the same outputs as eager."""
    import model as model_module
    calls = []

    def counted_step(*args):
        calls.append(1)
        return model_module._decode_steps(*args)
    monkeypatch.setattr(model_module, "_compiled_steps", {"cpu": counted_step})
    torch.manual_seed(0)
    policy = Transformer(ModelArgs(vocab_size=tokenizer.n_vocab, dim=32, n_layer=1, n_head=2, n_kv_head=2,
                                   intermediate_size=64, max_seq_len=160, bos_id=tokenizer.bos_id,
                                   eos_id=tokenizer.eos_id))
    problems = tasks.classroom_problems("test", 2, 1)
    outputs = {}
    for flag in ("false", "true"):
        cfg = config.load_config(["--device=cpu", "--rl_group_size=2", "--rl_rollout_questions=2", "--rl_max_new_tokens=8",
                                  "--eval_max_new_tokens=8", "--eval_k=1", f"--compile={flag}"])
        calls.clear()
        rollouts = grpo.explore(policy, tokenizer, problems, cfg, 3, torch.device("cpu"))
        rollout_calls = len(calls)
        with evaluate.Grader(1, 5) as grader:
            records = evaluate.evaluate_model(policy, tokenizer, problems, cfg, grader=grader).records
        outputs[flag] = (rollouts.tokens, [r["greedy"]["text"] for r in records])
        compiled = flag == "true"
        assert (rollout_calls > 0) == compiled and (len(calls) > rollout_calls) == compiled  # rollouts, evaluation
    assert torch.equal(outputs["true"][0], outputs["false"][0]) and outputs["true"][1] == outputs["false"][1]


# ------------------------------------------------------------------------- real runs


def tiny_checkpoint(folder, tokenizer, **shape):
    torch.manual_seed(0)
    args = dict(vocab_size=tokenizer.n_vocab, dim=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=64,
                max_seq_len=160, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    training.save_checkpoint(folder, Transformer(ModelArgs(**{**args, **shape})), tokenizer)


def run_args(out, steps, *extra):
    return [f"--out_dir={out}", "--device=cpu", "--classroom_train_size=40", "--classroom_test_size=4",
            "--classroom_max_number=30", f"--rl_steps={steps}", "--rl_questions_per_step=2", "--rl_group_size=2",
            "--rl_rollout_questions=2", "--rl_max_new_tokens=12", "--rl_micro_batch=2", "--rl_lr=1e-3",
            "--ppo_value_lr=1e-3", "--rl_rm_questions=2", "--rl_rm_lr=1e-3", "--eval_n_problems=4",
            "--eval_max_new_tokens=12", "--grader_workers=1", *extra]


def run_grpo(monkeypatch, args):
    monkeypatch.setattr(sys, "argv", ["grpo.py", *args])
    grpo.main()


@pytest.fixture(scope="module")
def start(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("rl")
    tiny_checkpoint(out / "sft" / "ckpt", tokenizer)
    return out


def read_run(out, method):
    with open(out / "rl" / method / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return records, json.load(open(out / "rl" / method / "summary.json"))


@pytest.mark.parametrize("method, flags", [
    ("grpo_outcome", []),
    ("grpo_process", ["--rl_reward=process"]),
    ("ppo", ["--rl_algo=ppo"]),
    ("rft", ["--rl_algo=rft"]),
    ("online_rft", ["--rl_algo=online_rft"]),
    ("grpo_orm_iterative", ["--rl_reward=orm", "--rl_iteration_steps=1"]),
    ("ppo_prm_iterative", ["--rl_algo=ppo", "--rl_reward=prm", "--ppo_value_init=reward", "--rl_iteration_steps=1"]),
])
def test_every_algorithm_runs_and_logs(start, tmp_path, monkeypatch, method, flags):
    os.symlink(start / "sft", tmp_path / "sft")
    run_grpo(monkeypatch, run_args(tmp_path, 2, *flags))
    records, summary = read_run(tmp_path, method)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward", "accuracy", "kl", "clip_frac", "entropy", "response_len", "truncated",
                "zero_var_groups", "step_seconds", "model_state_mb", "peak_rss_mb"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert ("value_loss" in records[0]) == method.startswith("ppo")
    assert summary["method"] == method and 0 <= summary["accuracy_after"] <= 1
    assert ("reward model" in summary["models_held"]) == any("rm" in f for f in flags)
    assert os.path.exists(tmp_path / "rl" / method / "ckpt" / "model.safetensors")


@pytest.mark.skipif(not os.environ.get("TEST_COMPILE"), reason="compiling takes ~1 min on a CPU; TEST_COMPILE=1 runs it")
def test_a_compiled_run_trains_and_saves_a_checkpoint_that_loads(start, tmp_path, monkeypatch):
    """grpo.py --compile=true compiles every model it runs (dynamic shapes: each step's rollouts
    have another length; the decode step is tested in test_model.py, and kept eager here so that
    what compiles is the models); the run logs finite metrics and saves a checkpoint that loads."""
    import model as model_module
    from torch._dynamo.utils import counters
    os.symlink(start / "sft", tmp_path / "sft")
    monkeypatch.setattr(model_module, "_compiled_steps", {"cpu": False})  # decode eagerly: the models are what compiles
    counters.clear()
    run_grpo(monkeypatch, run_args(tmp_path, 2, "--compile=true"))
    assert counters["stats"]["unique_graphs"] > 0
    records, summary = read_run(tmp_path, "grpo_outcome")
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    assert set(weights(tmp_path / "rl" / "grpo_outcome" / "ckpt")) == set(weights(start / "sft" / "ckpt"))


def test_grpo_holds_less_model_state_than_ppo(start, tmp_path, monkeypatch):
    os.symlink(start / "sft", tmp_path / "sft")
    run_grpo(monkeypatch, run_args(tmp_path, 1, "--rl_compare=true"))
    grpo_summary, ppo_summary = read_run(tmp_path, "grpo_outcome")[1], read_run(tmp_path, "ppo")[1]
    # policy: 16 bytes/param (weights, grads, 2 AdamW moments) + reference 4; PPO adds a value model's 16
    assert grpo_summary["model_state_mb"] <= 0.7 * ppo_summary["model_state_mb"]
    assert set(ppo_summary["models_held"]) == {"policy", "reference", "value model"}
    assert os.path.getsize(tmp_path / "rl" / "compare.png") > 0


def weights(folder):
    return Transformer.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_resume_is_bit_identical(start, tmp_path, monkeypatch, algo):
    method = "grpo_outcome" if algo == "grpo" else "ppo"
    for name in ("straight", "resumed"):
        os.makedirs(tmp_path / name)
        os.symlink(start / "sft", tmp_path / name / "sft")
    run_grpo(monkeypatch, run_args(tmp_path / "straight", 3, f"--rl_algo={algo}"))
    run_grpo(monkeypatch, run_args(tmp_path / "resumed", 2, f"--rl_algo={algo}"))
    run_grpo(monkeypatch, run_args(tmp_path / "resumed", 3, f"--rl_algo={algo}", "--rl_resume=true"))
    a, b = (weights(tmp_path / name / "rl" / method / "ckpt") for name in ("straight", "resumed"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in read_run(tmp_path / "resumed", method)[0]] == [1, 2, 3]


def test_a_resume_with_another_learning_rate_is_refused_before_the_outputs_are_touched(start, tmp_path, monkeypatch):
    os.makedirs(tmp_path / "run")
    os.symlink(start / "sft", tmp_path / "run" / "sft")
    run_grpo(monkeypatch, run_args(tmp_path / "run", 2))
    summary = tmp_path / "run" / "rl" / "grpo_outcome" / "summary.json"
    assert summary.exists()
    with pytest.raises(SystemExit, match="resuming: the run was trained with optimizer settings"):
        run_grpo(monkeypatch, run_args(tmp_path / "run", 3, "--rl_resume=true", "--rl_lr=5e-4"))
    assert summary.exists()  # the finished run still reads as finished


def test_the_reward_model_starts_from_rl_rm_init_and_refuses_another_vocabulary(start, tmp_path, tokenizer):
    """--rl_rm_init: the reward model's trunk and LM head are that folder's weights, the policy's
    stay the start's; a folder of another vocabulary is one error naming it."""
    policy_folder = str(start / "sft" / "ckpt")
    other = Transformer.from_pretrained(policy_folder)
    torch.manual_seed(1)
    other = Transformer(other.args)
    training.save_checkpoint(tmp_path / "rm", other, tokenizer)
    cfg = config.load_config(["configs/classroom.py", *run_args(tmp_path, 1, "--rl_reward=orm",
                                                                 f"--rl_rm_init={tmp_path / 'rm'}")])
    run = rl_support.Run(cfg, distributed.setup("cpu"), tokenizer, None, policy_folder, policy_folder)
    rm, policy = run.rm.model.state_dict(), run.policy.state_dict()
    for key, value in other.state_dict().items():
        assert torch.equal(rm[key], value), key
    assert not torch.equal(policy["embed_tokens.weight"], rm["embed_tokens.weight"])
    assert torch.equal(policy["embed_tokens.weight"], weights(policy_folder)["embed_tokens.weight"])

    tiny_checkpoint(tmp_path / "wide", tokenizer, vocab_size=tokenizer.n_vocab + 64)
    cfg = config.load_config(["configs/classroom.py", *run_args(tmp_path, 1, "--rl_reward=orm",
                                                                 f"--rl_rm_init={tmp_path / 'wide'}")])
    with pytest.raises(BadInput, match="wide.*vocabulary"):
        rl_support.Run(cfg, distributed.setup("cpu"), tokenizer, None, policy_folder, policy_folder)
    # an LM folder given as a trained reward model: its head would be zeros, every reward alike
    cfg = config.load_config(["configs/classroom.py", *run_args(tmp_path, 1, "--rl_reward=orm",
                                                                 f"--rl_rm_checkpoint={policy_folder}")])
    with pytest.raises(BadInput, match="no trained score head"):
        rl_support.Run(cfg, distributed.setup("cpu"), tokenizer, None, policy_folder, policy_folder)
    # ppo_value_init=reward copies the reward model into a value model of the policy's shape
    tiny_checkpoint(tmp_path / "narrow", tokenizer, dim=48)
    cfg = config.load_config(["configs/classroom.py", *run_args(tmp_path, 1, "--rl_algo=ppo", "--rl_reward=orm",
                                                                 "--ppo_value_init=reward",
                                                                 f"--rl_rm_init={tmp_path / 'narrow'}")])
    with pytest.raises(BadInput, match="ppo_value_init=reward .* shapes differ"):
        rl_support.Run(cfg, distributed.setup("cpu"), tokenizer, None, policy_folder, policy_folder)


def test_missing_start_checkpoint_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="rl_init_checkpoint"):
        run_grpo(monkeypatch, run_args(tmp_path, 1))


def test_two_process_fsdp_run_of_a_7b_shaped_model_matches_one_process(tokenizer, tmp_path, monkeypatch):
    """The 7B's layout scaled down (plain multi-head attention, untied embeddings, SwiGLU at
    11008/4096 of the width): GRPO then PPO (--rl_compare) under FSDP2 over 2 ranks, rollouts
    from the unsharded policy, each rank a contiguous share of the questions; the HF
    checkpoints equal a 1-process run's."""
    tiny_checkpoint(tmp_path / "sft" / "ckpt", tokenizer, dim=64, n_layer=2, n_head=4, n_kv_head=4,
                    intermediate_size=172, tie_embeddings=False)
    for name in ("one", "two"):
        os.makedirs(tmp_path / name)
        os.symlink(tmp_path / "sft", tmp_path / name / "sft")
    flags = ["--rl_compare=true", "--parallel=fsdp", "--rl_rollout_questions=1"]
    run_grpo(monkeypatch, run_args(tmp_path / "one", 2, *flags))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, "grpo.py"), *run_args(tmp_path / "two", 2, *flags)],
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    for method in ("grpo_outcome", "ppo"):
        ckpt = tmp_path / "two" / "rl" / method / "ckpt"
        config = json.load(open(ckpt / "config.json"))
        assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 4
        one, two = weights(tmp_path / "one" / "rl" / method / "ckpt"), weights(ckpt)
        for key in one:
            torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4, msg=f"{method} {key}")
        rewards = [[r["reward"] for r in read_run(tmp_path / name, method)[0]] for name in ("one", "two")]
        assert rewards[0] == rewards[1]


def test_under_bf16_autocast_the_reference_computes_as_the_policy_does(start, tokenizer, tmp_path):
    """One process in bf16 (a GPU's --dtype=auto; here the CPU's autocast): pi_ref, frozen, gives
    the policy's log-probs to the bit at the start, so the KL and PPO's KL-penalised rewards start
    at exactly 0. A bf16 copy of pi_ref did not: its rounding noise, whitened, was PPO's signal."""
    cfg = config.load_config(run_args(tmp_path, 1, "--rl_algo=ppo", "--dtype=bfloat16"))
    d = distributed.setup("cpu")
    folder = str(start / "sft" / "ckpt")
    with evaluate.Grader(1, cfg.grader_timeout) as grader:
        run = rl_support.Run(cfg, d, tokenizer, grader, folder, folder)
    tokens = torch.tensor([tokenizer.encode_prompt(p.question) + tokenizer.encode_response(p.answer)
                           for p in tasks.classroom_problems("train", 2, 3)[:1]])
    with torch.no_grad(), training.autocast(run.device, cfg.dtype):
        assert torch.is_autocast_enabled("cpu")
        assert torch.equal(sequence_logprobs(run.ref, tokens), sequence_logprobs(run.policy, tokens))


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_process_iterative_run_resets_its_reference(start, tmp_path, parallel):
    """Iterative RL over 2 ranks: at the new iteration pi_ref <- pi_theta (copy_weights), across
    FSDP2 shards (pi_ref's log-prob pass left its root unit gathered) and across DDP's wrapper
    (the policy's names are module.*, pi_ref's are not); the run ends with both iterations."""
    os.symlink(start / "sft", tmp_path / "sft")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, "grpo.py"), *run_args(tmp_path, 2, f"--parallel={parallel}",
                                                                   "--rl_iteration_steps=1", "--rl_rollout_questions=1")],
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(read_run(tmp_path, "grpo_outcome_iterative")[1]["iterations"]) == 2


def test_the_viewer_page_shows_what_the_run_computed(start, tmp_path, monkeypatch):
    """A real process-supervision run records its probe groups at the steps asked for; the page
    shows, token for token, the advantages the run wrote, and those are the paper's: each
    token's advantage is the sum of the group-normalised step rewards at or after it (4.1.3)."""
    from support import viewer
    from test_viewer import page_blob

    os.symlink(start / "sft", tmp_path / "sft")
    run_grpo(monkeypatch, run_args(tmp_path, 2, "--rl_reward=process", "--rl_viewer_steps=[0, 1]",
                                   "--rl_viewer_questions=2"))
    lines = [json.loads(line) for line in open(tmp_path / "rl" / "grpo_process" / viewer.ROLLOUTS_FILE)]
    assert sorted({(r["step"], r["q"]) for r in lines}) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    viewer.main([str(tmp_path)])
    data = page_blob(tmp_path / viewer.PAGE_FILE)
    for record in lines:
        group = [r for r in lines if (r["step"], r["q"]) == (record["step"], record["q"])]
        steps = [value for r in group for _, value in r["rewards"]]
        mean = sum(steps) / len(steps)
        std = math.sqrt(sum((v - mean) ** 2 for v in steps) / len(steps))
        normalised = {index: (v - mean) / std if std > 0.01 else 0.0 for index, v in record["rewards"]}
        for t, shown in enumerate(record["advantage"]):
            expected = sum(v for index, v in normalised.items() if index >= t)
            assert shown == pytest.approx(expected, abs=2e-3 * max(1, abs(expected))), (record["step"], t)
        q = data["questions"].index({"text": record["question"], "answer": record["answer"]})
        on_page = {o["i"]: o for o in data["groups"]["grpo_process"][str(record["step"])][str(q)]["outputs"]}
        if record["i"] in on_page:
            assert on_page[record["i"]]["advantage"] == record["advantage"][:len(on_page[record["i"]]["advantage"])]


def test_ctrl_c_saves_the_whole_steps_done_exits_130_and_resumes_bit_identically(start, tmp_path, monkeypatch):
    import signal

    for name in ("straight", "stopped"):
        os.makedirs(tmp_path / name)
        os.symlink(start / "sft", tmp_path / name / "sft")
    run_grpo(monkeypatch, run_args(tmp_path / "straight", 3))
    real, calls = grpo.update, []

    def ctrl_c_in_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # during step 2's update: step 2 still completes
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo, "update", ctrl_c_in_step_2)
    with pytest.raises(SystemExit) as stopped:
        run_grpo(monkeypatch, run_args(tmp_path / "stopped", 3))
    assert stopped.value.code == 130
    ckpt = tmp_path / "stopped" / "rl" / "grpo_outcome" / "ckpt"
    assert training.load_train_state(ckpt)["step"] == 2
    assert not os.path.exists(tmp_path / "stopped" / "rl" / "grpo_outcome" / "summary.json")
    monkeypatch.setattr(grpo, "update", real)
    run_grpo(monkeypatch, run_args(tmp_path / "stopped", 3, "--rl_resume=true"))
    a, b = (weights(tmp_path / name / "rl" / "grpo_outcome" / "ckpt") for name in ("straight", "stopped"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_nan_reward_stops_the_run_naming_the_step_and_the_checkpoint(start, tmp_path, monkeypatch):
    os.symlink(start / "sft", tmp_path / "sft")
    real = grpo.correctness
    monkeypatch.setattr(grpo, "correctness", lambda *a: real(*a) * float("nan"))
    with pytest.raises(SystemExit, match=r"step 1: \d+ rewards are NaN/inf.*no checkpoint was saved"):
        run_grpo(monkeypatch, run_args(tmp_path, 2))
    assert not os.path.exists(tmp_path / "rl" / "grpo_outcome" / "ckpt" / "model.safetensors")


def test_a_huge_learning_rate_stops_before_non_finite_weights_are_saved(start, tmp_path, monkeypatch):
    os.symlink(start / "sft", tmp_path / "sft")
    """PPO on a learned reward has a gradient from the first step (the tiny policy gets no
    output right, so rule rewards would leave every gradient 0): at lr 1e30 the weights blow
    up, and the run stops before anything non-finite is saved."""
    with pytest.raises(SystemExit, match=r"step [12]: .*(grad_norm|weights_after_the_update|logits hold NaN).*no checkpoint"):
        run_grpo(monkeypatch, run_args(tmp_path, 3, "--rl_algo=ppo", "--rl_reward=orm", "--ppo_value_lr=1e30",
                                                  "--rl_lr=1e30"))
    assert not os.path.exists(tmp_path / "rl" / "ppo_orm" / "ckpt" / "model.safetensors")
