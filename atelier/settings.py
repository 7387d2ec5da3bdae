"""Nested, described settings read from ``ATELIER_*`` environment variables (``__`` separates groups)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "atelier-dev-secret-change-me-0000000000"  # noqa: S105 - refused outside dev, see validator


class ServerSettings(BaseModel):
    """HTTP server options for ``atelier serve``."""

    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port uvicorn listens on.")
    public_base_url: str | None = Field(
        None,
        description="Absolute base URL clients reach the API at (used in status_url/Location). "
        "Defaults to the URL of the incoming request.",
    )
    threadpool_size: int = Field(40, ge=1, description="Worker threads for sync endpoints (also sizes the DB pool).")
    read_threads: int | None = Field(
        None,
        ge=1,
        description="Threads of their own for the hot reads (`GET /api/v1/tasks/{id}`, the status surfaces). "
        "Empty: 4 on SQLite, whose reads are CPU work under the GIL that a few threads serve faster than many; "
        "the shared threadpool on PostgreSQL, whose reads wait on the network.",
    )
    max_sync_wait_seconds: int = Field(
        60,
        ge=0,
        description="Longest a create with `Prefer: wait=N` waits for its task to finish (larger N are capped to "
        "this); 0 disables sync mode.",
    )
    sse_max_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest a task event stream (`GET /api/v1/tasks/{id}/events`) stays open; it then ends with "
        "`event: timeout` and the client reconnects with `Last-Event-ID`.",
    )


class DatabaseSettings(BaseModel):
    """Where task rows live: SQLite file by default, PostgreSQL at scale."""

    url: str | None = Field(
        None,
        description="SQLAlchemy URL. Empty: a SQLite file `atelier.db` inside `data_dir`. "
        "PostgreSQL: `postgresql+psycopg://user@host/db`.",
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    sqlite_busy_timeout_ms: int = Field(10_000, ge=0, description="How long SQLite waits for the write lock.")


class BrokerSettings(BaseModel):
    """The Celery broker. Empty URL = in-process memory transport with worker threads inside `serve`."""

    url: str | None = Field(
        None, description="Celery broker URL (`redis://…`, `amqp://…`). Empty: embedded in-memory broker."
    )
    polling_interval: float = Field(
        0.005,
        gt=0,
        le=5,
        description="Seconds between polls of the in-memory broker (1 s default of kombu is too slow).",
    )
    embedded_worker: bool = Field(
        True, description="Run Celery worker threads inside `atelier serve` (embedded mode only)."
    )
    embedded_concurrency: int = Field(4, ge=1, le=64, description="Worker threads of the embedded worker.")
    queue_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.\-]*$",
        description="Prefix of every queue name (and of Redis keys): several deployments can share one broker.",
    )
    visibility_timeout_seconds: int = Field(
        6 * 3600,
        ge=60,
        description="Redis: seconds before an unacknowledged message is redelivered. Keep it longer than any run; "
        "an early redelivery is dropped by the claim anyway.",
    )
    publish_timeout_seconds: float = Field(
        3.0, gt=0, description="How long a submit waits for an unreachable broker before answering 503."
    )
    worker_max_tasks_per_child: int | None = Field(
        1000,
        ge=1,
        description="Prefork: recycle a worker process after this many tasks (leaky providers). A recycle costs "
        "a few hundred ms of that process's time, so keep it well above what one process runs per minute.",
    )
    worker_max_memory_per_child_mb: int | None = Field(
        3072, ge=64, description="Prefork: recycle a worker process once its resident memory exceeds this."
    )


class TaskSettings(BaseModel):
    """Retry, backoff and lease policy for task execution."""

    max_retries: int = Field(3, ge=0, le=20, description="Retries of the primary provider before failing/fallback.")
    retry_backoff_seconds: float = Field(2.0, ge=0, description="First retry delay; doubles each retry.")
    retry_backoff_max_seconds: float = Field(300.0, ge=0, description="Cap of the retry delay.")
    lease_seconds: float = Field(300.0, gt=0, description="How long a claim stays valid without a heartbeat.")
    cancel_poll_seconds: float = Field(0.25, ge=0, description="Minimum interval between cancellation checks.")
    max_resumes: int = Field(
        3, ge=0, le=20, description="Times a task whose worker died is resumed before it is failed (WORKER_LOST)."
    )
    heartbeat_seconds: float | None = Field(
        None, gt=0, description="Interval of the running task's lease heartbeat. Empty: a third of the lease."
    )
    idempotency_ttl_seconds: int = Field(
        86400,
        ge=60,
        description="How long an `Idempotency-Key` of a create (task or workflow) stays bound to its resource; "
        "afterwards the key may be used again and the reaper deletes it.",
    )
    queue_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Queue-wait deadline: a task not started this long after it was created is CANCELLED with "
        "`error_category` QUEUE_TIMEOUT. A task's `config.queue_timeout_seconds` overrides it. Empty: none.",
    )
    run_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Longest one attempt may run; then the task FAILS with `error_category` TIMEOUT (not retried). "
        "A task's `config.run_timeout_seconds` overrides it. Empty: none (the lease still catches dead workers).",
    )
    retention_seconds: float | None = Field(
        None,
        gt=0,
        description="Finished tasks expire this long after they finish (`expires_at`): the reaper purges their "
        "files and reads answer 410 Gone. Empty: keep forever.",
    )


class TenantLimits(BaseModel):
    """Limits of one tenant (empty fields fall back to the global ones)."""

    rate_per_minute: int | None = Field(None, ge=1, description="Tasks created per rolling minute.")
    max_active: int | None = Field(None, ge=1, description="Unfinished tasks at once.")


class LimitSettings(BaseModel):
    """Per-tenant admission limits and fairness between tenants."""

    rate_per_minute: int | None = Field(
        None,
        ge=1,
        description="Tasks a tenant may create per rolling minute (429 + Retry-After beyond). Empty: no limit.",
    )
    max_active: int | None = Field(
        None, ge=1, description="Unfinished (PENDING + EXECUTING) tasks a tenant may have at once. Empty: no cap."
    )
    tenants: dict[str, TenantLimits] = Field(
        default_factory=dict, description="Per-tenant overrides of `rate_per_minute` and `max_active`."
    )
    fair_share_pending: int = Field(
        100,
        ge=1,
        description="A tenant with this many PENDING tasks is bursting: its new tasks queue behind other tenants' "
        "tasks of the same priority (one broker priority band lower), so a burst cannot starve a single task.",
    )


class ReaperSettings(BaseModel):
    """The periodic sweep that republishes lost messages and resumes or fails tasks of dead workers."""

    enabled: bool = Field(True, description="Run the reaper loop in `atelier serve` (one is active at a time).")
    interval_seconds: float = Field(15.0, gt=0, description="Seconds between sweeps.")
    republish_after_seconds: float = Field(
        300.0, ge=0, description="A PENDING task whose last publish is older than this is published again."
    )


class WebhookSettings(BaseModel):
    """Signed webhook delivery (Standard Webhooks) of task and workflow events."""

    enabled: bool = Field(True, description="Run the delivery loop in `atelier serve` (relays events, sends them).")
    secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Signing secrets, `whsec_<base64>`. Every one signs each message (its `webhook-signature` "
        "lists one `v1,` signature per secret), so a receiver may verify with any: add the new secret, move "
        "receivers over, then remove the old one. Empty: one secret derived from `auth.secret_key` "
        "(`atelier webhook-secret` prints it).",
    )
    timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one delivery attempt.")
    retry_window_seconds: float = Field(
        86_400.0, gt=0, description="How long a failing delivery is retried (from the event) before it is given up."
    )
    backoff_base_seconds: float = Field(
        5.0, gt=0, description="Delay after the first failed attempt; doubles each time."
    )
    backoff_max_seconds: float = Field(3_600.0, gt=0, description="Cap of the delay between attempts.")
    jitter: float = Field(
        0.2, ge=0, le=1, description="Each delay is multiplied by a random factor in [1-jitter, 1+jitter]."
    )
    poll_interval_seconds: float = Field(
        0.1, gt=0, description="How often the loop looks for events and due retries (events of this process wake it)."
    )
    concurrency: int = Field(8, ge=1, le=256, description="Deliveries in flight at once per API process.")
    allow_private_networks: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDR ranges webhooks may reach although private/loopback (e.g. an internal receiver).",
    )


class RemoteServiceSettings(BaseModel):
    """Connection to one remote AI service (base URL, credential, timeouts, polling)."""

    base_url: str = Field(description="Base URL of the service's API (point it at a proxy or a test server).")
    api_key: SecretStr | None = Field(None, description="API key or token; never logged or returned by the API.")
    timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one HTTP call to the service.")
    poll_interval_seconds: float = Field(1.0, gt=0, description="Seconds between status polls of an async job.")
    max_wait_seconds: float = Field(1800.0, gt=0, description="Longest a task waits for one remote job.")
    call_attempts: int = Field(
        3, ge=1, le=10, description="Tries of one idempotent call on 429/5xx/timeouts before the task attempt fails."
    )
    max_retry_after_seconds: float = Field(
        60.0, ge=0, description="Longest in-call wait honoured from a Retry-After header; longer waits go to the task."
    )
    max_download_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest result file downloaded.")


class VertexSettings(RemoteServiceSettings):
    """Vertex AI (Gemini image models) with service-account authentication."""

    base_url: str = Field("https://{location}-aiplatform.googleapis.com", description="Vertex API base URL.")
    project: str | None = Field(None, description="Google Cloud project id (default: the service account's).")
    location: str = Field("global", description="Vertex location, e.g. `global` or `us-central1`.")
    credentials_file: Path | None = Field(None, description="Service-account JSON key file.")
    token_url: str | None = Field(None, description="OAuth token endpoint. Empty: the key file's `token_uri`.")
    model: str = Field("gemini-2.5-flash-image", description="Default image model.")


def _service(description: str, base_url: str, **extra: Any) -> Any:
    """A settings field whose default connects to ``base_url``."""
    return Field(
        default_factory=lambda: RemoteServiceSettings(base_url=base_url, **extra),
        description=f"{description} (default base URL {base_url}).",
    )


class ProviderSettings(BaseModel):
    """Provider plugins, local model files and the remote services' connections."""

    fal: RemoteServiceSettings = _service("fal.ai queue API", "https://queue.fal.run")
    fashn: RemoteServiceSettings = _service("FASHN API", "https://api.fashn.ai", poll_interval_seconds=2.0)
    freepik: RemoteServiceSettings = _service("Freepik API", "https://api.freepik.com", poll_interval_seconds=2.0)
    vertex: VertexSettings = Field(default_factory=VertexSettings, description="Vertex AI (Gemini image models).")
    openai: RemoteServiceSettings = _service("OpenAI API (AiCore)", "https://api.openai.com", timeout_seconds=120.0)
    anthropic: RemoteServiceSettings = _service(
        "Anthropic API (AiCore)", "https://api.anthropic.com", timeout_seconds=120.0
    )
    gemini: RemoteServiceSettings = _service(
        "Gemini API (AiCore)", "https://generativelanguage.googleapis.com", timeout_seconds=120.0
    )
    ollama: RemoteServiceSettings = _service("Ollama server (AiCore)", "http://127.0.0.1:11434", timeout_seconds=300.0)
    sartiq_fal_app_id: str = Field(
        "fal-ai/flux/dev/image-to-image",
        description="fal image-to-image app the Sartiq refiner/face/garment fixers send their tiles to.",
    )
    nano_banana_model: str = Field(
        "gemini-2.5-flash-image", description="Gemini image model used by the Nano Banana upscaler (via Vertex)."
    )

    models_dir: Path | None = Field(
        None,
        description="Folder of local model weights (rembg looks in `<models_dir>/rembg`). Empty: "
        "`<virtualenv>/share/atelier-models`, where `make` installs the shipped u2netp weights.",
    )

    plugins: list[str] = Field(
        default_factory=list,
        description="Extra providers to register: `module:function` entries, each called with the registry.",
    )


