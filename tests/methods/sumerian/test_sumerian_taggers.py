import itertools

import numpy as np
import pytest
import torch

from lmlab.methods.sumerian.loaders import TaggedSentence
from lmlab.methods.sumerian.metrics import entity_f1, entity_spans, tagging_scores
from lmlab.methods.sumerian.taggers import (
    BiLSTMCRFConfig,
    BiLSTMCRFTagger,
    CRFLayer,
    CRFTagger,
    HMMTagger,
    MajorityTagger,
    WordMajorityTagger,
    WordShapeMajorityTagger,
    attested_entries,
    crf_features,
    entity_lexicon,
    entity_swap,
    load_tagger,
    viterbi,
    word_shape,
)


def brute_force_hmm(log_start, log_trans, log_emit, log_end):
    n, s = log_emit.shape
    best, best_path = -np.inf, None
    for path in itertools.product(range(s), repeat=n):
        score = log_start[path[0]] + log_emit[0, path[0]] + log_end[path[-1]]
        score += sum(log_trans[a, b] + log_emit[t + 1, b] for t, (a, b) in enumerate(zip(path, path[1:])))
        if score > best:
            best, best_path = score, list(path)
    return best_path, best


def test_viterbi_hand_made_hmm():
    # Two states (0 = N, 1 = V); the middle word is ambiguous and the transitions decide it.
    log_start = np.log([0.8, 0.2])
    log_trans = np.log([[0.1, 0.9], [0.9, 0.1]])
    log_emit = np.log([[0.9, 0.1], [0.5, 0.5], [0.9, 0.1]])
    log_end = np.log([0.5, 0.5])
    path, score = viterbi(log_start, log_trans, log_emit, log_end)
    assert path == [0, 1, 0]
    assert score == pytest.approx(np.log(0.8 * 0.9 * 0.9 * 0.5 * 0.9 * 0.9 * 0.5))


def test_viterbi_matches_brute_force_on_random_hmms():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, n = int(rng.integers(2, 4)), int(rng.integers(1, 6))
        ls, le = np.log(rng.dirichlet(np.ones(s))), np.log(rng.dirichlet(np.ones(s)))
        lt = np.log(rng.dirichlet(np.ones(s), size=s))
        lem = np.log(rng.random((n, s)))
        path, score = viterbi(ls, lt, lem, le)
        bp, bs = brute_force_hmm(ls, lt, lem, le)
        assert score == pytest.approx(bs)
        assert path == bp


@torch.no_grad()
def brute_force_crf(crf, em):
    n, s = em.shape
    scores = {}
    for path in itertools.product(range(s), repeat=n):
        v = crf.start[path[0]] + em[0, path[0]] + crf.end[path[-1]]
        for t in range(1, n):
            v = v + crf.trans[path[t - 1], path[t]] + em[t, path[t]]
        scores[path] = float(v)
    return scores


