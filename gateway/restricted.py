"""Stored metadata texts read once per process: what each distinct text serves, kept.

A chart row's `metadata` is 36 KB of snapshot. Serving it whole (the REST document, GraphQL's
`metadata`) meant decoding it under the strict mapping and encoding it again, 3.5 ms of CPU on
this project's machine, on every read the answer cache did not hold, for text that had not
changed since it was stored. What a text serves depends on the text alone, so the memo is keyed
by the text itself: a changed row has another text and is read again; nothing kept can be
stale, and there is no TTL to tune. The reading itself (`read_metadata_text`) is CPU work for a
worker process.

Bounded in characters (LRU); texts longer than `MAX_TEXT_CHARS` are not kept (a few would push
the many chart-sized ones out, and hashing them on the event loop would cost what they save).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from gateway.rows import without_snapshot
from gateway.strictjson import EncodedJSON, UnreadableJSON, loads_stored, restrict_value

# A 500-bar snapshot is 36 KB; a 20,000-bar one 2.4 MB (read again each time it is asked for).
MAX_TEXT_CHARS = 256 * 1024
# What one process keeps in all: the text (the key) and its reading, counted in characters.
MAX_KEPT_CHARS = 16 * 1024 * 1024
# And about this much for the entry and the lean value.
_ENTRY_CHARS = 200


@dataclass(frozen=True, slots=True)
class StoredMetadata:
    """What one stored metadata text serves.

    `whole`: the value as strict JSON text, to be spliced into an answer undecoded (or why it
    cannot be read). `lean`: the value as a listed row holds it (`rows.without_snapshot`), for
    the accessors that find workflow ids, run ids and locations. Shared by every read of the
    same text: never modified.
    """

    whole: EncodedJSON | UnreadableJSON
    lean: Any


def read_metadata_text(text: str) -> StoredMetadata:
    """A stored metadata text read under the strict mapping, as the column would read it
    (text that is not JSON at all reads as itself). CPU work: run it in a worker process."""
    try:
        value = loads_stored(text)
    except ValueError:
        value = text
    return StoredMetadata(whole=restrict_value(value), lean=without_snapshot(value))


@dataclass(frozen=True, slots=True)
class _Kept:
    read: StoredMetadata
    chars: int


class StoredMetadataMemo:
    """The readings of recent stored metadata texts, by the text."""

    def __init__(self, *, max_chars: int = MAX_KEPT_CHARS) -> None:
        self._kept: LRUCache[str, _Kept] = LRUCache(
            maxsize=max(1, max_chars), getsizeof=lambda kept: kept.chars
        )

    def get(self, text: str) -> StoredMetadata | None:
        """The reading of this text, if it is kept."""
        if len(text) > MAX_TEXT_CHARS:
            return None
        kept = self._kept.get(text)
        return kept.read if kept is not None else None

    def keep(self, text: str, read: StoredMetadata) -> None:
        """Keep the reading of `text`, unless the text is too long to be worth it."""
        if len(text) > MAX_TEXT_CHARS:
            return
        whole = read.whole
        whole_chars = len(whole.text) if isinstance(whole, EncodedJSON) else len(whole.reason)
        chars = len(text) + whole_chars + _ENTRY_CHARS
        if chars <= self._kept.maxsize:
            self._kept[text] = _Kept(read, chars)

    def __len__(self) -> int:
        return len(self._kept)
