"""Readable messages for invalid job specs: the field's dotted path, what was wrong, what is allowed."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """The job spec or its inputs are invalid; the message is meant for the user as it is."""


class StorageUnavailable(Exception):
    """Storage kept failing in ways that may pass (throttling, 5xx, dropped connections) after every
    retry; the job itself may be fine: run it again later."""


class OutputBusy(Exception):
    """Another run holds the output's lease, or took it over from this one; the message says who."""


def _allowed_fields(model: type[BaseModel], location: tuple) -> list[str]:
    """The field names allowed at the mapping that holds `location`'s last element."""
    current: type[BaseModel] | None = model
    for part in location[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(current.model_fields) if current is not None else []


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = [f"{source}: invalid job spec"]
    for problem in error.errors():
        location = tuple(problem["loc"])
        field = ".".join(str(part) for part in location) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, location)
            message = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif problem["type"] == "missing":
            message = "required field is missing"
        elif "input" in problem and problem["type"] not in ("model_type",):
            given = problem["input"]
            if not isinstance(given, dict):
                message += f" (got {given!r})"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)