class StorageSettings(BaseModel):
    """Where inputs and outputs are kept."""

    backend: Literal["local", "s3"] = Field("local", description="Storage backend: a local folder or S3-compatible.")
    local_root: Path | None = Field(None, description="Folder of the local backend. Empty: `data_dir/storage`.")
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (e.g. http://127.0.0.1:9000 for SeaweedFS/MinIO, R2's account URL). Empty: AWS."
    )
    s3_bucket: str = Field("atelier", min_length=3, max_length=63, description="Bucket holding every object.")
    s3_region: str = Field("us-east-1", description="Region used for SigV4 signing.")
    s3_access_key_id: str | None = Field(None, description="Access key; empty: boto3's default credential chain.")
    s3_secret_access_key: str | None = Field(None, description="Secret key; empty: boto3's default credential chain.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="Bucket addressing; `path` works with every S3-compatible server."
    )
    s3_public_base_url: str | None = Field(
        None,
        description="Public/CDN base URL of the bucket (R2 custom domain, CloudFront…). When set, image GETs "
        "redirect to `<base>/<key>`; otherwise to a presigned URL.",
    )
    s3_presign_seconds: int = Field(900, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned GET URLs.")
    s3_create_bucket: bool = Field(True, description="Create the bucket at start-up when it does not exist.")
    s3_multipart_threshold_bytes: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Uploads above this size are sent as multipart, streamed."
    )
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest accepted upload.")
    allowed_extensions: list[str] = Field(
        default_factory=lambda: ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"],
        description="File extensions accepted by the image upload endpoint.",
    )


