import math

import pytest
import torch

from lmlab.generate import generate
from lmlab.methods.posttrain.tasks import DigitSumTask, make_split
from lmlab.model import GPT, GPTConfig
from lmlab.rl import (
    GRPOConfig,
    GRPOTrainer,
    build_rollout_batch,
    group_advantages,
    grpo_loss,
    k3_kl,
    sample_ids,
    token_logprobs,
    train_grpo,
)
from lmlab.tokenizer import CharTokenizer
from lmlab.utils import LmlabError


def tiny_model(vocab=24, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layers=1, n_heads=2, d_model=16, seq_len=64))


def test_group_advantages_std_and_mean_only():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    mean_only = group_advantages(r, "none")
    assert mean_only.tolist() == [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.75, -0.75, -0.75, 2.25]]
    std = group_advantages(r, "std", eps=0.0 + 1e-12)
    for row, raw in zip(std, r):
        ref = (raw - raw.mean()) / raw.std() if raw.std() > 0 else torch.zeros(4)
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=1e-5)
    assert group_advantages(r, "std")[1].abs().max() == 0  # a zero-std group gives no signal, not NaN


def test_k3_estimator_matches_closed_form_kl():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(12), 0)
    q = torch.softmax(torch.randn(12), 0)
    closed = float((p * (p.log() - q.log())).sum())
    exact_expectation = float((p * k3_kl(p.log(), q.log())).sum())  # E_{x~p} k3 over the full support
    assert exact_expectation == pytest.approx(closed, rel=1e-5)
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    mc = float(k3_kl(p.log()[x], q.log()[x]).mean())
    assert mc == pytest.approx(closed, rel=0.05)
    assert (k3_kl(p.log(), q.log()) >= 0).all()  # unlike the naive log-ratio estimator


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [[1] + torch.randint(3, 24, (int(n),), generator=g).tolist() for n in (2, 5, 3, 1)]
    comps = [torch.randint(3, 24, (int(n),), generator=g).tolist() + [2] for n in (4, 1, 6, 2)]
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    return prompts, comps, build_rollout_batch(prompts, comps, rewards, rewards > 0, pad_id=0, scale="none")


def test_grpo_gradient_matches_naive_per_sequence_token_mean():
    """Masks prompt and padding tokens and divides by the batch's completion-token count."""
    model = tiny_model()
    prompts, comps, batch = _batch(model)
    model.zero_grad()
    loss, _ = grpo_loss(model, batch, GRPOConfig())
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    ref_model = tiny_model()
    adv = batch.advantages
    n_tok = sum(len(c) for c in comps)
    total = 0.0
    for i, (p, c) in enumerate(zip(prompts, comps)):  # each sequence alone, no padding at all
        seq = torch.tensor([p + c])
        logp = torch.log_softmax(ref_model(seq[:, :-1]).float(), -1)[0]
        lp = logp[len(p) - 1:, :].gather(-1, torch.tensor(c)[:, None]).sum()
        total = total - adv[i] * lp / n_tok
    total.backward()
    for a, b in zip(got, ref_model.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-7)
    value = -sum(float(a) * len(c) for a, c in zip(adv, comps)) / n_tok  # ratio ≡ 1: -Σ A_i·|o_i| / N
    assert float(loss.detach()) == pytest.approx(value, abs=1e-6)


def test_padding_and_prompt_changes_do_not_move_the_loss():
    model = tiny_model()
    _, _, batch = _batch(model)
    loss_a, _ = grpo_loss(model, batch, GRPOConfig(kl_coef=0.0))
    padded = batch.ids.clone()
    padded[~batch.mask] = 7  # different padding ids
    batch.ids = padded
    loss_b, _ = grpo_loss(model, batch, GRPOConfig())
    assert float(loss_a.detach()) == pytest.approx(float(loss_b.detach()), abs=1e-7)


