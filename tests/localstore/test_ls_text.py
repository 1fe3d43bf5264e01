"""Full-text options over real HTTP: stopwords, stemming, ascii folding, pre-tokenized arrays, option validation."""

from __future__ import annotations

from ls_support import Client


def _schema(**fts: object) -> dict:
    return {"t": {"type": "string", "full_text_search": fts or True}}


def test_stemming_and_stopwords_change_matches_and_lengths(client: Client) -> None:
    docs = [{"id": 1, "t": "the fox is quick and brown"}, {"id": 2, "t": "fox jumped over the lazy dog"},
            {"id": 3, "t": "walrus is slow and inferior"}, {"id": 4, "t": "Walruses have whiskers"}]
    client.write("txt-stem", {"upsert_rows": docs, "schema": _schema(stemming=True, remove_stopwords=True)})
    client.write("txt-plain", {"upsert_rows": docs, "schema": _schema()})
    bm25 = lambda ns, q: client.ids(ns, {"rank_by": ["t", "BM25", q], "top_k": 10})
    assert bm25("txt-stem", "jumping fox") == [2, 1]  # jump(ing|ed) share a stem
    assert bm25("txt-plain", "jumping fox") == [1, 2]  # no stemming: only "fox" matches (equal scores, id order)
    assert bm25("txt-stem", "walrus whisker") == [4, 3]
    assert bm25("txt-plain", "walrus whisker") == [3]
    assert bm25("txt-stem", "the is and") == []  # only stopwords: nothing to match
    assert bm25("txt-plain", "the") == [1, 2]
    # stemming applies to token filters too
    assert client.ids("txt-stem", {"rank_by": ["id", "asc"], "top_k": 10,
                                   "filters": ["t", "ContainsAllTokens", "walrus whiskers"]}) == [4]


def test_ascii_folding(client: Client) -> None:
    client.write("txt-fold", {"upsert_rows": [{"id": 1, "t": "Pufferfish café naïve"}, {"id": 2, "t": "cafe"}],
                              "schema": _schema(ascii_folding=True)})
    assert sorted(client.ids("txt-fold", {"rank_by": ["t", "BM25", "CAFE"], "top_k": 10})) == [1, 2]
    assert client.ids("txt-fold", {"rank_by": ["t", "BM25", "naive"], "top_k": 10}) == [1]


def test_pre_tokenized_array_takes_tokens_verbatim_and_needs_an_array_query(client: Client) -> None:
    schema = {"c": {"type": "[]string", "full_text_search": {"tokenizer": "pre_tokenized_array"}}}
    client.write("txt-pre", {"upsert_rows": [{"id": 1, "c": ["New York", "the"]}, {"id": 2, "c": ["new", "york"]}],
                             "schema": schema})
    assert client.ids("txt-pre", {"rank_by": ["c", "BM25", ["New York"]], "top_k": 10}) == [1]
    assert client.ids("txt-pre", {"rank_by": ["c", "BM25", ["york"]], "top_k": 10}) == [2]
    status, err, _ = client.call("POST", "/v2/namespaces/txt-pre/query", {"rank_by": ["c", "BM25", "york"], "top_k": 1})
    assert status == 400 and 'for rank_by field "c", expecting []string' in err["error"], err


def test_bad_full_text_options_are_400_naming_the_option(client: Client) -> None:
    cases = [({"language": "klingon"}, "language"), ({"tokenizer": "word_v9"}, "tokenizer"),
             ({"max_token_length": 0}, "max_token_length"), ({"stemming": "yes"}, "stemming")]
    for fts, word in cases:
        status, err, _ = client.call("POST", "/v2/namespaces/txt-bad", {"upsert_rows": [{"id": 1, "t": "x"}],
                                                                       "schema": _schema(**fts)})
        assert status == 400 and word in err["error"], (fts, err)
    status, err, _ = client.call("POST", "/v2/namespaces/txt-bad", {
        "upsert_rows": [{"id": 1, "t": "x"}],
        "schema": {"t": {"type": "string", "full_text_search": {"tokenizer": "pre_tokenized_array"}}}})
    assert status == 400 and "[]string" in err["error"]


def test_shape_errors_name_the_value_like_serde(client: Client) -> None:
    client.write("txt-serde", {"upsert_rows": [{"id": 1, "t": "x"}]})
    cases = [
        ("/v2/namespaces/txt-serde/query", {"rank_by": ["id", "asc"], "consistency": "eventual"},
         'invalid type: string "eventual", expected struct Consistency'),
        ("/v2/namespaces/txt-serde/query", {"rank_by": ["id", "asc"], "top_k": -3},
         "invalid type: integer `-3`, expected a non-negative integer"),
        ("/v2/namespaces/txt-serde", {"upsert_rows": {"id": 2}}, "invalid type: map, expected a sequence"),
        ("/v2/namespaces/txt-serde", {"deletes": "1"}, 'invalid type: string "1", expected a sequence'),
    ]
    for path, body, wording in cases:
        status, err, _ = client.call("POST", path, body)
        assert status == 422 and wording in err["error"], (body, err)
