"""NSP pairs: Google's create_pretraining_data semantics, statistics, determinism."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from data_prep.pairs import (
    CLS_ID,
    SEP_ID,
    TokenizedDocuments,
    assign_pools,
    create_pairs,
    document_pairs,
    make_pair_spans,
    pair_columns,
    pooled_pair_spans,
)


def synthetic_documents(num_docs: int, seed: int, max_sentence: int = 12, max_sentences: int = 30):
    """Documents whose token ids are unique and increasing, so every token tells where it came from."""
    rng = random.Random(seed)
    docs, next_id = [], 10
    for _ in range(num_docs):
        doc = []
        for _ in range(rng.randint(1, max_sentences)):
            length = rng.randint(1, max_sentence)
            doc.append(list(range(next_id, next_id + length)))
            next_id += length
        docs.append(doc)
    return docs


def google_instances(all_documents, document_index, max_seq_length, short_seq_prob, rng):
    """Google's create_instances_from_document (BERT repo), minus the masking, as a reference."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                is_random_next = False
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                while len(tokens_a) + len(tokens_b) > max_num_tokens:
                    trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                    assert len(trunc) >= 1
                    if rng.random() < 0.5:
                        del trunc[0]
                    else:
                        trunc.pop()
                tokens = [CLS_ID, *tokens_a, SEP_ID, *tokens_b, SEP_ID]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                instances.append((tokens, segment_ids, int(is_random_next)))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


@pytest.mark.parametrize(("max_seq_length", "max_sentence"), [(16, 12), (64, 12), (128, 60)])
def test_same_pairs_as_google(max_seq_length, max_sentence):
    docs = synthetic_documents(60, seed=3, max_sentence=max_sentence)
    flat = TokenizedDocuments.from_lists(docs)
    sent_offsets = flat.sentence_offsets.tolist()
    doc_offsets = flat.document_offsets.tolist()
    for index in range(len(docs)):
        expected = google_instances(docs, index, max_seq_length, 0.3, random.Random(index))
        columns = [[] for _ in range(11)]
        document_pairs(
            sent_offsets, doc_offsets, index, random.Random(index), max_seq_length, 0.3, columns
        )
        a_lo, a_hi, b_lo, b_hi, is_random = (np.asarray(c) for c in columns[:5])
        got = []
        for k in range(len(a_lo)):
            a = flat.tokens[a_lo[k] : a_hi[k]].tolist()
            b = flat.tokens[b_lo[k] : b_hi[k]].tolist()
            got.append(
                (
                    [CLS_ID, *a, SEP_ID, *b, SEP_ID],
                    [0] * (len(a) + 2) + [1] * (len(b) + 1),
                    int(is_random[k]),
                )
            )
        assert got == expected


@pytest.fixture(scope="module")
def many_docs():
    return synthetic_documents(400, seed=7)


@pytest.fixture(scope="module")
def pairs(many_docs):
    return create_pairs(many_docs, max_seq_length=48, short_seq_prob=0.1, dupe_factor=5, seed=11)


def token_home(docs):
    """token id → (document, sentence)."""
    home = {}
    for d, doc in enumerate(docs):
        for s, sentence in enumerate(doc):
            for token in sentence:
                home[token] = (d, s)
    return home


def test_structure(pairs):
    for p in pairs:
        ids, types = p.input_ids, p.token_type_ids
        assert len(ids) <= 48 and len(ids) == len(types)
        assert (
            ids[0] == CLS_ID
            and ids[-1] == SEP_ID
            and ids.count(SEP_ID) == 2
            and ids.count(CLS_ID) == 1
        )
        first_sep = ids.index(SEP_ID)
        assert first_sep >= 2 and first_sep <= len(ids) - 3  # A and B non-empty
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        assert p.next_sentence_label in (0, 1)


def test_statistics(pairs, many_docs):
    labels = np.array([p.next_sentence_label for p in pairs])
    chunks = np.array([p.chunk_sentences for p in pairs])
    # a one-sentence chunk can only get a random B; otherwise a fair coin
    assert labels[chunks == 1].all()
    assert abs(labels[chunks >= 2].mean() - 0.5) < 0.03
    assert 0.45 < labels.mean() < 0.65
    # the short target is drawn once per document and pass: ~10% of them
    short_by_doc = defaultdict(set)
    for p in pairs:
        short_by_doc[(p.document, p.dupe)].add(p.short_target)
    assert all(len(v) == 1 for v in short_by_doc.values())
    short_by_doc = {k: v.pop() for k, v in short_by_doc.items()}
    assert len(short_by_doc) == 400 * 5  # every document gives pairs in every pass
    assert abs(np.mean(list(short_by_doc.values())) - 0.1) < 0.025
    assert all(p.target_length == 45 for p in pairs if not p.short_target)
    assert all(2 <= p.target_length <= 45 for p in pairs)
    # full-length targets fill the sequence most of the time
    full = [len(p.input_ids) for p in pairs if not p.short_target and p.chunk_sentences >= 2]
    assert np.mean(full) > 40


