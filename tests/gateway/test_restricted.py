"""A stored metadata text is read once per process, kept by the text (gateway.restricted)."""

from __future__ import annotations

from gateway.restricted import (
    MAX_TEXT_CHARS,
    StoredMetadata,
    StoredMetadataMemo,
    read_metadata_text,
)
from gateway.strictjson import MAX_DEPTH, EncodedJSON, UnreadableJSON
from tests.jsonstrict import strict_parse


def test_a_text_is_read_under_the_strict_mapping() -> None:
    read = read_metadata_text('{"a": NaN, "s": "x\\ud800", "k": [Infinity]}')
    assert isinstance(read.whole, EncodedJSON)
    assert strict_parse(read.whole.text.encode()) == {"a": None, "s": "x\ufffd", "k": [None]}
    assert read.lean == {"a": None, "s": "x\ufffd", "k": [None]}


def test_the_lean_value_is_the_metadata_without_its_snapshot() -> None:
    read = read_metadata_text('{"workflow_id": "wf", "market_data_snapshot": [{"c": 1}]}')
    assert strict_parse(read.whole.text.encode()) == {  # type: ignore[union-attr]
        "workflow_id": "wf",
        "market_data_snapshot": [{"c": 1}],
    }
    assert read.lean == {"workflow_id": "wf"}


def test_a_text_that_is_not_json_reads_as_itself() -> None:
    assert read_metadata_text("not json") == StoredMetadata(EncodedJSON('"not json"'), "not json")


def test_a_value_nested_too_deep_is_unreadable_whole_and_lean() -> None:
    read = read_metadata_text("[" * 100 + "]" * 100)
    unreadable = UnreadableJSON(f"nested deeper than {MAX_DEPTH} levels")
    assert read == StoredMetadata(unreadable, unreadable)


def test_what_was_read_of_a_text_is_found_by_an_equal_text() -> None:
    memo = StoredMetadataMemo()
    text = '{"a": [1, 2.5, NaN]}'
    memo.keep(text, read_metadata_text(text))
    found = memo.get("".join(['{"a": [1, ', "2.5, NaN]}"]))  # equal, not the same object
    assert found is not None
    assert found.whole == EncodedJSON('{"a":[1,2.5,null]}')


def test_another_text_is_not_found() -> None:
    memo = StoredMetadataMemo()
    memo.keep('{"a": 1}', read_metadata_text('{"a": 1}'))
    assert memo.get('{"a": 2}') is None


def test_a_text_longer_than_the_limit_is_not_kept() -> None:
    memo = StoredMetadataMemo()
    long_text = '"' + "x" * MAX_TEXT_CHARS + '"'
    memo.keep(long_text, read_metadata_text(long_text))
    assert memo.get(long_text) is None
    assert len(memo) == 0


def test_the_least_recently_used_texts_go_first_when_the_bound_is_reached() -> None:
    memo = StoredMetadataMemo(max_chars=3 * (2 * 1000 + 200))
    texts = [f'"{i}{"x" * 997}"' for i in range(4)]
    for text in texts[:3]:
        memo.keep(text, read_metadata_text(text))
    assert memo.get(texts[0]) is not None  # used: the second is now the oldest
    memo.keep(texts[3], read_metadata_text(texts[3]))
    assert [memo.get(t) is not None for t in texts] == [True, False, True, True]
