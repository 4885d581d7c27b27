import io
import urllib.error

import pytest

from lmlab.methods.sumerian import loaders
from lmlab.utils import LmlabError

# Counts from the data README (sentences / tokens per split). The README counts sentence *separators* (blank
# lines) and newline characters: every tagged file's last sentence has no blank line after it, and
# all_sent/train.{sum,eng} end without a final newline, so each of those holds one item more than listed.
README_TAGGED = {"train": (43504, 167850), "dev": (2289, 8481), "test": (2410, 8971)}
README_PARALLEL = {
    "ur3_line": (10528, 452, 1011),
    "ur3_sent": (4792, 355, 792),
    "all_sent": (32693, 2141, 4857),
}
UNTERMINATED_LAST_LINE = {("all_sent", "train")}


@pytest.mark.parametrize("task", ["pos", "ner"])
def test_tagged_counts_match_readme(shared_data, task):
    root = shared_data / "sumerian"
    for split, (n_sent, n_tok) in README_TAGGED.items():
        sents = loaders.load_tagged(task, split, root)
        assert len(sents) == n_sent + 1
        assert (root / task / f"{split}.txt").read_text().count("\n\n") == n_sent
        assert sum(len(s) for s in sents) == n_tok
        assert all(len(s.tokens) == len(s.tags) for s in sents)


def test_pos_and_ner_share_tokens(shared_data):
    root = shared_data / "sumerian"
    pos, ner = loaders.load_tagged("pos", "dev", root), loaders.load_tagged("ner", "dev", root)
    assert [s.tokens for s in pos] == [s.tokens for s in ner]
    # an entity in the NER layer is a proper noun (NE) in the POS layer
    assert all(p == "NE" for s, t in zip(pos, ner) for p, n in zip(s.tags, t.tags) if n != "O")


def test_parallel_counts_match_readme(shared_data):
    root = shared_data / "sumerian"
    for corpus, counts in README_PARALLEL.items():
        for split, n in zip(loaders.SPLITS, counts):
            base = root / "parallel" / corpus
            src, tgt = loaders.read_lines(base / f"{split}.sum"), loaders.read_lines(base / f"{split}.eng")
            assert len(src) == len(tgt) == n + ((corpus, split) in UNTERMINATED_LAST_LINE)
            blank = sum(1 for s, t in zip(src, tgt) if not s.strip() or not t.strip())
            pairs = loaders.load_parallel(corpus, split, root)
            assert len(pairs) == len(src) - blank
            assert all(s and t for s, t in pairs)


def test_limits_and_misc_files(shared_data):
    root = shared_data / "sumerian"
    assert len(loaders.load_tagged("pos", "train", root, limit=7)) == 7
    assert len(loaders.load_parallel("ur3_line", "train", root, limit=5)) == 5
    assert len(loaders.read_lines(root / "misc" / "sumerian_demo.txt")) == 150
    assert (
        len(loaders.read_parallel(root / "misc" / "human_eval.sum", root / "misc" / "human_eval.eng")) <= 76
    )
    lists = loaders.load_entity_lists(root)
    assert {"SN", "MN", "RN"} <= set(lists) and "GN" not in lists  # cities are settlements (SN)
    assert ["diri"] in lists["MN"]
    assert all(all(c.isascii() for w in e for c in w) for e in lists["MN"])  # š → sz etc.


def test_city_list_uses_the_corpus_tag_and_spelling(shared_data):
    """The NER corpus tags cities SN (nibru{ki} SN 64x vs GN 1x) and writes them with {ki}: the list's
    cities must be swapped in as SN, and only entries the training corpus attests may be used."""
    from collections import Counter

    from lmlab.methods.sumerian.metrics import entity_spans
    from lmlab.methods.sumerian.taggers import attested_entries

    root = shared_data / "sumerian"
    ner = loaders.load_tagged("ner", "train", root)
    tags = Counter(
        typ for s in ner for typ, a, b in entity_spans(s.tags) if s.tokens[a:b] in (["umma{ki}"], ["nibru{ki}"])
    )
    assert tags.most_common(1)[0][0] == "SN"
    lists = loaders.load_entity_lists(root)
    assert ["umma{ki}"] in lists["SN"] and ["adab{ki}"] in lists["SN"]
    kept, counts = attested_entries(lists, ner)
    assert ["umma{ki}"] in kept["SN"] and ["akhetaten"] not in kept["SN"]
    assert not kept["RN"] or all(e != ["urnammak"] for e in kept["RN"])
    attested = {tuple(s.tokens[a:b]) for s in ner for typ, a, b in entity_spans(s.tags)}
    assert all(tuple(e) in attested for es in kept.values() for e in es)
    assert counts["SN"][1] == len(lists["SN"]) and 0 < counts["SN"][0] < counts["SN"][1] // 4


