"""Readers for the Sumerian corpora (CoNLL-style POS/NER, line-aligned `.sum`/`.eng` pairs, named-entity
lists) and a downloader for users with internet access.

Layout of the data folder (as in the project's shared data, see its README):
`pos/{train,dev,test}.txt`, `ner/…`, `parallel/{ur3_line,ur3_sent,all_sent}/{split}.{sum,eng}`,
`misc/{human_eval.sum,human_eval.eng,sumerian_demo.txt}`, `named_entities/*.csv`.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lmlab.inputs import read_text
from lmlab.progress import track
from lmlab.utils import DATA_HINT, LmlabError, atomic_write_bytes, find_data

_log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
PARALLEL_CORPORA = ("ur3_line", "ur3_sent", "all_sent")


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[str]

    def __len__(self) -> int:
        return len(self.tokens)


def data_dir(explicit: str | Path | None = None) -> Path:
    """The `sumerian/` data folder from `--data DIR` or `$LMLAB_DATA`; raises LmlabError when absent."""
    root = find_data("sumerian", explicit)
    if root is None:
        raise LmlabError(
            f"Sumerian data folder not found: {DATA_HINT}; or fetch it with "
            "`lmlab sumerian download --to DIR` and pass --data DIR"
        )
    return root


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise LmlabError(
            f"{path} does not exist: check --data / LMLAB_DATA (expected the layout of "
            "the shared data README) or run `lmlab sumerian download --to DIR`"
        )
    return path


# ---------------------------------------------------------------- CoNLL token/tag files
def read_conll(path: str | Path, limit: int | None = None) -> list[TaggedSentence]:
    """`token TAG` per line (space or tab separated), a blank line between sentences."""
    path = _existing(Path(path))
    sents, toks, tags = [], [], []
    for lineno, line in enumerate(read_text(path, "CoNLL file").split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            if toks:
                sents.append(TaggedSentence(toks, tags))
                toks, tags = [], []
                if limit is not None and len(sents) >= limit:
                    return sents
            continue
        cols = line.split()
        if len(cols) != 2:
            raise LmlabError(
                f"{path}:{lineno}: expected 'TOKEN TAG' (2 columns), got {len(cols)}: "
                f"{line[:80]!r}; fix the line or remove it"
            )
        toks.append(cols[0])
        tags.append(cols[1])
    if toks:
        sents.append(TaggedSentence(toks, tags))
    return sents


def load_tagged(
    task: str, split: str = "train", root: str | Path | None = None, limit: int | None = None
) -> list[TaggedSentence]:
    """POS or NER sentences of one split (`task` is "pos" or "ner")."""
    if task not in ("pos", "ner"):
        raise LmlabError(f"unknown tagging task {task!r}: use pos or ner")
    if split not in SPLITS:
        raise LmlabError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    base = Path(root) if root is not None else data_dir()
    return read_conll(base / task / f"{split}.txt", limit)


# ---------------------------------------------------------------- parallel text
def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (without line ends); invalid UTF-8 raises LmlabError naming the line."""
    path = _existing(Path(path))
    lines = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise LmlabError(
                    f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                    "re-save the file as UTF-8"
                ) from e
    return lines


def read_parallel(
    sum_path: str | Path, eng_path: str | Path, limit: int | None = None
) -> list[tuple[str, str]]:
    """Line-aligned Sumerian/English pairs. The files must have the same number of lines; pairs where
    either side is blank are skipped (the published corpora contain a few lines with no translation)."""
    src, tgt = read_lines(sum_path), read_lines(eng_path)
    if len(src) != len(tgt):
        short, n = (sum_path, len(src)) if len(src) < len(tgt) else (eng_path, len(tgt))
        raise LmlabError(
            f"{sum_path} has {len(src)} lines but {eng_path} has {len(tgt)}: the files must be "
            f"line-aligned; {short} ends after line {n}"
        )
    pairs = []
    for s, t in zip(src, tgt):
        s, t = " ".join(s.split()), " ".join(t.split())
        if s and t:
            pairs.append((s, t))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def load_parallel(
    corpus: str = "ur3_line", split: str = "train", root: str | Path | None = None, limit: int | None = None
) -> list[tuple[str, str]]:
    if corpus not in PARALLEL_CORPORA:
        raise LmlabError(f"unknown parallel corpus {corpus!r}: use one of {', '.join(PARALLEL_CORPORA)}")
    if split not in SPLITS:
        raise LmlabError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    base = (Path(root) if root is not None else data_dir()) / "parallel" / corpus
    return read_parallel(base / f"{split}.sum", base / f"{split}.eng", limit)


