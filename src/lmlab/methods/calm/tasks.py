"""CALM's key-value arithmetic family (paper §4.1), with a scratchpad format that tiny models learn quickly.

Keys are single tokens (`key_style="token"`, key i is the special token `<k{i}>`) or 2–6-letter strings
(`"string"`). Each key has a value in [0, value_max]. Datasets (scratchpad format):
  KV-SUBS   (augmenting model, all keys):  "<k3>+<k7>-<k1>>4+2-9"
  NUM-MATH  (anchor skill):                "4+2-9>4+2-9=-3"
  KV-MATH   (composed task):               "<k3>+<k7>-<k1>>4+2-9=-3"
With format="direct" the substituted values are omitted ("<k3>+<k7>-<k1>=-3"), as in the paper.
D_C covers `dc_key_frac` of the keys; evaluation uses expressions over the held-out keys only.
`dc_source`: "kv_math" (arithmetic over held-in keys, §3.2's reading) or "kv_subs" (substitution, §4.1's).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from lmlab.tokenizer import CharTokenizer


@dataclass
class KVTask:
    n_keys: int = 1000
    value_max: int = 9
    n_operands: tuple[int, int] = (2, 3)
    ops: str = "+-"
    key_style: str = "token"
    dc_key_frac: float = 0.2
    fmt: str = "scratchpad"
    dc_source: str = "kv_math"
    seed: int = 0
    keys: list[str] = field(init=False)
    values: dict[str, int] = field(init=False)
    dc_keys: list[str] = field(init=False)
    heldout_keys: list[str] = field(init=False)

    def __post_init__(self):
        if self.key_style not in ("token", "string"):
            raise ValueError(f"key_style must be 'token' or 'string', got {self.key_style!r}")
        if self.fmt not in ("scratchpad", "direct"):
            raise ValueError(f"fmt must be 'scratchpad' or 'direct', got {self.fmt!r}")
        if self.dc_source not in ("kv_math", "kv_subs"):
            raise ValueError(f"dc_source must be 'kv_math' or 'kv_subs', got {self.dc_source!r}")
        if set(self.ops) - set("+-*"):
            raise ValueError(f"ops must be drawn from '+-*', got {self.ops!r}")
        rng = random.Random(self.seed)
        if self.key_style == "token":
            self.keys = [f"<k{i}>" for i in range(self.n_keys)]
        else:
            seen: set[str] = set()
            while len(seen) < self.n_keys:
                seen.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6))))
            self.keys = sorted(seen)
            rng.shuffle(self.keys)
        self.values = {k: rng.randint(0, self.value_max) for k in self.keys}
        n_dc = int(round(self.dc_key_frac * self.n_keys))
        perm = self.keys[:]
        rng.shuffle(perm)
        self.dc_keys, self.heldout_keys = sorted(perm[:n_dc]), sorted(perm[n_dc:])

    # ---------------------------------------------------------------- text
    def tokenizer(self) -> CharTokenizer:
        chars = set("0123456789+-*>= ")
        specials = ["<pad>", "<bos>", "<eos>"]
        if self.key_style == "token":
            specials += self.keys
        else:
            chars |= set(string.ascii_lowercase)
            chars.add("|")
        return CharTokenizer(chars, specials)

    def _key_text(self, k: str) -> str:
        return k if self.key_style == "token" else f"{k}|"  # '|' ends a string key

    @staticmethod
    def evaluate_expr(values: list[int], ops: list[str]) -> int:
        """The value of the expression with the usual precedence (× before + and −)."""
        expr = str(values[0]) + "".join(f"{o}{v}" for o, v in zip(ops, values[1:]))
        return int(eval(expr, {"__builtins__": {}}))  # only digits and + - * built above

    def sample_expr(self, rng: random.Random, keys: list[str]):
        n = rng.randint(*self.n_operands)
        ks = [rng.choice(keys) for _ in range(n)]
        ops = [rng.choice(self.ops) for _ in range(n - 1)]
        return ks, ops

    def texts(self, ks: list[str], ops: list[str]) -> dict[str, tuple[str, str]]:
        """(prompt, completion) for each dataset view of one expression."""
        vals = [self.values[k] for k in ks]
        kexpr = self._key_text(ks[0]) + "".join(o + self._key_text(k) for o, k in zip(ops, ks[1:]))
        vexpr = str(vals[0]) + "".join(f"{o}{v}" for o, v in zip(ops, vals[1:]))
        res = str(self.evaluate_expr(vals, ops))
        if self.fmt == "scratchpad":
            return {"kv_subs": (kexpr + ">", vexpr), "num_math": (vexpr + ">", f"{vexpr}={res}"),
                    "kv_math": (kexpr + ">", f"{vexpr}={res}")}
        return {"kv_subs": (kexpr + ">", vexpr), "num_math": (vexpr + "=", res), "kv_math": (kexpr + "=", res)}

    def dataset(self, view: str, n: int, split: str, seed: int) -> list[tuple[str, str]]:
        """n (prompt, completion) pairs of a view ("kv_subs", "num_math", "kv_math") over keys of a split
        ("all", "dc", "heldout")."""
        keys = {"all": self.keys, "dc": self.dc_keys, "heldout": self.heldout_keys}[split]
        rng = random.Random(seed)
        return [self.texts(*self.sample_expr(rng, keys))[view] for _ in range(n)]

    def dc_dataset(self, n: int, seed: int) -> list[tuple[str, str]]:
        return self.dataset(self.dc_source, n, "dc", seed)

    @staticmethod
    def answer(completion: str) -> str | None:
        """The final number of a generated completion (text after the last '='), or None."""
        if "=" not in completion:
            return completion.strip() or None
        return completion.rsplit("=", 1)[1].strip() or None
