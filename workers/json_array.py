"""A JSON array file (Alpaca's and ShareGPT's datasets: one JSON document holding a list of records)
as JSON Lines, streamed: memory holds a chunk and the item being read, never the file.

Each item is written as its own text, one to a line, with its line breaks made spaces: JSON strings
cannot hold a raw line break, so that changes nothing inside them, and nothing is parsed into Python
and written back (numbers keep every digit). A malformed stretch ends the array: its text becomes one
line, which the reader reports as a malformed line, where it starts.
"""

from __future__ import annotations

import codecs
import json
import shutil
from typing import BinaryIO

from schemas.input_files import opens_json_array

_CHUNK = 1 << 20
# An item not complete after this much text is taken as malformed rather than read to the file's end.
_LARGEST_ITEM = 64 << 20
_SPACE = " \t\r\n"
_DECODER = json.JSONDecoder()


def copy_as_json_lines(source: BinaryIO, sink: BinaryIO) -> None:
    """JSON Lines are copied as they are; a JSON array becomes its items, one to a line."""
    head = source.read(_CHUNK)
    if not opens_json_array(head):
        sink.write(head)
        shutil.copyfileobj(source, sink, _CHUNK)
        return
    text = _Text(source, head.removeprefix(codecs.BOM_UTF8))
    text.next_char()
    text.skip_char()  # the array's "["
    first = True
    while True:
        char = text.next_char()
        if char == "]":
            return
        if not first:
            if char != ",":
                break
            text.skip_char()
        item = text.item()
        if item is None:
            break
        sink.write(item.replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogateescape") + b"\n")
        first = False
    # Malformed (or cut short inside an item) from here on: one line, for the reader to report where
    # it starts. A file that only lacks the closing "]" loses nothing and says nothing.
    rest = text.rest(_CHUNK)
    if rest:
        sink.write(rest.replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogateescape") + b"\n")


class _Text:
    """The file's text from the read position on, decoded a chunk at a time (bytes that are not
    UTF-8 pass through as they are, for the reader to report per row)."""

    def __init__(self, source: BinaryIO, head: bytes) -> None:
        self._source = source
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._text = self._decoder.decode(head)
        self._at = 0
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._source.read(_CHUNK)
        self._eof = not chunk
        self._text = self._text[self._at :] + self._decoder.decode(chunk, final=self._eof)
        self._at = 0
        return True

    def next_char(self) -> str:
        """The next character that is not white space, not taken; "" at the end."""
        while True:
            while self._at < len(self._text) and self._text[self._at] in _SPACE:
                self._at += 1
            if self._at < len(self._text) or not self._fill():
                return self._text[self._at : self._at + 1]

    def skip_char(self) -> None:
        """Takes the character next_char() returned."""
        self._at += 1

    def item(self) -> str | None:
        """The text of the JSON value that starts at the next character, or None where none does."""
        self.next_char()
        while True:
            try:
                _, end = _DECODER.raw_decode(self._text, self._at)
            except (ValueError, RecursionError):
                end = None
            # A value that ends where the text read so far ends may go on (a number's digits).
            if end is not None and (end < len(self._text) or self._eof):
                item, self._at = self._text[self._at : end], end
                return item
            if len(self._text) - self._at > _LARGEST_ITEM or not self._fill():
                return None

    def rest(self, limit: int) -> str:
        self.next_char()
        return self._text[self._at : self._at + limit]