def test_crf_layer_partition_score_and_viterbi_vs_brute_force():
    torch.manual_seed(0)
    crf = CRFLayer(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    lengths = [4, 2, 1]
    em = torch.randn(3, 4, 3)
    mask = torch.tensor([[i < n for i in range(4)] for n in lengths])
    tags = torch.randint(0, 3, (3, 4))
    logz = crf.log_partition(em, mask).detach()
    gold = crf.score(em, tags, mask).detach()
    paths = crf.decode(em, mask)
    for b, n in enumerate(lengths):
        scores = brute_force_crf(crf, em[b, :n])
        assert float(logz[b]) == pytest.approx(
            float(torch.logsumexp(torch.tensor(list(scores.values())), 0)), abs=1e-4
        )
        assert float(gold[b]) == pytest.approx(scores[tuple(tags[b, :n].tolist())], abs=1e-4)
        assert tuple(paths[b]) == max(scores, key=scores.get)
    nll = crf.nll(em, tags, mask)
    nll = float(nll.detach())
    assert nll == pytest.approx(float((logz - gold).mean()), abs=1e-5) and nll > 0


def test_crf_decode_of_one_token_sentences_is_the_best_single_tag():
    crf = CRFLayer(4)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    em = torch.randn(3, 1, 4)
    best = (crf.start + em[:, 0] + crf.end).argmax(-1).tolist()
    assert crf.decode(em, torch.ones(3, 1, dtype=torch.bool)) == [[b] for b in best]


def toy_corpus(n=200, seed=0):
    """Numerals are NU, 'dumu' is N, words after 'dumu' are names (NE), others N/V by suffix."""
    rng = np.random.default_rng(seed)
    names = ["ur-{d}nansze", "lu2-gi-na", "a-ba-mu", "szu-esz-tar2"]
    nouns, verbs = ["udu", "sze", "e2", "gu4"], ["ba-zi", "i3-dab5", "mu-kux"]
    out = []
    for _ in range(n):
        toks, tags = [], []
        toks += [f"{int(rng.integers(1, 9))}(disz)", str(rng.choice(nouns))]
        tags += ["NU", "N"]
        if rng.random() < 0.5:
            toks += ["dumu", str(rng.choice(names))]
            tags += ["N", "NE"]
        toks.append(str(rng.choice(verbs)))
        tags.append("V")
        out.append(TaggedSentence(toks, tags))
    return out


@pytest.mark.parametrize(
    "make",
    [
        HMMTagger,
        lambda: CRFTagger(max_iterations=30),
        lambda: BiLSTMCRFTagger(BiLSTMCRFConfig(epochs=6, batch_size=16, hidden=16, word_dim=16, lr=1e-2)),
    ],
)
def test_taggers_learn_toy_corpus_and_roundtrip(make, tmp_path):
    torch.manual_seed(0)
    train, test = toy_corpus(200, 0), toy_corpus(50, 1)
    tagger = make().fit(train)
    pred = tagger.predict([s.tokens for s in test])
    acc = tagging_scores([s.tags for s in test], pred)["accuracy"]
    base = tagging_scores(
        [s.tags for s in test], MajorityTagger().fit(train).predict([s.tokens for s in test])
    )
    assert acc > 0.95 > base["accuracy"] + 0.3
    unseen = [["7(disz)", "udu", "dumu", "lugal-ezem", "ba-zi"]]  # unseen numeral and name
    tagger.save(tmp_path)
    loaded = load_tagger(tmp_path)
    assert loaded.predict([s.tokens for s in test]) == pred
    assert loaded.predict(unseen) == tagger.predict(unseen)
    assert tagger.predict([[]]) == [[]]


def test_word_majority_and_shapes():
    train = [TaggedSentence(["a", "a", "b"], ["N", "N", "V"]), TaggedSentence(["a"], ["V"])]
    wm = WordMajorityTagger().fit(train)
    assert wm.predict([["a", "b", "zz"]]) == [["N", "V", "N"]]
    assert word_shape("3(ban2)") == "num" and word_shape("{d}utu") == "div" and word_shape("...") == "damaged"
    f = crf_features(["dumu", "ur-{d}nansze", "ki"], 1)
    assert f["ctx-1"] == "dumu" and f["ctx+1"] == "ki" and f["det_d"] and f["name_prefix"]


def test_word_shape_fallback_tags_unknown_words_by_the_hapaxes_of_their_shape():
    train = [TaggedSentence(["udu", "udu", "3(disz)", "ur-{d}utu", "udu"], ["N", "N", "NU", "NE", "N"]),
             TaggedSentence(["5(ban2)", "lugal-e2-mah", "ba-zi"], ["NU", "NE", "V"])]
    ws = WordShapeMajorityTagger().fit(train)
    # known words: their own tag; unknown: the tag of hapaxes of their shape, else the overall majority (N)
    assert ws.predict([["udu", "2(asz)", "ur-{d}nanna", "e2-gal-la-ka", "zz"]]) == [["N", "NU", "NE", "NE", "N"]]
    assert WordMajorityTagger().fit(train).predict([["2(asz)", "ur-{d}nanna"]]) == [["N", "N"]]


def test_entity_spans_and_f1_hand_made():
    assert entity_spans(["PN", "PN", "O", "GN", "DN"]) == [("PN", 0, 2), ("GN", 3, 4), ("DN", 4, 5)]
    assert entity_spans(["B-PN", "I-PN", "B-PN", "O"]) == [("PN", 0, 2), ("PN", 2, 3)]
    gold = [["PN", "PN", "O", "GN"], ["O", "DN"]]
    pred = [["PN", "O", "O", "GN"], ["O", "DN"]]  # PN span cut short: wrong; GN and DN right
    r = entity_f1(gold, pred)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["per_type"]["PN"]["f1"] == 0.0 and r["per_type"]["GN"]["f1"] == 1.0
    sc = tagging_scores(gold, pred, entities=True)
    assert sc["accuracy"] == pytest.approx(5 / 6)
    assert sc["per_tag"]["PN"]["recall"] == pytest.approx(0.5) and sc["per_tag"]["PN"]["precision"] == 1.0
    with pytest.raises(ValueError):
        tagging_scores([["O"]], [["O", "O"]])


def test_entity_swap_keeps_layers_aligned():
    ner = [
        TaggedSentence(["kiszib3", "ur-{d}nansze", "dumu", "lu2-gi-na"], ["O", "PN", "O", "PN"]),
        TaggedSentence(["udu"], ["O"]),
    ]
    pos = [TaggedSentence(ner[0].tokens, ["N", "NE", "N", "NE"]), TaggedSentence(["udu"], ["N"])]
    lex = entity_lexicon(ner, {"PN": [["a", "b"]], "GN": [["umma{ki}"]]})
    assert ["a", "b"] in lex["PN"] and ["ur-{d}nansze"] in lex["PN"]
    ner_aug, pos_aug = entity_swap(ner, lex, copies=5, seed=1, pos_sents=pos)
    assert len(ner_aug) == len(pos_aug) == 5  # only the sentence with entities is copied
    for n, p in zip(ner_aug, pos_aug):
        assert n.tokens == p.tokens and len(n.tags) == len(n.tokens) == len(p.tags)
        assert n.tokens[0] == "kiszib3" and "dumu" in n.tokens
        for tok, nt, pt in zip(n.tokens, n.tags, p.tags):
            assert (nt == "PN") == (pt == "NE")
            if nt == "PN":
                assert any(tok in e for e in lex["PN"])
    assert any(len(n.tokens) > 4 for n in ner_aug)  # a two-word entity was swapped in


def test_attested_entries_keep_only_list_names_the_corpus_tags_the_same_way():
    ner = [
        TaggedSentence(["ki", "umma{ki}", "ta"], ["O", "SN", "O"]),
        TaggedSentence(["nibru{ki}", "umma{ki}"], ["GN", "SN"]),
        TaggedSentence(["nibru{ki}"], ["SN"]),
        TaggedSentence(["nibru{ki}"], ["SN"]),
        TaggedSentence(["ur", "ur-{d}namma"], ["O", "RN"]),
    ]
    lists = {"SN": [["umma{ki}"], ["akhetaten"], ["nibru{ki}"]], "RN": [["urnammak"], ["ur"]], "GN": []}
    kept, counts = attested_entries(lists, ner)
    assert kept == {"SN": [["umma{ki}"], ["nibru{ki}"]], "RN": [], "GN": []}  # nibru{ki}: SN 2x vs GN 1x
    assert counts == {"SN": (2, 3), "RN": (0, 2), "GN": (0, 0)}
    lex = entity_lexicon(ner, kept)
    assert ["akhetaten"] not in lex["SN"] and ["urnammak"] not in lex.get("RN", [])


@pytest.mark.parametrize("n_sentences", [1, 2, 3, 10, 14, 19])
def test_bilstm_crf_trains_on_a_corpus_of_a_few_batches(n_sentences):
    # 10 steps once made OneCycleLR's 10 % warm-up zero steps long (ZeroDivisionError)
    cfg = BiLSTMCRFConfig(epochs=1, batch_size=1, hidden=8, word_dim=8, char_filters=8)
    tagger = BiLSTMCRFTagger(cfg).fit(toy_corpus(n_sentences, 0))
    assert len(tagger.losses) == n_sentences
    assert all(np.isfinite(tagger.losses))
