import torch

from lmlab.classifier import accuracy
from lmlab.methods.lmc.tasks import HansLikeNLI, finetune_child, pretrain_parent


def test_hans_like_nli_splits():
    task = HansLikeNLI()
    ids, y, texts = task.sample(200, split="diagnostic", seed=0)
    assert ids.shape == (200, task.SEQ_LEN) and bool((y == 1).all())
    for prem, hyp in texts[:20]:  # complete lexical overlap, swapped order
        assert set(hyp.split()) <= set(prem.split()) and hyp != " ".join(prem.split()[:1] + prem.split()[2:])
    _, y_id, t_id = task.sample(400, split="id", seed=1)
    for (prem, hyp), lab in zip(t_id, y_id.tolist()):
        p = prem.split()
        assert (hyp == " ".join([p[0]] + p[2:])) == (lab == 0)
    _, _, t_tr = task.sample(2000, p_swap=0.2, split="train", seed=2)
    swaps = sum(h.split()[1] == p.split()[5] for p, h in t_tr)
    assert abs(swaps / 2000 - 0.2) < 0.03


def test_parent_and_children_share_weights_and_learn():
    task = HansLikeNLI()
    parent = pretrain_parent(task, steps=150, seed=0)
    x, y, _ = task.sample(2000, p_swap=0.2, seed=1)
    a = finetune_child(parent, x, y, seed=1, epochs=6)
    b = finetune_child(parent, x, y, seed=1, epochs=6)
    c = finetune_child(parent, x, y, seed=2, epochs=2, new_head=False)
    for k in a.state_dict():
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])  # a seed fixes the fine-tune
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(parent.fc1.weight, pretrain_parent(task, steps=150, seed=0).fc1.weight)
    xi, yi, _ = task.sample(300, split="id", seed=5)
    assert accuracy(a, xi, yi) > 0.85
