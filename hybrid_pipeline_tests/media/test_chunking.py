"""Chunking properties: every character covered, overlaps as configured, bounded length, stable ids."""

from __future__ import annotations

import random

import pytest

from hybrid_pipeline.media.chunking import chunk_documents, chunk_text


def _texts() -> list[str]:
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "x" * 40, "\n", "one\ttwo", "é", "日本"]
    out = ["a", "short text", "x" * 5000, " " * 3 + "lead and trail" + " " * 3]
    out += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 600))) for _ in range(30)]
    return out


@pytest.mark.parametrize("size,overlap", [(50, 0), (50, 10), (200, 40), (7, 6), (2, 1)])
def test_chunks_cover_every_character_overlap_exactly_and_stay_within_size(size: int, overlap: int) -> None:
    for text in _texts():
        chunks = chunk_text(text, size, overlap)
        assert chunks[0].start == 0 and chunks[-1].end == len(text)
        covered = [False] * len(text)
        for c in chunks:
            assert 0 < c.end - c.start <= size and c.text == text[c.start:c.end]
            for i in range(c.start, c.end):
                covered[i] = True
        assert all(covered)
        for a, b in zip(chunks, chunks[1:]):
            assert a.end - b.start == overlap and b.start > a.start  # exactly the configured overlap, always progressing


def test_chunks_end_on_whitespace_when_the_window_has_some_and_cut_a_huge_token_hard() -> None:
    text = "word " * 100
    assert all(c.text.endswith(" ") for c in chunk_text(text, 52, 10)[:-1])
    blob = "Q" * 10_000  # a single huge token
    chunks = chunk_text(blob, 800, 160)
    assert max(len(c.text) for c in chunks) == 800 and len(chunks) == 16


def test_empty_and_whitespace_only_documents_have_no_chunks_and_are_reported() -> None:
    frame, empty = chunk_documents([("a" * 64, ""), ("b" * 64, " \n\t "), ("c" * 64, None), ("d" * 64, "text")])
    assert empty == ["a" * 64, "b" * 64, "c" * 64]
    assert frame["sha256"].to_list() == ["d" * 64]


def test_chunk_ids_are_stable_across_runs_and_change_with_content_or_parameters() -> None:
    docs = [("s1", "the quick brown fox " * 40), ("s2", "lorem ipsum " * 90)]
    a, _ = chunk_documents(docs, 100, 20)
    b, _ = chunk_documents(list(reversed(docs)), 100, 20)
    assert a.sort("chunk_id").equals(b.sort("chunk_id"))
    assert a["chunk_id"].n_unique() == a.height
    c, _ = chunk_documents(docs, 120, 20)
    assert not set(a["chunk_id"]) & set(c["chunk_id"])
    d, _ = chunk_documents([("s1-changed", docs[0][1])], 100, 20)
    assert not set(a["chunk_id"]) & set(d["chunk_id"])


def test_pages_follow_form_feeds_and_bad_parameters_name_the_setting() -> None:
    text = "page one text\fpage two text\fthree"
    chunks = chunk_text(text, 10, 2)
    assert [c.page for c in chunks] == [text[:c.start].count("\f") + 1 for c in chunks]
    assert chunks[0].page == 1 and chunk_text(text, 14, 0)[-1].page == 3
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_text("abc", 10, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_text("abc", 1, 0)