def test_b_is_continuation_or_from_another_document(pairs, many_docs):
    home = token_home(many_docs)
    for p in pairs:
        sep = p.input_ids.index(SEP_ID)
        a, b = p.input_ids[1:sep], p.input_ids[sep + 1 : -1]
        a_docs = {home[t][0] for t in a}
        b_docs = {home[t][0] for t in b}
        assert a_docs == {p.document} and b_docs == {p.b_document}
        assert a == list(range(a[0], a[-1] + 1)) and b == list(range(b[0], b[-1] + 1))  # contiguous
        if p.next_sentence_label == 0:
            assert p.b_document == p.document
            # B follows A in the text: only tokens cut off by truncation lie between them
            assert b[0] > a[-1]
            if len(a) + len(b) < 45:  # nothing was truncated
                assert b[0] == a[-1] + 1
        else:
            assert p.b_document != p.document  # 400 documents: 10 retries never all fail


def test_single_sentence_documents_give_random_pairs_and_serve_as_b():
    docs = [[[10, 11, 12]], [[20, 21], [22, 23]], [[30]], [[40, 41], [42]]]
    pairs = create_pairs(docs, max_seq_length=8, short_seq_prob=0.0, dupe_factor=50, seed=1)
    assert {p.document for p in pairs} == {0, 1, 2, 3}
    assert all(p.next_sentence_label == 1 for p in pairs if p.document in (0, 2))
    assert {p.b_document for p in pairs} >= {0, 2}
    assert any(p.next_sentence_label == 0 for p in pairs)


def test_deterministic_and_seeded(many_docs):
    a = create_pairs(many_docs[:50], max_seq_length=32, dupe_factor=2, seed=5)
    b = create_pairs(many_docs[:50], max_seq_length=32, dupe_factor=2, seed=5)
    c = create_pairs(many_docs[:50], max_seq_length=32, dupe_factor=2, seed=6)
    assert a == b and a != c


def test_num_proc_does_not_change_the_result(many_docs):
    flat = TokenizedDocuments.from_lists(many_docs)
    kwargs = dict(max_seq_length=40, short_seq_prob=0.2, dupe_factor=3, seed=9, salt="train")
    one = make_pair_spans(flat, num_proc=1, **kwargs)
    two = make_pair_spans(flat, num_proc=2, **kwargs)
    for field in ("a_start", "a_end", "b_start", "b_end", "is_random_next", "document", "dupe"):
        assert np.array_equal(getattr(one, field), getattr(two, field)), field
    ids1, types1, off1, lab1 = pair_columns(flat.tokens, one)
    ids2, types2, off2, lab2 = pair_columns(flat.tokens, two)
    assert np.array_equal(ids1, ids2) and np.array_equal(types1, types2)
    assert np.array_equal(off1, off2) and np.array_equal(lab1, lab2)
    assert ids1.dtype == np.int32 and types1.dtype == np.int8 and lab1.dtype == np.int8


def test_unshuffled_order_is_pass_then_document(many_docs):
    flat = TokenizedDocuments.from_lists(many_docs[:20])
    spans = make_pair_spans(flat, max_seq_length=32, dupe_factor=2, seed=1, shuffle=False)
    keys = list(zip(spans.dupe.tolist(), spans.document.tolist(), strict=True))
    assert keys == sorted(keys)


def test_from_lists_drops_empty():
    flat = TokenizedDocuments.from_lists([[[1, 2], [], [3]], [], [[]], [[4]]])
    assert flat.tokens.tolist() == [1, 2, 3, 4]
    assert flat.sentence_offsets.tolist() == [0, 2, 3, 4]
    assert flat.document_offsets.tolist() == [0, 2, 3]


