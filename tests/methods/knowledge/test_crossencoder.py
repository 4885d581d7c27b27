"""The OpenBookQA cross-encoder: reader errors, the paired bootstrap against its definition, and fine-tuning that
reads the appended knowledge and lowers the loss (the packaged MiniLM, a few steps)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.methods.knowledge.coseco import MCItem
from lmlab.methods.knowledge.crossencoder import (
    CrossEncoderConfig,
    CrossEncoderQA,
    fine_tune,
    load_obqa,
    paired_accuracy_bootstrap,
    predict,
)


def test_load_obqa_reads_the_shared_splits_and_names_a_bad_record(shared_data, tmp_path):
    root = shared_data / "knowledge" / "openbookqa"
    if not root.is_dir():
        pytest.skip("real data knowledge/openbookqa is absent")
    test = load_obqa(root, "test")
    assert len(test) == 500 and all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in test)
    bad = {"question": {"stem": "x", "choices": [{"label": "A", "text": "a"}]}, "answerKey": "B"}
    (tmp_path / "train.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(LmlabError, match=r"train.jsonl, line 1: not an OpenBookQA record"):
        load_obqa(tmp_path, "train")
    (tmp_path / "dev.jsonl").write_text("\n")
    with pytest.raises(LmlabError, match="holds no questions"):
        load_obqa(tmp_path, "dev")


def test_paired_bootstrap_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    out = paired_accuracy_bootstrap(a, b, n=300, seed=5)
    assert out["delta"] == pytest.approx(b.mean() - a.mean())
    idx = np.random.default_rng(5).integers(0, 200, (300, 200))
    naive = [b[row].mean() - a[row].mean() for row in idx]
    assert out["sd"] == pytest.approx(np.std(naive, ddof=1)) and out["lo"] == pytest.approx(np.percentile(naive, 2.5))
    swapped = paired_accuracy_bootstrap(b, a, n=300, seed=5)
    assert swapped["delta"] == pytest.approx(-out["delta"]) and swapped["sd"] == pytest.approx(out["sd"])
    assert paired_accuracy_bootstrap(a, a, n=50)["sd"] == 0.0
    with pytest.raises(ValueError):
        paired_accuracy_bootstrap(a, b[:10])


ITEMS = [MCItem("Which one is hot?", ["ice", "fire", "snow", "frost"], "fire has property hot"),
         MCItem("Which one can fly?", ["stone", "brick", "bird", "table"], "bird capable of fly"),
         MCItem("What grows in soil?", ["plant", "metal", "glass", "plastic"], "plant at location soil"),
         MCItem("What gives light?", ["rock", "shadow", "mud", "sun"], "sun used for light")]
ANSWERS = [1, 2, 0, 3]


def loss_of(model, items):
    with torch.no_grad():
        return F.cross_entropy(model(model.encode(items, 64), 4), torch.tensor(ANSWERS)).item()


def test_the_cross_encoder_reads_the_knowledge_and_fine_tuning_lowers_the_loss():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fresh = CrossEncoderQA()
    bare = [MCItem(it.question, it.choices) for it in ITEMS]
    assert not torch.equal(fresh(fresh.encode(ITEMS, 64), 4), fresh(fresh.encode(bare, 64), 4))
    enc = fresh.encode(ITEMS[:1], 12)  # only the question ⊕ knowledge segment is cut
    assert enc["input_ids"].shape == (4, 12) and all(fresh.tokenizer.decode(row).count("[SEP]") == 2
                                                     for row in enc["input_ids"])
    cfg = CrossEncoderConfig(max_len=64, epochs=6, batch_questions=4, lr=1e-4, seed=0)
    tuned = fine_tune(ITEMS, ANSWERS, cfg)
    torch.manual_seed(0)
    assert loss_of(tuned, ITEMS) < loss_of(CrossEncoderQA(), ITEMS)  # the same init (seed 0) before tuning
    again = fine_tune(ITEMS, ANSWERS, cfg)
    assert (predict(tuned, ITEMS, 64) == predict(again, ITEMS, 64)).all()  # seeded
    with pytest.raises(LmlabError, match="one answer per question"):
        fine_tune(ITEMS, ANSWERS[:2], cfg)
