"""The job spec: what a user writes in job.yaml, validated before anything starts.

Every model forbids unknown fields so that a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import codecs
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.columns import HERD_OUTPUT_COLUMNS, ROW_ID_COLUMN
from schemas.errors import SpecError, format_validation_error
from schemas.input_files import FileFormat, format_from_name
from schemas.presets import LLAMA2_CONTEXT_TOKENS, LLAMA2_PRESETS, valid_tensor_parallel_sizes

DEMO_MODEL = "demo:smollm2-135m-instruct"
# The most alternatives a token's logprobs may list (OpenAI's limit, and vLLM's default max_logprobs).
MAX_TOP_LOGPROBS = 20


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InputSpec(StrictModel):
    path: str = Field(
        description="A file, a directory (every input file below it) or a glob; local or s3://.",
        examples=["s3://bucket/prompts/*/"],
    )
    format: Literal["auto", "parquet", "jsonl", "csv", "tsv", "arrow", "openai-batch", "llama2-hosted"] = Field(
        default="auto",
        description="auto: from each file's extension (.parquet/.pq; .jsonl/.ndjson/.json, where a .json "
        "file may hold one JSON array of records instead; .csv/.tsv with a header; all optionally "
        ".gz/.bz2/.zst; .arrow/.feather/.ipc: Arrow IPC, as Feather, Polars and Hugging Face datasets "
        "write it); openai-batch: OpenAI Batch request lines; llama2-hosted: hosted Llama 2 bodies.",
    )
    prompt_column: str | None = Field(
        default=None, description="The text to complete; give this, messages_column, or prompt.template."
    )
    messages_column: str | None = Field(
        default=None,
        description="A conversation per row (chat formats only): a list of {role: system|user|assistant, "
        "content}, or ShareGPT's {from: system|human|gpt, value}.",
    )
    id_column: str | None = Field(
        default=None, description='The row id; without it rows get "<file>:<row>" (see What a job writes).'
    )
    keep_columns: list[str | dict[str, str]] = Field(
        default_factory=list,
        description="Input columns (or Hive partition keys of the path) copied into every output row; "
        "{column: name} keeps one under another name, as an input column named like one of herd's "
        "(id, completion, model...) must be.",
        examples=[["topic", {"completion": "reference_completion"}]],
    )
    adapter_column: str | None = Field(
        default=None,
        description="The name of one of model.adapters per row (a LoRA fine-tune); an empty or null value "
        "means the base model. Request files name the adapter in each request's model instead.",
    )
    rows_per_shard: int = Field(
        default=1024,
        ge=1,
        description="Parquet: shards are row ranges of about this many rows. Smaller shards (small files) are "
        "packed to run together up to this many rows.",
    )
    bytes_per_shard: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="JSONL: shards are byte ranges of this size (lines are never split); Parquet: a "
        "shard also holds at most this many bytes of the columns read. Smaller shards are packed to run "
        "together up to this size.",
    )
    new_files: Literal["refuse", "process"] = Field(
        default="refuse",
        description="A re-run into the same output whose input path now matches more files (every earlier "
        "file unchanged): refuse it as a different job, or process only the new files' shards and keep "
        "everything committed (the daily-new-folder pipeline).",
    )
    require_rows: bool = Field(
        default=False,
        description="Fail (exit 2) when the input holds no rows; by default an empty input is a "
        "successful run with an empty output.",
    )
    encoding: str = Field(
        default="utf-8",
        description="The text encoding of JSON Lines, JSON and CSV files (Parquet's text is UTF-8): e.g. "
        "cp1252 for a CSV that Excel saved on Windows, utf-16 for its Unicode Text. Any other than utf-8 "
        "is read through a UTF-8 copy made once per node; bytes it does not define become U+FFFD.",
        examples=["cp1252"],
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        try:
            codec = codecs.lookup(name)
        except LookupError:
            raise ValueError(f"unknown encoding {name!r} (e.g. utf-8, cp1252, latin-1, utf-16)") from None
        # UTF-8 with or without a BOM is read as it is stored (a BOM is passed over).
        return "utf-8" if codec.name in ("utf-8", "utf-8-sig") else name

    @property
    def transcoded(self) -> bool:
        """Text files are read through a UTF-8 copy (input.encoding is not UTF-8)."""
        return self.encoding != "utf-8"

    def _kept_pairs(self) -> list[tuple[str, str]]:
        """(input column, output name) for each keep_columns entry, in order, repeats included."""
        pairs: list[tuple[str, str]] = []
        for entry in self.keep_columns:
            pairs.extend(entry.items() if isinstance(entry, dict) else [(entry, entry)])
        return pairs

    @model_validator(mode="after")
    def _kept_columns_have_names_of_their_own(self) -> InputSpec:
        for entry in self.keep_columns:
            if isinstance(entry, dict) and len(entry) != 1:
                raise ValueError(f"keep_columns: {entry} must map one input column to its output name")
        pairs = self._kept_pairs()
        names = [name for _, name in pairs]
        columns = [column for column, _ in pairs]
        repeated = sorted({column for column in columns if columns.count(column) > 1})
        if repeated:
            raise ValueError(f"keep_columns: {repeated[0]!r} is kept twice")
        for column, name in pairs:
            if name in HERD_OUTPUT_COLUMNS:
                instead = f"keep it under another name: {{{column}: input_{name}}}"
                if name == ROW_ID_COLUMN and self.id_column is None:
                    instead = f"set id_column: {column} to make it the row id, or {instead}"
                raise ValueError(
                    f"keep_columns: {name!r} is a column herd writes itself ({', '.join(HERD_OUTPUT_COLUMNS)}); "
                    f"{instead}"
                )
            if names.count(name) > 1:
                raise ValueError(f"keep_columns: two columns would be written as {name!r}")
        return self

    @property
    def kept_columns(self) -> dict[str, str]:
        """Each input column the output keeps, and its name there."""
        return dict(self._kept_pairs())

    @property
    def is_request_file(self) -> bool:
        """OpenAI batch and hosted Llama 2 files carry their prompts and parameters in each request."""
        return self.format in ("openai-batch", "llama2-hosted")

    def format_of(self, file_path: str) -> FileFormat:
        """How the file's bytes are read: request files are JSON lines too."""
        if self.format != "auto":
            return self.format if self.format in ("parquet", "csv", "tsv", "arrow") else "jsonl"
        found = format_from_name(file_path)
        if found is None:
            raise SpecError(
                f"input.format: cannot infer the format of {file_path!r} from its extension; "
                "set input.format to parquet, jsonl, csv or arrow"
            )
        return found

    def columns_read(self, template_columns: set[str]) -> list[str]:
        """The columns a row needs, in a stable order: everything else in a file is never read."""
        named = [
            self.prompt_column,
            self.messages_column,
            self.id_column,
            self.adapter_column,
            *self.kept_columns,
            *sorted(template_columns),
        ]
        return list(dict.fromkeys(column for column in named if column is not None))


_ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class AdapterSpec(StrictModel):
    name: str = Field(
        pattern=_ADAPTER_NAME,
        description="What rows (input.adapter_column) and requests (their model) call this adapter.",
        examples=["support-tone-v3"],
    )
    path: str = Field(
        description="A local directory or s3:// URL of a PEFT LoRA adapter (adapter_config.json and its weights).",
        examples=["s3://bucket/adapters/support-tone-v3/"],
    )


class ModelSpec(StrictModel):
    path: str = Field(
        description=f"A local directory or s3:// URL of a Hugging Face checkpoint, or {DEMO_MODEL}.",
        examples=["/models/Llama-2-7b-chat-hf"],
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description="The model's name in the output: the `model` column and the `model` of OpenAI result "
        "lines (vLLM's served_model_name). By default the path, which says where the weights live; a row "
        "answered by an adapter names the adapter.",
        examples=["llama-2-13b-chat"],
    )
    preset: Literal[tuple(LLAMA2_PRESETS)] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="A Llama 2 model: sets tensor_parallel_size (the reference MP value), max_model_len "
        "4096 and, for chat variants, the llama2-chat prompt format, unless the job sets them.",
    )
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs per replica (CPUs on the CPU build); a preset sets 1 / 2 / 8."
    )
    max_model_len: int = Field(
        default=LLAMA2_CONTEXT_TOKENS,
        ge=16,
        le=LLAMA2_CONTEXT_TOKENS,
        description="Context length in tokens (prompt + generation); at most 4096, Llama 2's context.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: float32 on CPU, the checkpoint's own dtype on GPU."
    )
    prefix_caching: bool = Field(
        default=True,
        description="Keep the KV cache of prompt prefixes that requests share (a system prompt, a "
        "template's fixed text) and skip recomputing them.",
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        description="LoRA adapters of this model that rows or requests may name: each replica loads them "
        "next to the base weights (vLLM's multi-LoRA), so many fine-tunes share one fleet.",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to vllm.LLM as they are, e.g. {gpu_memory_utilization: 0.9, max_num_seqs: 256}.",
    )

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
    def _adapter_names_are_unique(self) -> ModelSpec:
        names = [adapter.name for adapter in self.adapters]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"adapters: the name {repeated[0]!r} is given twice")
        return self

    def adapter_names(self) -> list[str]:
        return [adapter.name for adapter in self.adapters]

    @property
    def output_name(self) -> str:
        """What the output calls this model (its rows answered by the base weights)."""
        return self.name or self.path

    @model_validator(mode="after")
    def _name_is_not_an_adapters(self) -> ModelSpec:
        if self.name is not None and self.name in self.adapter_names():
            raise ValueError(f"name: {self.name!r} is also an adapter's name; rows would not say which answered")
        return self

    @model_validator(mode="after")
    def _engine_options_do_not_shadow_fields(self) -> ModelSpec:
        fields = {"model", "tensor_parallel_size", "max_model_len", "dtype", "enable_prefix_caching", "enable_lora"}
        shadowed = fields & set(self.engine_options)
        if shadowed:
            raise ValueError(f"engine_options must not set {sorted(shadowed)}; use the model fields instead")
        return self