class InputSettings(BaseModel):
    """Bounds and network policy for task input images."""

    max_bytes: int = Field(25 * 1024 * 1024, ge=1, description="Largest input image, encoded.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest input image, width×height.")
    fetch_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one remote input fetch.")
    allow_private_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs or host names that may be fetched although they are private/loopback (SSRF allow-list).",
    )


class AuthSettings(BaseModel):
    """JWT bearer authentication."""

    secret_key: str = Field(DEV_SECRET, min_length=32, description="HMAC key for HS256 tokens. Set it in production.")
    algorithm: Literal["HS256", "HS384", "HS512"] = Field("HS256", description="JWT signing algorithm.")
    issuer: str = Field("atelier", description="`iss` claim minted and required.")
    default_ttl_seconds: int = Field(30 * 24 * 3600, ge=60, description="Lifetime of tokens minted by `atelier token`.")


class MetricsSettings(BaseModel):
    """Prometheus metrics at ``GET /metrics``."""

    enabled: bool = Field(True, description="Serve `GET /metrics` (Prometheus text format).")
    public: bool = Field(
        False,
        description="Serve `/metrics` without a token. Otherwise it needs an admin JWT (it covers every tenant) "
        "(Prometheus sends one with `authorization: {credentials: …}` or `bearer_token_file`).",
    )


