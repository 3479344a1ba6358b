"""The job spec: what a user writes in job.yaml, validated before anything starts.

Every model forbids unknown fields so that a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import SpecError, format_validation_error
from schemas.presets import LLAMA2_CONTEXT_TOKENS, LLAMA2_PRESETS, valid_tensor_parallel_sizes

DEMO_MODEL = "demo:smollm2-135m-instruct"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InputSpec(StrictModel):
    path: str = Field(description="A file, a directory or a glob; local or s3://.")
    format: Literal["auto", "parquet", "jsonl", "openai-batch", "llama2-hosted"] = "auto"
    prompt_column: str | None = None
    messages_column: str | None = None
    id_column: str | None = None
    keep_columns: list[str] = Field(default_factory=list)
    rows_per_shard: int = Field(default=1024, ge=1)
    bytes_per_shard: int = Field(default=4 * 1024 * 1024, ge=1024)

    @property
    def is_request_file(self) -> bool:
        """OpenAI batch and hosted Llama 2 files carry their prompts and parameters in each request."""
        return self.format in ("openai-batch", "llama2-hosted")

    def format_of(self, file_path: str) -> Literal["parquet", "jsonl"]:
        """How the file's bytes are read: request files are JSON lines too."""
        if self.format != "auto":
            return "parquet" if self.format == "parquet" else "jsonl"
        lowered = file_path.lower()
        if lowered.endswith((".parquet", ".pq")):
            return "parquet"
        if lowered.endswith((".jsonl", ".ndjson", ".json")):
            return "jsonl"
        raise SpecError(
            f"input.format: cannot infer the format of {file_path!r} from its extension; "
            "set input.format to parquet or jsonl"
        )


class ModelSpec(StrictModel):
    path: str = Field(description=f"A local directory or s3:// URL of a Hugging Face checkpoint, or {DEMO_MODEL}.")
    preset: Literal[tuple(LLAMA2_PRESETS)] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="A Llama 2 model: sets tensor_parallel_size (the reference MP value), max_model_len "
        "4096 and, for chat variants, the llama2-chat prompt format, unless the job sets them.",
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int = Field(default=LLAMA2_CONTEXT_TOKENS, ge=16, le=LLAMA2_CONTEXT_TOKENS)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    prefix_caching: bool = Field(
        default=True,
        description="Keep the KV cache of prompt prefixes that requests share (a system prompt, a "
        "template's fixed text) and skip recomputing them.",
    )
    engine_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tensor_parallel_fits_the_heads(self) -> ModelSpec:
        if self.preset is not None:
            allowed = valid_tensor_parallel_sizes(LLAMA2_PRESETS[self.preset])
            if self.tensor_parallel_size not in allowed:
                raise ValueError(
                    f"tensor_parallel_size {self.tensor_parallel_size} does not divide {self.preset}'s attention "
                    f"heads; allowed: {', '.join(map(str, allowed))}"
                )
        return self

    @model_validator(mode="after")
    def _engine_options_do_not_shadow_fields(self) -> ModelSpec:
        fields = {"model", "tensor_parallel_size", "max_model_len", "dtype", "enable_prefix_caching"}
        shadowed = fields & set(self.engine_options)
        if shadowed:
            raise ValueError(f"engine_options must not set {sorted(shadowed)}; use the model fields instead")
        return self


class PromptSpec(StrictModel):
    format: Literal["raw", "llama2-chat", "model-template"] = "raw"
    system_prompt: str | None = None
    template: str | None = Field(
        default=None,
        description="A Jinja2 template over the input columns that builds the prompt text (sandboxed).",
    )
    on_overflow: Literal["error", "truncate"] = Field(
        default="error",
        description="A prompt that leaves no room for max_new_tokens: an error row, or keep its end.",
    )

    @model_validator(mode="after")
    def _template_parses(self) -> PromptSpec:
        if self.template is not None:
            import jinja2

            try:
                jinja2.Environment().parse(self.template)
            except jinja2.TemplateSyntaxError as error:
                raise ValueError(f"template does not parse: {error.message} (line {error.lineno})") from None
        return self

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self) -> PromptSpec:
        if self.system_prompt is not None and self.format == "raw":
            raise ValueError("system_prompt needs format llama2-chat or model-template")
        return self