def test_subset_takes_whole_documents(many_docs):
    flat = TokenizedDocuments.from_lists(many_docs)
    chosen = [0, 3, 4, 399]
    got = flat.subset(np.array(chosen))
    expected = TokenizedDocuments.from_lists([many_docs[k] for k in chosen])
    for name in ("tokens", "sentence_offsets", "document_offsets"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    assert flat.tokens_per_document().tolist() == [sum(map(len, d)) for d in many_docs]


def test_assign_pools_is_a_seeded_balanced_partition():
    sizes = np.random.default_rng(0).integers(1, 500, 1000)
    pools = assign_pools(sizes, pool_tokens=int(sizes.sum()) // 7, seed=1, salt="train")
    assert len(pools) == 8
    assert np.array_equal(np.sort(np.concatenate(pools)), np.arange(1000))
    assert all(np.all(np.diff(p) > 0) for p in pools)
    per_pool = [int(sizes[p].sum()) for p in pools]
    assert max(per_pool) <= sizes.sum() / 8 + sizes.max()  # at most one document over the share
    again = assign_pools(sizes, pool_tokens=int(sizes.sum()) // 7, seed=1, salt="train")
    other = assign_pools(sizes, pool_tokens=int(sizes.sum()) // 7, seed=1, salt="validation")
    assert all(np.array_equal(a, b) for a, b in zip(pools, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(pools, other, strict=True))
    # Pools are random samples of the split, not stretches of it.
    assert all(p.min() < 100 and p.max() > 900 for p in pools)
    (whole,) = assign_pools(sizes, pool_tokens=int(sizes.sum()), seed=1, salt="train")
    assert np.array_equal(whole, np.arange(1000))


def test_one_pool_gives_the_pairs_of_the_whole_split(many_docs):
    flat = TokenizedDocuments.from_lists(many_docs)
    kwargs = dict(max_seq_length=40, short_seq_prob=0.2, dupe_factor=2, seed=9, salt="train")
    ((pool, pooled),) = pooled_pair_spans(
        flat.subset, flat.tokens_per_document(), pool_tokens=flat.tokens.size, **kwargs
    )
    whole = make_pair_spans(flat, **kwargs)
    assert np.array_equal(pool, np.arange(len(many_docs)))
    for field in ("a_start", "a_end", "b_start", "b_end", "is_random_next", "document", "dupe"):
        assert np.array_equal(getattr(pooled, field), getattr(whole, field)), field


def test_pools_keep_googles_statistics():
    """Cutting a split into 9 pools changes which documents random B's come from, not the
    statistics: random-next fraction, short targets, A/B and pair lengths and the number of pairs
    stay within 1% of one pool's (78,000 pairs: sampling noise is ~0.3%)."""
    docs = synthetic_documents(2000, seed=0, max_sentence=15, max_sentences=40)
    flat = TokenizedDocuments.from_lists(docs)
    home = np.zeros(flat.tokens.max() + 1, dtype=np.int64)  # token id -> document
    for d in range(flat.num_documents):
        lo, hi = flat.sentence_offsets[flat.document_offsets[[d, d + 1]]]
        home[flat.tokens[lo:hi]] = d
    kwargs = dict(max_seq_length=32, short_seq_prob=0.1, dupe_factor=5, seed=0, salt="train")

    def run(pool_tokens):
        pools, spans, tokens = [], [], []
        for pool, s in pooled_pair_spans(
            flat.subset, flat.tokens_per_document(), pool_tokens=pool_tokens, **kwargs
        ):
            pools.append(pool)
            spans.append(s)
            tokens.append(flat.subset(pool).tokens)
        return pools, spans, tokens

    def stats(spans):
        cat = lambda name: np.concatenate([getattr(s, name) for s in spans])  # noqa: E731
        a, b = cat("a_end") - cat("a_start"), cat("b_end") - cat("b_start")
        return {"pairs": len(a), "random next": cat("is_random_next").mean(),
                "short target": cat("short_target").mean(), "A length": a.mean(),
                "B length": b.mean(), "pair length": (a + b + 3).mean()}  # fmt: skip

    _, (whole,), _ = run(flat.tokens.size)
    pools, spans, tokens = run(flat.tokens.size // 8)
    assert len(pools) == 9
    one, many = stats([whole]), stats(spans)
    assert one["pairs"] > 75_000
    for key in one:
        assert many[key] == pytest.approx(one[key], rel=0.01), key
    # A document's own draws come first: its target length per pass is the same in any pool.
    facts = zip(whole.document, whole.dupe, whole.short_target, strict=True)
    short = {(d, p): s for d, p, s in facts}
    for pool, s in zip(pools, spans, strict=True):
        keys = zip(pool[s.document], s.dupe, s.short_target, strict=True)
        assert all(short[(d, p)] == flag for d, p, flag in keys)
    # A random B comes from another document of the same pool.
    for pool, s, toks in zip(pools, spans, tokens, strict=True):
        random_b = s.is_random_next
        b_home = home[toks[s.b_start[random_b]]]
        assert np.isin(b_home, pool).all()
        assert (b_home != home[toks[s.a_start[random_b]]]).mean() > 0.99


def test_bad_max_seq_length():
    with pytest.raises(ValueError, match="max_seq_length"):
        create_pairs([[[1], [2]]], max_seq_length=4)