def test_held_out_sources_cover_dev_and_test_of_every_corpus(shared_data):
    root = shared_data / "sumerian"
    held = set(loaders.held_out_sources(root))
    for corpus in loaders.PARALLEL_CORPORA:
        for split in ("dev", "test"):
            assert {s for s, _ in loaders.load_parallel(corpus, split, root)} <= held
    assert loaders.load_parallel("ur3_line", "train", root, 1)[0][0] not in held


def test_conll_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("lugal N\n\nur-{d}nansze NE extra\n")
    with pytest.raises(LmlabError, match=r"bad\.txt:3: expected 'TOKEN TAG'"):
        loaders.read_conll(p)
    with pytest.raises(LmlabError, match="does not exist"):
        loaders.read_conll(tmp_path / "missing.txt")


def test_read_conll(tmp_path):
    sents = [loaders.TaggedSentence(["a", "b"], ["N", "V"]), loaders.TaggedSentence(["c"], ["NU"])]
    (tmp_path / "x.txt").write_text("a N\nb V\n\nc NU\n\n")
    assert loaders.read_conll(tmp_path / "x.txt") == sents


def test_parallel_errors(tmp_path):
    (tmp_path / "a.sum").write_text("lugal\nur\ne2\n")
    (tmp_path / "a.eng").write_text("king\nUr\n")
    with pytest.raises(LmlabError, match=r"a\.eng ends after line 2"):
        loaders.read_parallel(tmp_path / "a.sum", tmp_path / "a.eng")
    (tmp_path / "b.sum").write_bytes(b"lugal\nur\xff\n")
    (tmp_path / "b.eng").write_text("king\nUr\n")
    with pytest.raises(LmlabError, match=r"b\.sum:2: not valid UTF-8"):
        loaders.read_parallel(tmp_path / "b.sum", tmp_path / "b.eng")


def test_raw_lines_strip_atf_structure():
    lines = ["&P123 = x", "@obverse", "1. sze-ba geme2", "2'. kiszib3  ur-{d}asznan", "$ broken", "", "ugula"]
    assert loaders.raw_lines_to_tokens(lines) == [["sze-ba", "geme2"], ["kiszib3", "ur-{d}asznan"], ["ugula"]]
    assert [i for i, _ in loaders.indexed_raw_tokens(lines)] == [2, 3, 6]


def test_missing_data_root_message(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLAB_DATA", str(tmp_path))
    with pytest.raises(LmlabError, match="Sumerian data folder not found"):
        loaders.data_dir()


def test_download_manifest_paths():
    files = loaders.download_manifest()
    dests = [d for _, d in files]
    assert len(dests) == len(set(dests))
    assert "pos/train.txt" in dests and "parallel/ur3_line/test.eng" in dests
    urls = dict((d, u) for u, d in files)
    assert urls["pos/train.txt"] == (
        "https://raw.githubusercontent.com/cdli-gh/Sumerian-Translation-Pipeline/"
        "9acfa98/FLAIR/POS_corpus/train.txt"
    )
    assert urls["parallel/all_sent/dev.sum"].endswith(
        "Semi-Supervised-NMT-for-Sumerian-English/4002518/dataset/dataToUse/allCompSents/dev.sum"
    )
    assert urls["misc/human_eval.eng"].endswith("/Dataset/human_eval_eng.txt")


def test_download_writes_layout_and_reports_network_errors(tmp_path):
    calls = []

    def fake_open(url, timeout):
        calls.append(url)
        return io.BytesIO(url.encode())

    dest = loaders.download(tmp_path, opener=fake_open, log=lambda *_: None)
    assert dest == tmp_path / "sumerian"
    assert (dest / "ner" / "dev.txt").read_text().endswith("FLAIR/NER_corpus/dev.txt")
    assert len(calls) == len(loaders.download_manifest())
    loaders.download(tmp_path, opener=fake_open, log=lambda *_: None)  # present files are skipped
    assert len(calls) == len(loaders.download_manifest())

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(LmlabError, match="needs internet access"):
        loaders.download(tmp_path / "other", opener=offline)