class StructuredSpec(StrictModel):
    """Guided decoding: the completion is constrained to a JSON schema, a regex or a list of choices."""

    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    choices: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredSpec:
        given = [name for name in ("json_schema", "regex", "choices") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of json_schema, regex or choices (got {given or 'none'})")
        return self


class SamplingSpec(StrictModel):
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=256, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    seed: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=64)
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False
    do_sample: bool = Field(default=True, description="false means greedy decoding")
    return_full_text: bool = False
    logprobs: bool = Field(default=False, description="add token_logprobs: each generated token's log probability")
    structured: StructuredSpec | None = None

    @property
    def effective_temperature(self) -> float:
        return self.temperature if self.do_sample else 0.0


class OutputSpec(StrictModel):
    path: str
    format: Literal["parquet", "jsonl", "openai"] = Field(
        default="parquet", description="openai: OpenAI Batch result lines, one per request, with n choices"
    )


class OptimizeSpec(StrictModel):
    dedupe_prompts: bool = Field(
        default=False,
        description="Generate once for rows with the same prompt and sampling settings (per replica), "
        "and give them all its completions. Seeds then come from the prompt, not the row: identical "
        "prompts get identical completions.",
    )


class ResourcesSpec(StrictModel):
    replicas: int | Literal["auto"] = "auto"
    shards_in_flight: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Shards a replica holds at once: with 2, one is read and the previous one written "
        "while the engine generates the third.",
    )

    @model_validator(mode="after")
    def _positive(self) -> ResourcesSpec:
        if self.replicas != "auto" and self.replicas < 1:
            raise ValueError("replicas must be 'auto' or at least 1")
        return self


class StorageSpec(StrictModel):
    """Where S3 lives; credentials come only from the usual AWS_* variables, never from here."""

    endpoint_url: str | None = None
    region: str | None = None


class RetrySpec(StrictModel):
    attempts: int = Field(default=3, ge=1, le=100)
    backoff_base_s: float = Field(default=0.5, ge=0.0)
    backoff_cap_s: float = Field(default=30.0, ge=0.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)
    max_replica_restarts: int = Field(default=4, ge=0)


class JobSpec(StrictModel):
    name: str = "herd-job"
    input: InputSpec
    model: ModelSpec
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    output: OutputSpec
    optimize: OptimizeSpec = Field(default_factory=OptimizeSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    max_error_fraction: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Fail the job when more rows than this fail."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, raw: Any) -> Any:
        """A preset fills in what the job leaves out; what the job sets is kept, then checked."""
        model = raw.get("model") if isinstance(raw, dict) else None
        preset = LLAMA2_PRESETS.get(model.get("preset")) if isinstance(model, dict) else None
        if preset is None:
            return raw
        raw = {**raw, "model": {**model}}
        raw["model"].setdefault("tensor_parallel_size", preset.tensor_parallel_size)
        raw["model"].setdefault("max_model_len", LLAMA2_CONTEXT_TOKENS)
        prompt = raw.get("prompt")
        if preset.chat and (prompt is None or (isinstance(prompt, dict) and "format" not in prompt)):
            raw["prompt"] = {**(prompt or {}), "format": "llama2-chat"}
        return raw

    @model_validator(mode="after")
    def _generation_fits_context(self) -> JobSpec:
        if self.sampling.max_new_tokens >= self.model.max_model_len:
            raise ValueError(
                f"sampling.max_new_tokens ({self.sampling.max_new_tokens}) leaves no room for a "
                f"prompt in model.max_model_len ({self.model.max_model_len})"
            )
        sources = [
            name
            for name, given in (
                ("input.prompt_column", self.input.prompt_column is not None),
                ("input.messages_column", self.input.messages_column is not None),
                ("prompt.template", self.prompt.template is not None),
            )
            if given
        ]
        if self.input.is_request_file:
            if sources:
                raise ValueError(f"input.format {self.input.format} carries its own prompts; remove {sources}")
        elif len(sources) != 1:
            raise ValueError(
                "give exactly one prompt source: input.prompt_column, input.messages_column or prompt.template"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.input.messages_column is not None and self.prompt.format == "raw":
            raise ValueError("input.messages_column needs prompt.format llama2-chat or model-template")
        return self


def load_job(path: str | Path, output_override: str | None = None) -> JobSpec:
    """Reads a YAML or JSON job file and validates it; raises SpecError naming the bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"{path}: cannot read the job file ({error.strerror})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise SpecError(f"{path}: not valid YAML/JSON: {error}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the job file must be a mapping of fields, got {type(raw).__name__}")
    if output_override is not None:
        raw.setdefault("output", {})
        if isinstance(raw["output"], dict):
            raw["output"]["path"] = output_override
    return parse_job(raw, source=str(path))


def parse_job(raw: dict[str, Any], source: str = "job") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, source, JobSpec)) from None