class LogSettings(BaseModel):
    """Log output of `atelier serve` and `atelier worker`."""

    format: Literal["json", "text"] = Field(
        "text",
        description="`text`: one human line per record. `json`: one JSON object per line with `ts`, `level`, "
        "`logger`, `message`, and `task_id`/`workflow_id`/`tenant`/`exc` when the record has them.",
    )
    level: str = Field(
        "INFO",
        pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description="Level of the root logger: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )


class LoraSettings(BaseModel):
    """LoRA model files: where uploads are kept, where deleted files go, how large one may be."""

    root: Path | None = Field(
        None, description="Folder of LoRA files (`<root>/<entity_type>/<file>`). Empty: `data_dir/models/loras`."
    )
    bin_root: Path | None = Field(
        None,
        description="Folder deleted LoRA files are moved to (same layout, for recovery). "
        "Empty: `data_dir/bin/models/loras`.",
    )
    max_bytes: int = Field(500 * 1024 * 1024, ge=1, description="Largest accepted LoRA file (bigger uploads get 413).")


class DiffusionSettings(BaseModel):
    """The LOCAL GENERATION/EDITING provider (diffusers): base pipeline, device, defaults, pipeline cache."""

    base_model_path: str | None = Field(
        None,
        description="Base diffusers pipeline: a local folder, or a Hugging Face hub id already in the local cache "
        "(never downloaded). Empty: LOCAL GENERATION/EDITING tasks fail as PROVIDER_NOT_AVAILABLE.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="torch device; `auto`: CUDA when available, else CPU."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; `auto`: bfloat16 (or float16) on CUDA, float32 elsewhere."
    )
    default_steps: int = Field(
        28, ge=1, le=200, description="Denoising steps when a task's `config.num_inference_steps` is not set."
    )
    max_steps: int = Field(200, ge=1, description="Largest `config.num_inference_steps` a task may ask for.")
    max_pixels: int = Field(4_194_304, ge=64, description="Largest width×height a task may ask for (2048² default).")
    cache_size: int = Field(
        1, ge=1, le=16, description="Pipelines kept loaded per worker process (least recently used one is dropped)."
    )


class TrainingSettings(BaseModel):
    """LoRA training jobs: where a worker keeps its scratch files, defaults of the ai-toolkit-style knobs."""

    work_dir: Path | None = Field(
        None,
        description="Scratch folder of training workers (dataset, checkpoints before upload). "
        "Empty: `data_dir/training`. Storage, not this folder, is what survives a worker.",
    )
    resolution: int = Field(512, ge=8, le=4096, description="Training images are resized and cropped to this square.")
    save_every: int = Field(2000, ge=0, description="Default checkpoint interval in steps (0: only the final LoRA).")
    max_step_saves_to_keep: int = Field(4, ge=1, description="Default number of step checkpoints kept.")
    sample_every: int = Field(250, ge=0, description="Default sampling interval in steps (needs sample prompts).")
    sample_steps: int = Field(25, ge=1, description="Default inference steps per sample image.")
    max_steps: int = Field(100_000, ge=1, description="Largest `steps` a training request may ask for.")
    max_source_images: int = Field(200, ge=1, description="Largest number of source images per training.")
    progress_interval_seconds: float = Field(
        1.0, ge=0, description="Least time between progress writes to the database during the loop."
    )
    max_log_chars: int = Field(20_000, ge=1_000, description="The `logs` field keeps the last this many characters.")
    captioning_provider: Literal["openai", "anthropic", "gemini", "ollama"] | None = Field(
        None, description="AiCore vendor that writes captions for the `vlm` strategy (its credentials: `providers.*`)."
    )
    captioning_model: str | None = Field(None, description="Vision model of the captioning vendor, e.g. `gpt-4o-mini`.")


class EvaluationModels(BaseModel):
    """Vision model of each LLM evaluation backend (a text+image model, not an image generator)."""

    openai: str = Field("gpt-4o-mini", description="OpenAI chat model with image input.")
    anthropic: str = Field("claude-sonnet-4-5", description="Anthropic model with image input.")
    gemini: str = Field("gemini-2.5-flash", description="Gemini model on the Google AI API.")
    ollama: str = Field("llava", description="Ollama vision model (pulled on the Ollama server).")
    vertex: str = Field("gemini-2.5-flash", description="Gemini model on Vertex AI.")


class EvaluationSettings(BaseModel):
    """Shot evaluation (`POST /api/v1/evaluation/`): backends, vision-LLM models, retries and circuit breakers."""

    default_provider: Literal["local", "openai", "anthropic", "gemini", "ollama", "vertex"] = Field(
        "local",
        description="Backend used when a request names no `provider`: `local` (offline OpenCV detectors) or a "
        "vision LLM (an AiCore vendor or `vertex`, connected with `providers.<name>`).",
    )
    models: EvaluationModels = Field(
        default_factory=EvaluationModels,
        description="Vision model per LLM backend (`ATELIER_EVALUATION__MODELS__OPENAI`…).",
    )
    temperature: float = Field(0.0, ge=0, le=1, description="Sampling temperature of the vision LLM.")
    max_tokens: int = Field(1024, ge=64, description="Answer budget of one vision-LLM call.")
    llm_attempts: int = Field(
        2, ge=1, le=5, description="Tries of one evaluation when the LLM answers JSON that does not fit the schema."
    )
    max_side: int = Field(
        1024, ge=128, le=4096, description="Images are downscaled to this long side before analysis or upload."
    )
    custom_instructions_max_chars: int = Field(
        2000, ge=0, description="Longest `custom_instructions` accepted (longer requests get 422)."
    )
    failure_threshold: int = Field(
        5, ge=1, description="Consecutive backend failures that open its circuit breaker (fast 503s while open)."
    )
    recovery_seconds: float = Field(
        30.0, gt=0, description="Seconds an open breaker waits before letting one probe call through (half-open)."
    )
    health_window: int = Field(
        100, ge=1, description="Latest evaluations per backend that the health success rate and latency cover."
    )
    healthy_success_rate: float = Field(
        0.8, ge=0, le=1, description="`/evaluation/health` reports healthy at or above this windowed success rate."
    )


class Settings(BaseSettings):
    """All settings of Atelier Compute."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["dev", "test", "production"] = Field(
        "dev", description="`production` refuses the built-in development signing key."
    )
    data_dir: Path = Field(Path("atelier-data"), description="Folder for the SQLite file and local storage.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    inputs: InputSettings = Field(default_factory=InputSettings)
    reaper: ReaperSettings = Field(default_factory=ReaperSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    diffusion: DiffusionSettings = Field(default_factory=DiffusionSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @model_validator(mode="after")
    def _refuse_dev_secret(self) -> Settings:
        if self.environment == "production" and self.auth.secret_key == DEV_SECRET:
            raise ValueError("ATELIER_AUTH__SECRET_KEY must be set outside dev: the built-in key is public")
        return self

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL."""
        return self.database.url or f"sqlite:///{(self.data_dir / 'atelier.db').resolve()}"

    @property
    def storage_root(self) -> Path:
        """The effective local storage folder."""
        return (self.storage.local_root or self.data_dir / "storage").resolve()

    @property
    def models_root(self) -> Path:
        """The effective folder of local model weights."""
        return (self.providers.models_dir or Path(sys.prefix) / "share" / "atelier-models").resolve()

    @property
    def embedded(self) -> bool:
        """True when no external broker is configured (in-process Celery)."""
        return not self.broker.url

    @property
    def training_root(self) -> Path:
        """The effective scratch folder of training workers."""
        return (self.training.work_dir or self.data_dir / "training").resolve()

    @property
    def lora_root(self) -> Path:
        """The effective folder of LoRA model files."""
        return (self.lora.root or self.data_dir / "models" / "loras").resolve()

    @property
    def lora_bin_root(self) -> Path:
        """The effective folder deleted LoRA files are moved to."""
        return (self.lora.bin_root or self.data_dir / "bin" / "models" / "loras").resolve()
