"""The service file: where state lives, the models served, limits, and the webhook."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import SpecError, format_validation_error
from schemas.job import DEMO_MODEL, JobSpec, parse_job

_WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int:
    """ "24h" -> 86400. A completion window is a number and a unit: s, m, h or d."""
    found = _WINDOW.match(window)
    if found is None:
        raise ValueError(f"completion_window: expected a number and a unit (s, m, h, d) such as 24h, got {window!r}")
    return int(found.group(1)) * _SECONDS[found.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServedModel(_Strict):
    name: str = Field(description="The model id clients send (`model` in each request line).")
    aliases: list[str] = Field(
        default_factory=list,
        description="Other names that mean this model, so request files written for a hosted model run as they "
        'are (e.g. gpt-4o-mini); "*" answers to any name no other model claims.',
    )
    job: dict[str, Any] = Field(
        description="A herd job file without input and output: model, prompt, sampling defaults, resources, retry."
    )
    bytes_per_shard: int = Field(
        default=256 * 1024,
        ge=1024,
        description="A batch's input file is cut into shards of about this many bytes: smaller shards commit "
        "(and count in request_counts) sooner, and a cancelled batch keeps more.",
    )

    def job_for(self, input_path: str, output_path: str) -> JobSpec:
        """The herd job that answers one batch of this model."""
        raw = {
            **self.job,
            "name": self.job.get("name", f"batch-{self.name}"),
            "input": {"path": input_path, "format": "openai-batch", "bytes_per_shard": self.bytes_per_shard},
            "output": {"path": output_path, "format": "openai"},
            # A batch completes with its failed requests in its error file, as OpenAI's do.
            "max_error_fraction": 1.0,
        }
        if isinstance(raw.get("model"), dict) and "name" not in raw["model"]:
            # Result lines name the model as clients know it, not where its weights live.
            raw["model"] = {**raw["model"], "name": self.name}
        return parse_job(raw, source=f"models[{self.name}].job")

    @cached_property
    def shared_job(self) -> JobSpec:
        """This model's job with a placeholder input and output: what every batch of it shares, parsed
        once, not for every request line or /v1/models call."""
        return self.job_for("unused.jsonl", "unused")

    def check_weights(self) -> None:
        """SpecError unless the model's weights and adapters are where its job says: a wrong path stops
        the service at its start, not each batch of the model after it was accepted."""
        from common.storage import Storage
        from workers.model_source import adapter_identity, model_identity

        job = self.shared_job
        storage = Storage(job.storage, job.retry)
        try:
            model_identity(job.model.path, storage)
            for adapter in job.model.adapters:
                adapter_identity(adapter, storage)
        except SpecError as error:
            raise SpecError(f"models[{self.name}].job: {error}") from None

    @property
    def adapter_names(self) -> list[str]:
        """The LoRA adapters of this model's job (model.adapters), which requests may name."""
        return self.shared_job.model.adapter_names()

    @cached_property
    def chat_unavailable(self) -> str | None:
        """Why this model cannot answer /v1/chat/completions or /v1/responses, or None. Messages become
        a prompt through the tokenizer's chat template unless the job says llama2-chat; a base model's
        tokenizer has none, and every such request would fail after its engine loaded. Tokenizer
        files that cannot be read now are no reason: the run says what is wrong."""
        job = self.shared_job
        if job.prompt.format == "llama2-chat":
            return None
        from common.storage import Storage
        from workers.model_source import has_chat_template

        try:
            found = has_chat_template(job.model.path, Storage(job.storage, job.retry))
        except Exception:  # noqa: BLE001 - a missing or unreachable file is the run's to report
            return None
        if found:
            return None
        return (
            f"model {self.name!r} ({job.model.path}) has no chat template, so it cannot turn messages "
            "(/v1/chat/completions, /v1/responses) into a prompt: send /v1/completions requests, or set "
            "its job's prompt.format: llama2-chat for a Llama 2 chat model"
        )

    @field_validator("job")
    @classmethod
    def _no_input_or_output(cls, job: dict[str, Any]) -> dict[str, Any]:
        given = sorted({"input", "output"} & set(job))
        if given:
            raise ValueError(f"a served model's job leaves out {' and '.join(given)}: each batch supplies them")
        return job