# ---------------------------------------------------------------- raw Sumerian input
_ATF_LINE_NO = re.compile(r"^\s*\d+[a-z]?'*\.\s+")


def raw_lines_to_tokens(lines: list[str]) -> list[list[str]]:
    """Tokens of raw transliterated lines; ATF structure lines (`&`, `@`, `#`, `$`) are dropped and
    line numbers like `3.` or `4'.` stripped."""
    return [toks for _, toks in indexed_raw_tokens(lines)]


def indexed_raw_tokens(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(0-based index in `lines`, tokens) of each line `raw_lines_to_tokens` keeps, so that files aligned
    line-for-line with the input (e.g. reference translations) can be paired with the kept lines."""
    out = []
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s[0] in "&@#$":
            continue
        toks = _ATF_LINE_NO.sub("", s).split()
        if toks:
            out.append((i, toks))
    return out


# ---------------------------------------------------------------- named-entity lists
_UNICODE_TO_ATF = {
    "š": "sz",
    "Š": "SZ",
    "ŋ": "j",
    "Ŋ": "J",
    "ṣ": "s,",
    "Ṣ": "S,",
    "ṭ": "t,",
    "Ṭ": "T,",
    "ḫ": "h",
    "Ḫ": "H",
    "ĝ": "g",
    "Ĝ": "G",
}
# The city list's QN (place name): the NER corpus tags cities as SN (settlement), e.g. nibru{ki} SN 64x vs
# GN 1x, umma{ki} SN 27x, adab{ki} SN 3x vs GN 1x; GN is kept for regions and foreign lands.
LIST_TAG_MAP = {"QN": "SN"}


def to_ascii_atf(text: str) -> str:
    """Unicode transliteration (š, ŋ, ṣ…) to the ASCII-ATF spelling the corpora use (sz, j, s,…)."""
    return "".join(_UNICODE_TO_ATF.get(c, c) for c in text)


def load_entity_lists(root: str | Path | None = None) -> dict[str, list[list[str]]]:
    """{NER tag: [entity tokens, ...]} from `named_entities/*.csv` (columns Text, NER), in lower-case
    ASCII-ATF. City names (QN, tagged SN as in the corpus) are given in both the list's plain spelling
    and the corpus spelling with the place determinative (`adab` and `adab{ki}`). Most list entries are
    modern spellings that never occur in the corpora: vet them with `taggers.attested_entries` before
    using them for augmentation."""
    base = (Path(root) if root is not None else data_dir()) / "named_entities"
    if not base.is_dir():
        raise LmlabError(
            f"{base} does not exist: the named-entity lists live in <data>/sumerian/named_entities/"
        )
    out: dict[str, list[list[str]]] = {}
    for path in sorted(base.glob("*.csv")):
        reader = csv.DictReader(io.StringIO(read_text(path, "named-entity list", allow_empty=True), newline=""))
        try:
            if not reader.fieldnames or "Text" not in reader.fieldnames or "NER" not in reader.fieldnames:
                raise LmlabError(
                    f"{path}: expected a header with columns Text and NER, got {reader.fieldnames}"
                )
            for row in reader:
                text, tag = (row.get("Text") or "").strip(), (row.get("NER") or "").strip()
                if not text or not tag:
                    raise LmlabError(f"{path}:{reader.line_num}: empty Text or NER field; fill or delete the row")
                words = to_ascii_atf(text).lower().rstrip(".").split()
                variants = [words]
                if tag == "QN" and words and "{ki}" not in words[-1]:
                    variants.append(words[:-1] + [words[-1] + "{ki}"])
                out.setdefault(LIST_TAG_MAP.get(tag, tag), []).extend(variants)
        except csv.Error as e:  # e.g. a field over csv's size limit, a stray quote
            raise LmlabError(f"{path}:{reader.line_num}: not a valid CSV row ({e}); fix or delete the row") from None
    return out


def held_out_sources(root: str | Path | None = None) -> list[str]:
    """Sumerian sides of the dev and test splits of every parallel corpus: text that training data (e.g. the
    monolingual lines used for self-training) must not contain, because the corpora overlap (an Ur III line
    of `ur3_line/test` can sit inside an `all_sent/train` sentence)."""
    return [s for c in PARALLEL_CORPORA for split in ("dev", "test") for s, _ in load_parallel(c, split, root)]


# ---------------------------------------------------------------- download (needs internet)
PIPELINE_REPO = ("cdli-gh/Sumerian-Translation-Pipeline", "9acfa98")
NMT_REPO = ("cdli-gh/Semi-Supervised-NMT-for-Sumerian-English", "4002518")
_NMT_DIRS = {"ur3_line": "UrIIILineByLine", "ur3_sent": "UrIIICompSents", "all_sent": "allCompSents"}


def download_manifest(
    pipeline_ref: str = PIPELINE_REPO[1], nmt_ref: str = NMT_REPO[1]
) -> list[tuple[str, str]]:
    """(url, relative destination) for every file of the data folder, as raw GitHub URLs at fixed commits."""

    def raw(repo, ref, path):
        return f"https://raw.githubusercontent.com/{repo}/{ref}/{path}"

    pipe, nmt = PIPELINE_REPO[0], NMT_REPO[0]
    files = []
    for task, folder in (("pos", "POS_corpus"), ("ner", "NER_corpus")):
        for split in SPLITS:
            files.append((raw(pipe, pipeline_ref, f"FLAIR/{folder}/{split}.txt"), f"{task}/{split}.txt"))
    for corpus, folder in _NMT_DIRS.items():
        for split in SPLITS:
            for ext in ("sum", "eng"):
                files.append(
                    (
                        raw(nmt, nmt_ref, f"dataset/dataToUse/{folder}/{split}.{ext}"),
                        f"parallel/{corpus}/{split}.{ext}",
                    )
                )
    files += [
        (raw(pipe, pipeline_ref, "Dataset/human_eval_sum.txt"), "misc/human_eval.sum"),
        (raw(pipe, pipeline_ref, "Dataset/human_eval_eng.txt"), "misc/human_eval.eng"),
        (raw(pipe, pipeline_ref, "Dataset/sumerian_demo.txt"), "misc/sumerian_demo.txt"),
    ]
    for name in ("city_ner.csv", "months_ner.csv", "royalname_ner.csv"):
        files.append((raw(pipe, pipeline_ref, f"Basic_Named_Entities/{name}"), f"named_entities/{name}"))
    files += [
        (raw(pipe, pipeline_ref, "LICENSE.md"), "LICENSE-Sumerian-Translation-Pipeline.md"),
        (raw(nmt, nmt_ref, "LICENSE"), "LICENSE-Semi-Supervised-NMT.txt"),
    ]
    return files


def download(
    to_dir: str | Path,
    overwrite: bool = False,
    timeout: float = 30.0,
    opener=urllib.request.urlopen,
    log=_log.info,
) -> Path:
    """Fetch the data into `to_dir/sumerian/` (so `--data to_dir` works), with a progress bar over the files.
    Needs internet access."""
    dest_root = Path(to_dir) / "sumerian"
    for url, rel in track(download_manifest(), "sumerian download", unit="file"):
        dest = dest_root / rel
        if dest.exists() and not overwrite:
            continue
        try:
            with opener(url, timeout=timeout) as resp:
                data = resp.read()
        except (urllib.error.URLError, OSError) as e:
            raise LmlabError(
                f"could not download {url}: {e}; this needs internet access (files already "
                f"fetched stay in {dest_root}; rerun to resume)"
            ) from e
        atomic_write_bytes(dest, data)
        log(f"{rel}  ({len(data):,} bytes)")
    return dest_root