def test_ppo_clip_stops_gradient_beyond_the_trust_region():
    model = tiny_model()
    _, _, batch = _batch(model)
    with torch.no_grad():
        logp = token_logprobs(model, batch.ids, batch.mask)
    batch.advantages = torch.ones_like(batch.advantages)
    batch.old_logp = logp - 1.0  # ratio e ≈ 2.7 > 1 + ε with positive advantage: clipped, no gradient
    model.zero_grad()
    loss, stats = grpo_loss(model, batch, GRPOConfig(clip_eps=0.2))
    loss.backward()
    assert all(float(p.grad.abs().max()) == 0 for p in model.parameters() if p.grad is not None)
    assert stats["clip_frac"] == pytest.approx(1.0)
    batch.old_logp = logp  # ratio 1: unclipped
    model.zero_grad()
    loss, stats = grpo_loss(model, batch, GRPOConfig(clip_eps=0.2))
    loss.backward()
    assert max(float(p.grad.abs().max()) for p in model.parameters()) > 0 and stats["clip_frac"] == 0


def test_kl_term_is_zero_at_the_reference_and_positive_away_from_it():
    model = tiny_model()
    _, _, batch = _batch(model)
    with torch.no_grad():
        batch.ref_logp = token_logprobs(model, batch.ids, batch.mask)
    _, stats = grpo_loss(model, batch, GRPOConfig(kl_coef=0.1))
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        batch.ref_logp = token_logprobs(tiny_model(seed=5), batch.ids, batch.mask)
    loss_kl, stats = grpo_loss(model, batch, GRPOConfig(kl_coef=0.1))
    assert stats["kl"] > 0
    loss_log, stats_log = grpo_loss(model, batch, GRPOConfig(kl_coef=0.0))  # logged, not penalised
    assert stats_log["kl"] == pytest.approx(stats["kl"])
    assert float(loss_kl.detach()) == pytest.approx(float(loss_log.detach()) + 0.1 * stats["kl"], rel=1e-5)
    with pytest.raises(LmlabError):
        batch.ref_logp = None
        grpo_loss(model, batch, GRPOConfig(kl_coef=0.1))


def test_sample_ids_is_the_kv_cached_engine_and_batch_invariant():
    model = tiny_model()
    prompts = [[1, 5, 6], [1, 7], [1, 9, 9, 4]]
    seeds = [11, 12, 13]
    ours = sample_ids(model, prompts, 6, stop_id=2, pad_id=0, seeds=seeds)
    ref = generate(model, prompts, 6, stop_tokens={2}, pad_id=0, seeds=seeds)
    assert ours == ref.tokens
    assert sample_ids(model, prompts, 6, stop_id=2, pad_id=0, seeds=seeds, batch_size=1) == ours
    assert all(len(c) <= 6 and (2 not in c or c[-1] == 2) for c in ours)


def _trainer(**kw):
    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    probs = make_split(task, 6, 2, seed=0)
    cfg = GRPOConfig(prompts_per_step=3, group_size=4, max_new_tokens=10, pass_ks=(1, 2, 4), **kw)
    return GRPOTrainer(tiny_model(tok.vocab_size), tok, task, probs, cfg, seed=0), task


def test_rollout_statistics_are_consistent():
    trainer, _ = _trainer()
    batch = trainer.rollout()
    s = batch.stats
    r = batch.rewards
    assert r.shape == (3, 4)
    assert s["reward"] == pytest.approx(float(r.mean()))
    assert s["frac_zero_std"] == pytest.approx(float((r.std(1, unbiased=False) == 0).float().mean()))
    assert s["completion_len"] == pytest.approx(sum(batch.completion_lens) / 12)
    assert batch.completion_mask.sum() == sum(batch.completion_lens)
    assert s["rollout_tok_s"] > 0 and s["train_pass@1"] <= s["train_pass@2"] <= s["train_pass@4"]
    stats = trainer.update(batch)
    assert {"loss", "entropy", "update_s"} <= set(stats)


def test_one_update_raises_the_likelihood_of_rewarded_samples():
    trainer, _ = _trainer(scale_advantages="std")
    model = trainer.model
    trainer.opt = torch.optim.SGD(model.parameters(), lr=0.05)  # small first-order step
    batch = trainer.rollout()
    rewards = torch.zeros(3, 4)
    rewards[:, 0] = 1.0  # pretend sample 0 of every group is right
    fake = build_rollout_batch(batch.ids.tolist(), [[] for _ in range(12)], rewards, rewards > 0, 0)
    fake.ids, fake.mask, fake.completion_mask = batch.ids, batch.mask, batch.completion_mask

    def seq_logp():
        with torch.no_grad():
            lp = token_logprobs(model, batch.ids, batch.mask)
        return (lp * batch.completion_mask).sum(1).view(3, 4)

    before = seq_logp()
    trainer.update(fake)
    gain = seq_logp() - before
    assert float((group_advantages(rewards) * gain).sum()) > 0  # the policy-gradient objective went up
    assert float(gain[:, 0].mean()) > float(gain[:, 1:].mean())


