"""Input files that cannot be cut into byte ranges as they are stored, turned into JSON Lines once
per node (the copy's byte ranges are the shards), streamed: memory holds a chunk and the record
being read, never the file.

- A JSON array file (Alpaca's and ShareGPT's datasets: one JSON document holding a list of records):
  each item is written as its own text, one to a line, with its line breaks made spaces. JSON
  strings cannot hold a raw line break, so that changes nothing inside them, and nothing is parsed
  into Python and written back (numbers keep every digit).
- A CSV or TSV file with a header: each record becomes an object of the header's names and the
  record's fields, as text (a CSV holds text; a field may span lines inside quotes).
- Text in another encoding than UTF-8 (input.encoding), of any of these or JSON Lines: decoded, and
  copied as UTF-8.

What cannot be turned into a record is written as a line holding only COPY_ERROR and why, which the
reader reports as that row's error (copy_error_reason), where it is.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import shutil
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

from schemas.input_files import opens_json_array

# Changed whenever a copy of the same file would come out differently (2: a CSV's delimiter is found
# from its header), so that no node reads a copy an earlier herd made.
COPY_VERSION = 2
# The key of a line that stands for a record that could not be copied: no input has it.
COPY_ERROR = "\u0000herd: not copied"

_CHUNK = 1 << 20
# An item not complete after this much text is taken as malformed rather than read to the file's end.
_LARGEST_ITEM = 64 << 20
_SPACE = " \t\r\n"
_DECODER = json.JSONDecoder()
# What a CSV file's header may be delimited by, the comma first (_header_delimiter).
_DELIMITERS = (",", ";", "\t", "|")


def copy_as_json_lines(
    source: BinaryIO, sink: BinaryIO, kind: Literal["csv", "tsv"] | None = None, encoding: str = "utf-8"
) -> None:
    """CSV or TSV (kind) as records; otherwise JSON Lines as they are, and a JSON array as its items;
    all in UTF-8, from text in `encoding`."""
    if encoding != "utf-8":
        source = _AsUtf8(source, encoding)
    if kind is not None:
        _copy_csv(source, sink, kind)
        return
    head = source.read(_CHUNK)
    if opens_json_array(head):
        _copy_json_array(source, head, sink)
    else:
        sink.write(head)
        shutil.copyfileobj(source, sink, _CHUNK)


def copy_error_reason(values: dict[str, Any]) -> str | None:
    """Why the record a copied line stands for could not be copied, or None for a record."""
    return values.get(COPY_ERROR) if len(values) == 1 else None


def _error_line(reason: str) -> bytes:
    return json.dumps({COPY_ERROR: reason}).encode() + b"\n"


class _AsUtf8:
    """A binary stream of text in another encoding, read as UTF-8 (in pieces of any length)."""

    def __init__(self, source: BinaryIO, encoding: str) -> None:
        self._source = source
        self._decoder = codecs.getincrementaldecoder(encoding)("replace")
        self._done = False

    def read(self, size: int = -1) -> bytes:
        while not self._done:
            chunk = self._source.read(_CHUNK)
            self._done = not chunk
            text = self._decoder.decode(chunk, final=self._done)
            if text:
                return text.encode("utf-8")
        return b""


def _copy_json_array(source: BinaryIO, head: bytes, sink: BinaryIO) -> None:
    text = _Text(source, head.removeprefix(codecs.BOM_UTF8))
    text.next_char()
    text.skip_char()  # the array's "["
    first = True
    while True:
        char = text.next_char()
        if char == "]":
            return
        if char == "" and not first:
            return  # only the closing "]" is missing: nothing is lost
        if not first:
            if char != ",":
                sink.write(_error_line(f"the JSON array is malformed from here on: expected ',' or ']', got {char!r}"))
                return
            text.skip_char()
        item = text.item()
        if item is None:
            sink.write(_error_line(f"the JSON array is malformed from here on: {text.error}"))
            return
        sink.write(item.replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogateescape") + b"\n")
        first = False


class _Text:
    """The file's text from the read position on, decoded a chunk at a time (bytes that are not
    UTF-8 pass through as they are, for the reader to report per row)."""

    def __init__(self, source: BinaryIO, head: bytes) -> None:
        self._source = source
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._text = self._decoder.decode(head)
        self._at = 0
        self._eof = False
        self.error = ""

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
        """The text of the JSON value that starts at the next character, or None where none does
        (`error` says why)."""
        self.next_char()
        while True:
            try:
                _, end = _DECODER.raw_decode(self._text, self._at)
            except (ValueError, RecursionError) as error:
                end, self.error = None, f"{type(error).__name__}: {str(error)[:200]}"
            # A value that ends where the text read so far ends may go on (a number's digits).
            if end is not None and (end < len(self._text) or self._eof):
                item, self._at = self._text[self._at : end], end
                return item
            if len(self._text) - self._at > _LARGEST_ITEM:
                self.error = f"an item of more than {_LARGEST_ITEM >> 20} MiB that does not parse"
                return None
            if not self._fill():
                return None


def _copy_csv(source: BinaryIO, sink: BinaryIO, kind: Literal["csv", "tsv"]) -> None:
    lines = _text_lines(source)
    first = next(lines, "")
    delimiter = "\t" if kind == "tsv" else _header_delimiter(first)
    records = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    header = _header(next(records, None) or [])
    while True:
        try:
            fields = next(records)
        except StopIteration:
            return
        except csv.Error as error:  # a NUL byte, say: this record only
            sink.write(_error_line(f"the CSV record ending on line {records.line_num} cannot be read: {error}"))
            continue
        if not fields:
            continue  # a blank line
        where = f"the CSV record ending on line {records.line_num}"
        if len(fields) != len(header):
            sink.write(_error_line(f"{where} has {len(fields)} fields; the header names {len(header)}"))
            continue
        line = json.dumps(dict(zip(header, fields, strict=True)), ensure_ascii=False)
        try:
            sink.write(line.encode() + b"\n")
        except UnicodeEncodeError:
            sink.write(_error_line(f"{where} is not UTF-8 text: save the file as UTF-8"))


def _header_delimiter(header: str) -> str:
    """A CSV file's delimiter, as its header line shows it: a comma, unless the header (outside
    quotes) has none and more of one of ; (what Excel writes where a comma is the decimal mark, much
    of Europe), tab or | (the candidates DuckDB's sniffer tries)."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for character in header:
        if character == '"':
            quoted = not quoted
        elif not quoted and character in counts:
            counts[character] += 1
    if counts[","]:
        return ","
    most = max(_DELIMITERS, key=counts.__getitem__)
    return most if counts[most] else ","


def _header(names: list[str]) -> list[str]:
    """The header's names, made unique and non-empty as pandas makes them (a, a.1; Unnamed: 2)."""
    unique: list[str] = []
    for index, name in enumerate(names):
        name = name or f"Unnamed: {index}"
        candidate, repeat = name, 0
        while candidate in unique:
            repeat += 1
            candidate = f"{name}.{repeat}"
        unique.append(candidate)
    return unique


def _text_lines(source: BinaryIO) -> Iterator[str]:
    """The file's lines, each with its "\\n", as the csv module reads them: split at "\\n" only
    (a U+2028 inside a field is text), a BOM dropped, bytes that are not UTF-8 kept as they are."""
    csv.field_size_limit(1 << 30)  # a long document in a field is a prompt, not an attack
    decoder = codecs.getincrementaldecoder("utf-8-sig")("surrogateescape")
    pending = ""
    while True:
        chunk = source.read(_CHUNK)
        pending += decoder.decode(chunk, final=not chunk)
        lines = pending.split("\n")
        pending = lines.pop()
        for line in lines:
            yield line + "\n"
        if not chunk:
            if pending:
                yield pending
            return