@lru_cache(maxsize=16)
def _template_names(template: str) -> frozenset[str]:
    import jinja2
    import jinja2.meta

    try:
        tree = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"template does not parse: {error.message} (line {error.lineno})") from None
    return frozenset(jinja2.meta.find_undeclared_variables(tree))


class PromptSpec(StrictModel):
    format: Literal["raw", "llama2-chat", "model-template"] = Field(
        default="raw",
        description="raw: the text as it is (base models); llama2-chat: Meta's exact Llama 2 chat format, "
        "built as token ids; model-template: the tokenizer's own chat template.",
    )
    system_prompt: str | None = Field(default=None, description="A system message for every row (chat formats only).")
    template: str | None = Field(
        default=None,
        description="A Jinja2 template over the input columns that builds the prompt text (sandboxed).",
    )
    on_overflow: Literal["error", "truncate"] = Field(
        default="error",
        description="A prompt that leaves no room for max_new_tokens: an error row, or keep its end.",
    )
    regenerate_final_answer: bool = Field(
        default=False,
        description="With input.messages_column: a conversation that ends with an assistant turn (a chat "
        "dataset's answer) gets a new answer in its place; without it such a row is an error.",
    )

    @model_validator(mode="after")
    def _template_parses(self) -> PromptSpec:
        if self.template is not None:
            self.template_columns()
        return self

    def template_columns(self) -> set[str]:
        """The names the template reads from a row."""
        return set(_template_names(self.template)) if self.template is not None else set()

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self) -> PromptSpec:
        if self.system_prompt is not None and self.format == "raw":
            raise ValueError("system_prompt needs format llama2-chat or model-template")
        return self


