"""Checks a guided completion against what it was constrained to: a flag per row, never a dropped row.

Guided decoding can still stop early (max_new_tokens reached mid-JSON), so the check is needed.
"""

from __future__ import annotations

import json
import re

from schemas.job import StructuredSpec


def completion_is_valid(text: str, structured: StructuredSpec) -> bool:
    if structured.choices is not None:
        return text in structured.choices
    if structured.regex is not None:
        return re.fullmatch(structured.regex, text) is not None
    import jsonschema

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if structured.json_object:
        return isinstance(value, dict)
    try:
        jsonschema.validate(value, structured.json_schema)
    except jsonschema.ValidationError:
        return False
    return True
