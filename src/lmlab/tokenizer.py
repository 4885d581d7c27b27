"""Tokenizers with special tokens: character-level (synthetic tasks) and byte-level BPE (HF `tokenizers`).

Both expose `encode(text, bos=False, eos=False) -> list[int]`, `decode(ids) -> str`, `vocab_size`,
`bos_id`, `eos_id`, `pad_id`, `token_id(special)`, `save(path)` and `Tokenizer.load(path)`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path

from lmlab.utils import LmlabError, atomic_write_json, atomic_write_text

DEFAULT_SPECIALS = ("<pad>", "<bos>", "<eos>")
HF_ROLE_KEYS = {"<pad>": "pad_token", "<bos>": "bos_token", "<eos>": "eos_token"}
log = logging.getLogger(__name__)


class Tokenizer(ABC):
    specials: list[str]
    vocab_size: int

    def role_token(self, role: str) -> str:
        """The token that plays lmlab's `role` ("<pad>", "<bos>" or "<eos>") in this tokenizer."""
        return role

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self.token_id("<pad>")

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sequence token (lmlab starts every document with it)."""
        return self.token_id("<bos>")

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token."""
        return self.token_id("<eos>")

    @abstractmethod
    def token_id(self, special: str) -> int:
        """Id of the special token `special` (KeyError when the tokenizer has none)."""

    @abstractmethod
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, with BOS first and EOS last when asked."""

    @abstractmethod
    def decode(self, ids, skip_special: bool = False) -> str:
        """The text of `ids`; `skip_special` drops special tokens."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the tokenizer (a folder gets `tokenizer.json`) atomically."""

    @staticmethod
    def load(path: str | Path) -> "Tokenizer":
        """An lmlab tokenizer from a tokenizer.json or its folder (a stock HF one through its roles)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.exists():
            raise LmlabError(f"tokenizer file {p} not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LmlabError(
                f"tokenizer file {p} is not JSON ({e}): give a tokenizer.json saved by lmlab "
                "(or use data.tokenizer=char|bpe)"
            ) from None
        if not isinstance(data, dict):
            raise LmlabError(f"{p} is not an lmlab tokenizer file (a JSON object was expected)")
        if data.get("lmlab_type") == "char":
            try:
                return CharTokenizer(data["chars"], data["specials"])
            except (KeyError, TypeError) as e:
                raise LmlabError(f"char tokenizer file {p} is damaged (missing or bad {e})") from None
        if data.get("lmlab_type") == "bpe" or "model" in data:
            try:
                tok = BPETokenizer.from_file(p)
            except Exception as e:  # tokenizers raises a bare Exception on files it cannot read
                raise LmlabError(f"tokenizer file {p} could not be read as a BPE tokenizer: {e}") from None
            missing = [t for t in DEFAULT_SPECIALS if t not in tok.specials]
            named = hf_roles(p)
            if missing and not (named.get("bos_token") or named.get("eos_token")):
                raise LmlabError(
                    f"tokenizer file {p} lacks the special token(s) {', '.join(missing)} and no "
                    "special_tokens_map.json or tokenizer_config.json beside it names a bos_token/eos_token: save "
                    "a stock tokenizer with transformers' save_pretrained, or train one with data.tokenizer=bpe "
                    "(or char)"
                )
            if missing:
                return tok.with_roles(named, p)
            return tok
        raise LmlabError(f"{p} is not an lmlab tokenizer file")


class CharTokenizer(Tokenizer):
    """Specials first (ids 0..S-1: <pad>, <bos>, <eos>, then task markers), then one id per character."""

    def __init__(self, chars, specials=DEFAULT_SPECIALS):
        self.specials = list(specials)
        for s in DEFAULT_SPECIALS:
            if s not in self.specials:
                self.specials.insert(DEFAULT_SPECIALS.index(s), s)
        self.chars = sorted(set(chars))
        self.itos = self.specials + self.chars
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self._special_ids = {s: i for i, s in enumerate(self.specials)}

    @classmethod
    def from_text(cls, text: str, specials=DEFAULT_SPECIALS) -> "CharTokenizer":
        """A character tokenizer over the characters of `text`."""
        return cls(set(text), specials)

    @property
    def vocab_size(self) -> int:
        """Specials plus characters."""
        return len(self.itos)

    def token_id(self, special: str) -> int:
        """Id of the special token `special`."""
        if special not in self._special_ids:
            raise KeyError(f"unknown special token {special!r}; have {self.specials}")
        return self._special_ids[special]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """One id per character (inline specials such as `<sep>` are one id); unknown characters raise."""
        ids = []
        i = 0
        while i < len(text):
            if text[i] == "<":  # special tokens may appear inline, e.g. "<sep>"
                j = text.find(">", i)
                if j > 0 and text[i:j + 1] in self._special_ids:
                    ids.append(self._special_ids[text[i:j + 1]])
                    i = j + 1
                    continue
            c = text[i]
            if c not in self.stoi:
                raise LmlabError(f"character {c!r} is not in the tokenizer's vocabulary ({len(self.chars)} chars)")
            ids.append(self.stoi[c])
            i += 1
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids, skip_special: bool = False) -> str:
        """The characters of `ids`; `skip_special` drops special tokens."""
        out = []
        for i in ids:
            i = int(i)
            if i < len(self.specials):
                if not skip_special:
                    out.append(self.itos[i])
            elif i < len(self.itos):
                out.append(self.itos[i])
        return "".join(out)

    def save(self, path: str | Path) -> None:
        """Write `{chars, specials}` as tokenizer.json (atomically)."""
        p = Path(path)
        if p.suffix != ".json":
            p = p / "tokenizer.json"
        atomic_write_text(p, json.dumps({"lmlab_type": "char", "chars": self.chars, "specials": self.specials}))


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with HF `tokenizers`; specials get the first ids."""

    def __init__(self, tok, roles: dict[str, str] | None = None):
        self.tok = tok
        self.roles = dict(roles or {})  # lmlab role ("<bos>") -> a stock tokenizer's own token ("<|endoftext|>")
        self.specials = [t for t in DEFAULT_SPECIALS if tok.token_to_id(self.role_token(t)) is not None]
        self.specials += [t.content for t in tok.get_added_tokens_decoder().values()
                          if t.content not in self.specials and t.content not in self.roles.values()]

    def role_token(self, role: str) -> str:
        """The token that plays lmlab's `role` here (a stock tokenizer's own, else `role`)."""
        return self.roles.get(role, role)

    def with_roles(self, named: dict[str, str], path: Path) -> BPETokenizer:
        """This tokenizer with lmlab's roles played by a stock tokenizer's own tokens (`named`: HF's bos_token,
        eos_token, pad_token): BOS falls back to EOS and back (GPT-2 has one token for both); a missing pad is
        added as `<pad>`."""
        bos = named.get("bos_token") or named["eos_token"]
        eos = named.get("eos_token") or bos
        roles = {"<bos>": bos, "<eos>": eos, "<pad>": named.get("pad_token") or "<pad>"}
        for role, t in roles.items():
            if role != "<pad>" and self.tok.token_to_id(t) is None:
                raise LmlabError(f"{path}: the {HF_ROLE_KEYS[role]} {t!r} is not in the vocabulary")
        if self.tok.token_to_id(roles["<pad>"]) is None:
            from tokenizers import AddedToken  # only BPE tokenizers need the HF tokenizers library

            self.tok.add_special_tokens([AddedToken("<pad>", special=True, normalized=False)])
            log.info("%s has no pad token: added <pad> as id %d (padding is never trained on)", path,
                     self.tok.token_to_id("<pad>"))
        log.info("%s: lmlab's <bos>/<eos>/<pad> are its %s/%s/%s", path, roles["<bos>"], roles["<eos>"],
                 roles["<pad>"])
        return BPETokenizer(self.tok, roles)

    @classmethod
    def train(cls, texts, vocab_size: int = 1024, specials=DEFAULT_SPECIALS, min_frequency: int = 2) -> "BPETokenizer":
        """A byte-level BPE of `vocab_size` trained on `texts`, specials first."""
        from tokenizers import Tokenizer as HFTok  # only BPE tokenizers need the HF tokenizers library

        # only BPE tokenizers need the HF tokenizers library
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = list(dict.fromkeys(list(DEFAULT_SPECIALS) + list(specials)))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=min_frequency,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        """The BPE saved in a HF `tokenizers` JSON file."""
        from tokenizers import Tokenizer as HFTok  # only BPE tokenizers need the HF tokenizers library

        return cls(HFTok.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        """Vocabulary size, added tokens included."""
        return self.tok.get_vocab_size()

    def token_id(self, special: str) -> int:
        """Id of the token playing `special` (KeyError when there is none)."""
        i = self.tok.token_to_id(self.role_token(special))
        if i is None:
            raise KeyError(f"unknown special token {special!r}")
        return i

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Byte-level BPE ids of `text`, with BOS first and EOS last when asked."""
        ids = self.tok.encode(text, add_special_tokens=False).ids  # a stock tokenizer's own BOS would double ours
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids, skip_special: bool = False) -> str:
        """The text of `ids`; `skip_special` drops special tokens."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (and the roles beside it when a stock tokenizer's play them)."""
        p = Path(path)
        if p.suffix != ".json":
            p = p / "tokenizer.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        if self.roles:  # before the tokenizer: a tokenizer.json without <bos> is read through this file
            atomic_write_json(roles_file(p), {HF_ROLE_KEYS[r]: t for r, t in self.roles.items()})
        atomic_write_text(p, self.tok.to_str())


def roles_file(path: Path) -> Path:
    """Where a stock tokenizer's roles lie beside its file: HF's special_tokens_map.json for a tokenizer.json."""
    return path.with_name("special_tokens_map.json" if path.name == "tokenizer.json"
                          else f"{path.stem}.special_tokens_map.json")


def hf_roles(path: Path) -> dict[str, str]:
    """bos_token/eos_token/pad_token named beside a tokenizer file (special_tokens_map.json, then
    tokenizer_config.json); values may be strings or HF's {"content": ...} objects."""
    named: dict[str, str] = {}
    for f in (roles_file(path), path.with_name("tokenizer_config.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in HF_ROLE_KEYS.values():
            v = data.get(key) if isinstance(data, dict) else None
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str) and v and key not in named:
                named[key] = v
    return named


def missing_chars(codec, chars) -> list[str]:
    """The characters of `chars` that `codec` (an lmlab tokenizer or `lmlab.hf.HFCodec`) cannot encode: an lmlab
    tokenizer refuses them; a Hugging Face one maps them to its unknown token or drops them."""
    unk = getattr(getattr(codec, "tok", None), "unk_token_id", None)
    out = []
    for c in sorted(set(chars)):
        try:
            ids = codec.encode(c)
        except LmlabError:
            out.append(c)
            continue
        # a normaliser may fold a lone space into the next token, so only a non-space that vanishes is missing
        if (unk is not None and unk in ids) or (not ids and not c.isspace()):
            out.append(c)
    return out