class StructuredSpec(StrictModel):
    """Guided decoding: the completion is constrained to a JSON schema, any JSON object, a regex or a
    list of choices."""

    json_schema: dict[str, Any] | None = Field(default=None, description="A JSON schema (compact JSON is generated).")
    json_object: bool = Field(default=False, description="Any JSON object (OpenAI's response_format json_object).")
    regex: str | None = Field(default=None, description='A regular expression, e.g. "[A-Z]{3}".')
    choices: list[str] | None = Field(default=None, min_length=1, description="One of a list of strings.")

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredSpec:
        given = [name for name in ("json_schema", "regex", "choices") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(f"give exactly one of json_schema, json_object, regex or choices (got {given or 'none'})")
        return self


class SamplingSpec(StrictModel):
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="Randomness; 0 is greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass, in (0, 1].")
    top_k: int | None = Field(default=None, ge=1, description="Keep the k most likely tokens; null disables.")
    max_new_tokens: int = Field(
        default=256,
        ge=1,
        validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
        description="Also accepted as max_tokens; must leave room for a prompt in max_model_len.",
    )
    seed: int = Field(
        default=0, ge=0, description="Each row's seed derives from this and the row id: re-runs reproduce completions."
    )
    n: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Samples per prompt, each its own output row (sample_index 0..n-1); with greedy "
        "decoding, n copies of its one answer.",
    )
    stop: list[str] = Field(default_factory=list, description="Stop sequences, not included in the completion.")
    ignore_eos: bool = Field(default=False, description="Keep generating after EOS, up to max_new_tokens.")
    do_sample: bool = Field(default=True, description="false means greedy decoding, whatever the temperature.")
    return_full_text: bool = Field(default=False, description="Prepend the (decoded) prompt to each completion.")
    logprobs: bool = Field(default=False, description="Add token_logprobs: each generated token's log probability.")
    top_logprobs: int = Field(
        default=0,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs: also this many most likely tokens at each step (in OpenAI result lines).",
    )
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Penalizes tokens that appeared at all so far (OpenAI's meaning)."
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Penalizes tokens by how often they appeared so far."
    )
    logit_bias: dict[int, float] | None = Field(
        default=None, description="Token id -> bias from -100 to 100 added to its logit (OpenAI's logit_bias)."
    )
    structured: StructuredSpec | None = Field(
        default=None,
        description="Guided decoding; adds structured_valid, false when a completion does not parse or "
        "match (e.g. cut by max_new_tokens): such rows are kept, never dropped.",
    )

    @property
    def effective_temperature(self) -> float:
        return self.temperature if self.do_sample else 0.0

    @property
    def identical_samples(self) -> int:
        """Greedy decoding has one answer, and vLLM refuses n > 1 for it: the engine generates it once
        and the row gets it n times, as OpenAI answers n > 1 at temperature 0."""
        return self.n if self.effective_temperature == 0 else 1

    @model_validator(mode="after")
    def _engine_accepts(self) -> SamplingSpec:
        """What vLLM would refuse for every request, refused here before any engine starts."""
        if any(stop == "" for stop in self.stop):
            raise ValueError("stop: an empty stop sequence would end every completion at once")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.logit_bias is not None and any(not -100 <= bias <= 100 for bias in self.logit_bias.values()):
            raise ValueError("logit_bias: each bias must be from -100 to 100")
        return self


class OutputSpec(StrictModel):
    path: str = Field(
        description="A local directory or s3://bucket/prefix: empty, or holding this job's earlier output.",
        examples=["s3://bucket/out/my-job"],
    )
    format: Literal["parquet", "jsonl", "openai"] = Field(
        default="parquet",
        description="openai: OpenAI Batch result lines, one per request: a chat or text completion with n choices, "
        "or a Response for a /v1/responses request.",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        ge=5.0,
        description="A run renews its lease on the output every third of this; a lease not renewed for "
        "this long (or held by a dead process of the same host) is taken over by the next run.",
    )


class OptimizeSpec(StrictModel):
    dedupe_prompts: bool = Field(
        default=False,
        description="Generate once for rows with the same prompt and sampling settings (per replica), "
        "and give them all its completions. Seeds then come from the prompt, not the row: identical "
        "prompts get identical completions.",
    )


class ResourcesSpec(StrictModel):
    accelerator: Literal["auto", "gpu", "cpu"] = Field(
        default="auto",
        description="What a replica runs on. auto: gpu if a node up now or a node type the autoscaler can "
        "add has a GPU, else cpu. gpu: ask for GPUs and wait for them even where herd cannot read the "
        "autoscaler's node types.",
    )
    replicas: int | Literal["auto"] = Field(
        default="auto",
        description="auto: one per tensor_parallel_size GPUs the cluster holds or its autoscaler can add, up "
        "to max_replicas (1 on CPU); or a number.",
    )
    max_replicas: int | None = Field(
        default=None, ge=1, description="The most replicas `replicas: auto` starts (none: as many as fit)."
    )
    shards_in_flight: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Shards a replica holds at once: with 2, one is read and the previous one written "
        "while the engine generates the third.",
    )
    capacity_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="How long a replica may wait for its node (an autoscaler booting GPU nodes, spot "
        "capacity coming back). If no replica at all is placed by then, the job ends with exit 7; "
        "with some up, it goes on with those.",
    )
    replica_start_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="A replica not ready within this once its node is there (the weights loaded: 70B "
        "takes minutes) is replaced; after retry.max_replica_restarts the job fails saying so.",
    )
    stall_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A replica holding shards that makes no progress (no engine step, no shard read or "
        "written) for this long is replaced and its shards run elsewhere.",
    )

    @model_validator(mode="after")
    def _positive(self) -> ResourcesSpec:
        if self.replicas != "auto" and self.replicas < 1:
            raise ValueError("replicas must be 'auto' or at least 1")
        if self.replicas != "auto" and self.max_replicas is not None:
            raise ValueError("max_replicas applies to replicas: auto; with a number of replicas leave it out")
        return self


