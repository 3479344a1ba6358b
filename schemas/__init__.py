"""Job spec, output rows, manifest and summary: plain pydantic, importable without ray, vllm or torch."""

from schemas.errors import SpecError
from schemas.job import JobSpec, load_job, parse_job

__all__ = ["JobSpec", "SpecError", "load_job", "parse_job"]