def test_several_updates_per_batch_use_ratios():
    trainer, _ = _trainer(ppo_epochs=2, minibatches=2)
    batch = trainer.rollout()
    assert batch.old_logp is not None
    stats = trainer.update(batch)
    assert math.isfinite(stats["loss"])
    with pytest.raises(LmlabError):
        GRPOConfig(group_size=1).validate()


# ---------------------------------------------------------------------------------------------- audit fixes
def test_token_logprobs_at_the_sampling_temperature_equal_the_samplers():
    """Audit M-1: GRPO log-probs (loss, ratio, KL) must be those of the distribution the rollouts came from."""
    from lmlab.generate import sequence_logprobs

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=24, n_layers=1, n_heads=2, d_model=16, seq_len=64, init_std=0.3)).eval()
    prompts = [[1, 5, 6], [1, 7]]
    g = generate(model, prompts, 5, temperature=0.5, seeds=[1, 2])
    batch = build_rollout_batch(prompts, g.tokens, torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool), 0,
                                "none")
    with torch.no_grad():
        lp = token_logprobs(model, batch.ids, batch.mask, temperature=0.5)
        lp1 = token_logprobs(model, batch.ids, batch.mask)
        seq, _ = sequence_logprobs(model, prompts, g.tokens, temperature=0.5)
    for i, (p, c) in enumerate(zip(prompts, g.tokens)):
        ours = lp[i, len(p) - 1:len(p) - 1 + len(c)]
        torch.testing.assert_close(ours, torch.tensor(g.logprobs[i][:len(c)]), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours, seq[i, :len(c)], atol=1e-4, rtol=1e-4)
        assert (lp1[i, len(p) - 1:len(p) - 1 + len(c)] - ours).abs().max() > 0.05  # T=1 is a different policy


def test_grpo_loss_scores_tokens_at_the_config_temperature():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=24, n_layers=1, n_heads=2, d_model=16, seq_len=64, init_std=0.3))
    _, _, batch = _batch(model)
    with torch.no_grad():
        batch.old_logp = token_logprobs(model, batch.ids, batch.mask, temperature=0.5)  # the rollout policy
    _, stats = grpo_loss(model, batch, GRPOConfig(temperature=0.5, clip_eps=0.2))
    assert stats["clip_frac"] == 0  # ratio ≡ 1 on-policy
    _, stats = grpo_loss(model, batch, GRPOConfig(temperature=1.0, clip_eps=0.2))
    assert stats["clip_frac"] > 0  # scoring at T=1 puts the ratio off 1 before any update


def test_several_updates_store_old_logprobs_at_the_rollout_temperature():
    trainer, _ = _trainer(ppo_epochs=2, temperature=0.7)
    batch = trainer.rollout()
    with torch.no_grad():
        ref = token_logprobs(trainer.model, batch.ids, batch.mask, temperature=0.7)
    cm = batch.completion_mask.bool()
    torch.testing.assert_close(batch.old_logp[cm], ref[cm])


def test_top_k_rollouts_refuse_ratios_and_the_kl():
    """Top-k changes the sampling distribution but not the scored log-probs: ratios / k3 would be wrong."""
    GRPOConfig(top_k=5).validate()  # one on-policy update: allowed
    for kw in ({"ppo_epochs": 2}, {"minibatches": 2}, {"kl_coef": 0.01}, {"log_kl": True}):
        with pytest.raises(LmlabError, match="top_k"):
            GRPOConfig(top_k=5, **kw).validate()
    with pytest.raises(LmlabError, match="top_k"):
        GRPOConfig(top_k=0).validate()


@pytest.mark.parametrize("kw, flag", [({"prompts_per_step": 0}, "--prompts-per-step"),
                                      ({"temperature": 0.0}, "--temperature"),
                                      ({"group_size": 1}, "--group-size"),
                                      ({"max_new_tokens": 0}, "--max-new-tokens"),
                                      ({"ppo_epochs": 0}, "--ppo-epochs"),
                                      ({"minibatches": 0}, "--minibatches"),
                                      ({"steps": -1}, "--rl-steps"),
                                      ({"kl_coef": -0.1}, "--kl-coef"),
                                      ({"clip_eps": 0.0}, "--clip-eps"),
                                      ({"scale_advantages": "max"}, "--scale-advantages")])
