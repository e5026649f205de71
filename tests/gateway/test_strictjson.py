"""The strict JSON mapping: stored values read safely, every answer RFC 8259 and UTF-8."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.strictjson import (
    MAX_DEPTH,
    EncodedJSON,
    RequestJSONError,
    UnreadableJSON,
    dumps,
    dumps_bytes,
    loads_request,
    loads_stored,
    restrict_value,
    storable_problem,
)
from tests.jsonstrict import strict_parse

NAN = float("nan")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_stored_non_finite_numbers_read_as_null() -> None:
    assert loads_stored('{"a": NaN, "b": [Infinity, -Infinity, 1.5]}') == {
        "a": None,
        "b": [None, None, 1.5],
    }


def test_stored_lone_surrogates_read_as_replacement_characters() -> None:
    value = loads_stored('{"note": "a\\ud800b", "\\udfff": ["\\ud83d\\ude00"]}')
    assert value == {"note": "a\ufffdb", "\ufffd": ["\U0001f600"]}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 3000, 100_000])
def test_stored_values_nested_too_deep_are_unreadable_with_a_reason(depth: int) -> None:
    value = loads_stored(nested(depth))
    assert value == UnreadableJSON(f"nested deeper than {MAX_DEPTH} levels")


def test_stored_values_at_the_depth_limit_are_read() -> None:
    assert loads_stored(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))


def test_stored_text_that_is_not_json_raises_for_the_caller_to_decide() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads_stored("{not json")


def test_stored_bytes_with_invalid_utf8_read_with_replacement_characters() -> None:
    assert loads_stored(b'{"a": "\xff"}') == {"a": "\ufffd"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"query": "\xff"}', "not valid UTF-8"),
        (b'{"x": NaN}', "NaN is not a JSON number"),
        (b'{"x": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"x": "\\ud800"}', "lone UTF-16 surrogate"),
        (nested(MAX_DEPTH + 1).encode(), "nested deeper than 64"),
        (nested(5000).encode(), "nested deeper than 64"),
        (b"{not json", "body is not JSON"),
    ],
)
def test_request_bodies_that_are_not_strict_json_are_refused_with_the_reason(
    body: bytes, message: str
) -> None:
    with pytest.raises(RequestJSONError, match=message):
        loads_request(body)


def test_request_bodies_keep_valid_surrogate_pairs() -> None:
    assert loads_request(b'{"q": "\\ud83d\\ude00"}') == {"q": "\U0001f600"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"x": float("nan")}, b'{"x":null}'),
        ([float("inf"), "a\ud800"], b'[null,"a\xef\xbf\xbd"]'),
        ({"u": UnreadableJSON("why")}, b'{"u":null}'),
        ({"d": ("t", 1)}, b'{"d":["t",1]}'),
    ],
)
def test_answers_map_odd_values_to_strict_json(value: Any, expected: bytes) -> None:
    assert dumps_bytes(value) == expected
    strict_parse(dumps_bytes(value))


def test_answers_cut_python_values_nested_too_deep() -> None:
    value: list[Any] = []
    inner = value
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    decoded = strict_parse(dumps_bytes(value))
    depth = 0
    while isinstance(decoded, list) and decoded:
        decoded, depth = decoded[0], depth + 1
    assert depth == MAX_DEPTH
    assert decoded is None


def test_log_lines_use_the_same_mapping() -> None:
    assert dumps({"v": float("-inf"), "s": "\udc80"}) == '{"v": null, "s": "\ufffd"}'


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=5), children, max_size=4
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included on purpose
    | st.text(alphabet=st.characters(codec=None)),  # lone surrogates included
    _containers,
    max_leaves=30,
)


@given(json_values)
def test_every_answer_is_strict_json_whatever_the_value(value: Any) -> None:
    strict_parse(dumps_bytes(value))
    strict_parse(dumps(value).encode("utf-8"))


@given(json_values)
def test_what_python_would_store_reads_back_as_strict_json(value: Any) -> None:
    # Python's json writes NaN and lone surrogate escapes by default: other writers do exactly this.
    stored = loads_stored(json.dumps(value))
    assert not isinstance(stored, UnreadableJSON)
    strict_parse(dumps_bytes(stored))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"bars": [{"close": 1.0}, {"close": float("nan")}]}, "metadata.bars[1].close is nan"),
        ({"a": {"b": float("inf")}}, "metadata.a.b is inf"),
        ({"note": "x\ud800"}, "metadata.note holds a lone UTF-16 surrogate"),
        ({"\udfff": 1}, "metadata has a key holding a lone UTF-16 surrogate"),
        ({1: "x"}, "metadata has a key 1 that is not a string"),
        ({"when": object()}, "metadata.when is a object, which is not a JSON value"),
        ({"deep": json.loads(nested(MAX_DEPTH))}, "is nested deeper than 64 levels"),
    ],
)
def test_unstorable_values_are_named_by_key_path(value: Any, problem: str) -> None:
    found = storable_problem(value, root="metadata")
    assert found is not None
    assert problem in found


def test_strict_json_values_are_storable() -> None:
    assert storable_problem({"a": [1, 2.5, None, True, "\U0001f600"]}, root="metadata") is None


def test_encoded_json_is_spliced_into_an_answer_as_is() -> None:
    body = dumps_bytes(
        {"a": EncodedJSON('{"x":[1,2]}'), "list": [EncodedJSON("3"), "\x00:0\x00"], "n": NAN}
    )
    assert strict_parse(body) == {"a": {"x": [1, 2]}, "list": [3, "\x00:0\x00"], "n": None}


def test_a_stored_string_cannot_pose_as_a_spliced_fragment() -> None:
    # Whatever a stored string holds, it is escaped; only the encoder's own nonce is replaced.
    lookalike = '"\\u00000:0\\u0000"'
    body = dumps_bytes({"s": lookalike, "e": EncodedJSON("[1]")})
    assert strict_parse(body) == {"s": lookalike, "e": [1]}


def test_a_stored_string_spelling_a_whole_placeholder_is_served_as_itself() -> None:
    lookalike = "\x00" + "0" * 24 + ":0\x00"
    body = dumps_bytes({"s": lookalike, "e": EncodedJSON("[1]")})
    assert strict_parse(body) == {"s": lookalike, "e": [1]}


def test_a_value_is_restricted_to_strict_compact_text() -> None:
    assert restrict_value({"a": [1, "x"], "b": None}) == EncodedJSON('{"a":[1,"x"],"b":null}')
    assert restrict_value({"s": "x\ud800", "f": float("nan")}) == EncodedJSON(
        '{"s":"x\ufffd","f":null}'
    )
    unreadable = UnreadableJSON("nested deeper than 64 levels")
    assert restrict_value(unreadable) is unreadable