class StorageSpec(StrictModel):
    """Where S3 lives; credentials come only from the usual AWS_* variables, never from here."""

    endpoint_url: str | None = Field(
        default=None, description="An S3-compatible endpoint (MinIO, moto...); AWS_ENDPOINT_URL works too."
    )
    region: str | None = Field(
        default=None,
        description="The bucket's region. Credentials come only from AWS_* variables or the node's role.",
    )


class RetrySpec(StrictModel):
    """The one retry policy, for storage calls and for shards."""

    attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Tries per shard; and the fewest tries of a storage call that fails in a way that may pass.",
    )
    storage_deadline_s: float = Field(
        default=300.0,
        ge=0.0,
        description="A storage call failing in a way that may pass (throttling, 5xx, dropped connections) is "
        "retried with backoff until this long after its first failure: an outage of minutes is waited out. "
        "Past it the run exits 6; a storage failure never uses up a shard's attempts.",
    )
    backoff_base_s: float = Field(default=0.5, ge=0.0, description="The first delay; doubles each retry.")
    backoff_cap_s: float = Field(default=30.0, ge=0.0, description="The longest delay.")
    jitter: float = Field(default=0.5, ge=0.0, le=1.0, description="Randomness of each delay (0.5: +-50%).")
    max_replica_restarts: int = Field(
        default=4,
        ge=0,
        description="Crashed, stalled or never-ready replicas replaced per run before giving up. A replica "
        "whose node was lost (spot, preemption) is replaced without counting; one whose engine fails to "
        "start as the one before it did, while none has come up, is not replaced.",
    )


class JobSpec(StrictModel):
    name: str = Field(default="herd-job", description="Shown in logs and summary.json.")
    input: InputSpec = Field(description="The prompt files and how to read them.")
    model: ModelSpec = Field(description="The checkpoint and how the engine runs it.")
    prompt: PromptSpec = Field(default_factory=PromptSpec, description="How a row becomes a prompt.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="How completions are generated.")
    output: OutputSpec = Field(description="Where the results go, and in which format.")
    optimize: OptimizeSpec = Field(default_factory=OptimizeSpec, description="Options that trade results for speed.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Replicas and their shards.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Where S3 lives.")
    retry: RetrySpec = Field(default_factory=RetrySpec, description="The one retry policy.")
    max_error_fraction: float = Field(
        default=0.1, ge=0.0, le=1.0, description="The job exits 3 when more than this fraction of rows failed."
    )

    @property
    def slug(self) -> str:
        """The job's name as it can stand in a file name or an id: letters, digits, - and _."""
        return "".join(char if char.isalnum() or char in "-_" else "-" for char in self.name)

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
            if self.input.id_column is not None or self.input.keep_columns or self.input.adapter_column is not None:
                raise ValueError(
                    f"input.format {self.input.format} has no columns: remove input.id_column, "
                    "input.keep_columns and input.adapter_column (OpenAI requests are identified by their "
                    "custom_id and name their adapter in their model)"
                )
        elif len(sources) != 1:
            raise ValueError(
                "give exactly one prompt source: input.prompt_column, input.messages_column or prompt.template"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.output.format == "openai" and self.input.keep_columns:
            raise ValueError(
                "output.format openai writes OpenAI Batch result lines, which have no place for "
                "input.keep_columns: write parquet or jsonl to keep them"
            )
        if self.input.adapter_column is not None and not self.model.adapters:
            raise ValueError("input.adapter_column names adapters per row: list them in model.adapters")
        if self.input.messages_column is not None and self.prompt.format == "raw":
            raise ValueError("input.messages_column needs prompt.format llama2-chat or model-template")
        if self.prompt.regenerate_final_answer and self.input.messages_column is None:
            raise ValueError(
                "prompt.regenerate_final_answer replaces the last answer of a conversation: set input.messages_column"
            )
        return self


_SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "key", "apikey", "credential", "credentials"})


def _names_a_secret(key: object) -> bool:
    """hf_token, api_key, aws_secret_access_key: yes; tokenizer_revision: no (whole words only)."""
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z]+", str(key).lower()))


def without_secrets(value: Any) -> Any:
    """`value` with what any key that names a secret (hf_token, api_key...) holds replaced, for what
    herd writes down (job.json, logs): a secret belongs in the node's environment, not in records."""
    if isinstance(value, dict):
        return {key: "<redacted>" if _names_a_secret(key) else without_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    return value


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