def test_grpo_config_errors_name_the_flag(kw, flag):
    with pytest.raises(LmlabError, match=flag):
        GRPOConfig(**kw).validate()


def _digitsum_352():
    from lmlab.methods.posttrain.tasks import Problem

    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    good = tok.encode("+3=3+5=8+2=0A0") + [tok.eos_id]
    bad = tok.encode("+3=3") + [tok.bos_id, tok.pad_id] + tok.encode("+5=8+2=0A0") + [tok.eos_id]
    return task, tok, Problem("S352:", 0, 3, (3, 5, 2)), good, bad


def test_completions_with_special_tokens_inside_are_not_verified():
    """Audit L-1: `<bos><pad>` mid-trace vanished in decoding and the trace verified."""
    from lmlab.rl import completion_text

    task, tok, prob, good, bad = _digitsum_352()
    assert task.verify(prob, tok.decode(bad, skip_special=True))  # why decoding must not skip them
    assert completion_text(tok, good) == "+3=3+5=8+2=0A0"
    assert completion_text(tok, bad) is None
    assert completion_text(tok, good[:-1] + [tok.eos_id, tok.eos_id]) is None  # an EOS that is not last
    assert completion_text(tok, good[:-1]) == "+3=3+5=8+2=0A0"  # ran out of budget: no EOS to strip


def test_rollout_rewards_and_pass_at_k_reject_special_tokens(monkeypatch):
    import lmlab.evaluate as eval_mod
    import lmlab.rl as rl_mod
    from lmlab.generate import Generation

    task, tok, prob, good, bad = _digitsum_352()
    cfg = GRPOConfig(prompts_per_step=1, group_size=2, max_new_tokens=20, pass_ks=(1, 2))
    trainer = GRPOTrainer(tiny_model(tok.vocab_size), tok, task, [prob], cfg, seed=0)
    monkeypatch.setattr(rl_mod, "sample_ids", lambda *a, **k: [good, bad])
    batch = trainer.rollout()
    assert batch.correct.tolist() == [[True, False]] and batch.stats["format_rate"] == 0.5
    fake = lambda model, prompts, *a, **k: Generation(
        [good if i % 2 == 0 else bad for i in range(len(prompts))], [[0.0]] * len(prompts), [True] * len(prompts))
    for mod in (eval_mod, rl_mod):  # each module's own reference to the engine
        monkeypatch.setattr(mod, "generate", fake)
    res = rl_mod.sample_pass_at_k(trainer.model, tok, task, [prob], n=2, ks=(1, 2))
    assert res["counts"] == [1] and res["format_rate"] == 0.5
    outs = rl_mod.sample_completions(trainer.model, tok, [[tok.bos_id]] * 2, 20)
    assert outs[0] == "+3=3+5=8+2=0A0" and "<bos>" in outs[1]


def test_an_early_stop_gives_the_first_steps_of_the_uninterrupted_run():
    """`until` ends GRPO after the step it first says true: the logs and weights equal those of a run of that many
    steps; with `resume` it is refused."""
    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    probs = make_split(task, 8, 2, seed=0)
    cfg = GRPOConfig(steps=5, prompts_per_step=2, group_size=4, max_new_tokens=8)

    def fresh():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=16, seq_len=32))

    stopped, short = fresh(), fresh()
    logs = train_grpo(stopped, tok, task, probs, cfg, seed=1, until=lambda h: len(h) == 3)
    ref = train_grpo(short, tok, task, probs, GRPOConfig(**{**cfg.__dict__, "steps": 3}), seed=1)
    assert [l["step"] for l in logs] == [0, 1, 2]
    assert [l["reward"] for l in logs] == [l["reward"] for l in ref] and [l["loss"] for l in logs] == [l["loss"] for l in ref]
    assert all(torch.equal(a, b) for a, b in zip(stopped.state_dict().values(), short.state_dict().values()))
    with pytest.raises(LmlabError, match="cannot be combined with resume"):
        train_grpo(fresh(), tok, task, probs, cfg, until=lambda h: True, resume=object())