class Limits(_Strict):
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="The largest file accepted (bytes).")
    max_lines: int = Field(default=50_000, ge=1, description="The most requests in one batch input file.")
    max_concurrent_batches: int = Field(
        default=1, ge=1, description="Batches running at once (of different models; one model runs one at a time)."
    )
    turn_s: float = Field(
        default=600.0,
        ge=1,
        description="How long a batch keeps its model while another owner's batch waits: then it stops at "
        "a shard boundary (its running shards commit; a turn commits at least one) and resumes on its next "
        "turn, on the same warm engines.",
    )
    max_stored_bytes_per_owner: int = Field(
        default=100 * 1024**3,
        ge=1,
        description="The most bytes of files one owner (API key) keeps, uploads and batch outputs together "
        "(OpenAI's limit per organization is 100 GB): an upload past it is refused with 429 until files are "
        "deleted or expire. Checked at each upload; outputs are written whatever it says.",
    )
    max_open_batches_per_owner: int = Field(
        default=100,
        ge=1,
        description="The most batches one owner may have that have not ended (validating, in progress, "
        "finalizing, cancelling): one more is refused with 429 until one ends. A script that creates "
        "batches in a loop fills its own queue, not the service's.",
    )
    requests_per_s_per_owner: float = Field(
        default=20.0,
        gt=0,
        description="Requests a second one owner may make, in bursts of up to 5 seconds' worth; past it, 429 "
        "with Retry-After (the OpenAI SDK waits and retries). A client polling in a tight loop slows itself only.",
    )
    completion_windows: list[str] = Field(
        default_factory=lambda: ["24h"], description="The completion_window values a batch may ask for."
    )

    @field_validator("completion_windows")
    @classmethod
    def _windows_parse(cls, windows: list[str]) -> list[str]:
        for window in windows:
            window_seconds(window)
        return windows


class Webhook(_Strict):
    url: str = Field(description="Where each batch's terminal status is POSTed (batch.completed, ...).")
    secret: str = Field(
        description="The signing secret, whsec_<base64> as standard-webhooks (and OpenAI) write it; "
        "${VAR} takes it from the environment."
    )


class ServiceSpec(_Strict):
    root: str = Field(default="./herd-batches", description="Where files and batches live: a local folder or s3://.")
    host: str = Field(default="127.0.0.1", description="The address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="The port to listen on (0: any free port).")
    models: list[ServedModel] = Field(
        default_factory=lambda: [
            ServedModel(
                name="demo",
                aliases=["*"],
                job={
                    "model": {"path": DEMO_MODEL, "max_model_len": 2048},
                    "prompt": {"format": "model-template"},
                },
            )
        ],
        description="The models served; by default the demo model, answering to any model name.",
    )
    limits: Limits = Field(default_factory=Limits, description="What the service accepts.")
    webhook: Webhook | None = Field(default=None, description="Optional: terminal statuses POSTed, signed.")
    metrics_readers: list[str] = Field(
        default_factory=list,
        description="The owners (of the keys file) whose keys may read GET /metrics: totals over every owner, "
        "for operators. Others get 403; without keys, anyone on this machine may read it.",
    )

    def model_named(self, name: str) -> ServedModel | None:
        """The served model a request's `model` names: by its name, an alias, or one of its LoRA
        adapters (which the model's job then applies to that request)."""
        for model in self.models:
            if name == model.name or name in model.aliases or name in model.adapter_names:
                return model
        return next((model for model in self.models if "*" in model.aliases), None)

    def check_models(self) -> None:
        """Every served model's job is valid, and no name means two things, before the service answers
        anything."""
        seen: dict[str, str] = {}
        for model in self.models:  # adapter_names parses (and so validates) each model's job
            for name in [model.name, *model.aliases, *model.adapter_names]:
                if name in seen and name != "*":
                    raise SpecError(f"models: {name!r} names both {seen[name]} and {model.name}")
                seen[name] = model.name


def load_service(path: str | Path | None, **overrides: Any) -> ServiceSpec:
    """The service file (or the defaults), with the command line's overrides (None: not given)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SpecError(f"{path}: cannot read the service file: {error}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: the service file must be a mapping of fields")
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        spec = ServiceSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, str(path or "service"), ServiceSpec)) from None
    spec.check_models()
    return spec
