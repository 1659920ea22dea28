"""Service settings, read from ``RECSYS_*`` environment variables (and nothing at import time)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.connection import parse_url

from index.item_index import WARM_MAX_FETCH
from index.retrieval import MAX_K, BackendName, DevicePreference

TEN_YEARS_S = 10 * 365 * 24 * 3600


class ServiceSettings(BaseSettings):
    """Every knob of the service; ``RECSYS_BUNDLE_ROOT=/bundles`` sets ``bundle_root`` and so on."""

    # No NaN or infinite number anywhere, and every duration bounded: a socket's timeout past about 1e9 s, or a
    # Redis expiry past 2^63 ms, is an overflow at the first request, not a long wait.
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore", allow_inf_nan=False)

    bundle_root: Path = Field(Path("var/bundles"), description="directory holding bundles and CURRENT")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="where user codes are cached")
    redis_timeout_s: float = Field(0.1, gt=0, le=60, description="per-call Redis timeout; past it the bundle answers")
    redis_max_connections: int = Field(64, ge=1, description="upper bound of the Redis connection pool")
    user_code_ttl_s: int = Field(7 * 24 * 3600, ge=1, le=TEN_YEARS_S, description="lifetime of a cached user code")
    host: str = Field("127.0.0.1", min_length=1, description="interface uvicorn binds (0.0.0.0: every one)")
    port: int = Field(8000, ge=1, le=65535, description="port uvicorn binds")
    workers: int = Field(
        1, ge=1, description="uvicorn worker processes; each loads its own model and (without search_process) index"
    )
    search_process: bool = Field(
        False,
        description="one process owns the item index and answers every worker's searches: one copy of the index "
        "and one GPU context per host, searches from all workers merged (for a GPU index)",
    )
    search_socket: Path | None = Field(
        None, description="set by recsys-serve for its workers: the search process's Unix socket"
    )
    search_in_flight: int = Field(
        4,
        ge=1,
        description="with search_process: micro-batches one worker may have in the search process at once (requests "
        "that arrive while one is away go there without waiting for it)",
    )
    search_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="with search_process: how long a worker waits for the search process to answer one search; "
        "past it the requests get 503 and the worker reconnects",
    )
    device: DevicePreference = Field("auto", description="where the item index runs")
    retrieval_backend: BackendName = Field(
        "auto", description="Hamming search backend; 'auto' = the fastest exact one available on the device"
    )
    search_threads: int = Field(
        1, ge=0, description="CPU threads per index search (FAISS OpenMP) in each worker; 0: every core"
    )
    default_k: int = Field(20, ge=1, description="k when a request gives none")
    max_k: int = Field(1000, ge=1, le=MAX_K, description="largest k a request may ask for")
    max_batch_users: int = Field(256, ge=1, description="most users one POST /recommend may ask for")
    max_request_items: int = Field(
        20_000, ge=1, description="most items one POST /recommend may ask for in all (users × k): bounds its cost"
    )
    max_history_items: int = Field(1000, ge=1, description="most items one user's history may list in a request")
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body; a larger one is refused with 413 before it is read"
    )
    max_header_bytes: int = Field(
        32 << 10,
        ge=1024,
        description="largest request line and headers; a larger head is refused with 431 as it arrives",
    )
    max_headers: int = Field(100, ge=1, description="most header fields a request may send; more is a 431")
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="time a client has to send a whole request (head and body), from its first byte or from "
        "connecting; past it the answer is 408 and the connection closes",
    )
    batch_max_size: int = Field(64, ge=1, description="most queries merged into one index search")
    warm_max_fetch: int = Field(
        0,
        ge=0,
        le=MAX_K,
        description="on a GPU, the largest fetch (k plus the seen items a query skips) warmed up at start, for "
        "batches of powers of two up to batch_max_size and of batch_max_size itself; 0: default_k plus the bundle's "
        f"most-seen user's items, at least {WARM_MAX_FETCH}. A batch needing a larger fetch compiles and captures it "
        "within its first request in each worker, and the whole batch waits for it. The Triton backend keeps 128 "
        "captured shapes: past 128 batch × fetch shapes, warm-up evicts its own first ones",
    )
    batch_max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="extra wait for more queries; 0: queries that arrive during a search share the next",
    )
    hot_path: bool = Field(
        True,
        description="answer GET /recommend whose parameters are plainly valid without FastAPI's per-request "
        "machinery (same body and headers); false: every request goes through the FastAPI route",
    )
    user_code_lru_size: int = Field(100_000, ge=0, description="user codes kept in process before Redis (0: none)")
    admin_api_key: SecretStr | None = Field(
        None, description="key for POST /admin/reload (header X-API-Key); unset: the endpoint is disabled"
    )
    events_api_key: SecretStr | None = Field(
        None,
        description="key for POST /events (header X-API-Key); unset: the endpoint is disabled (403) and /recommend "
        "does not look for recent events",
    )
    events_max_batch: int = Field(1000, ge=1, description="most events one POST /events may carry")
    events_recent_items: int = Field(
        50, ge=1, description="recent items kept per user in Redis (the most recent, one entry per item)"
    )
    events_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        le=TEN_YEARS_S,
        description="how long a user's recent history (and the codes derived from it) lives after their last event; "
        "longer than the time between training runs, which take the events in",
    )
    events_remembered_ids: int = Field(
        1000, ge=1, description="event ids remembered per user (within events_ttl_s): a retry of any is a no-op"
    )
    watch_interval_s: float = Field(
        0.0,
        ge=0,
        le=24 * 3600,
        description="poll CURRENT this often and load a new bundle it names (0: do not watch; with several workers "
        "1 s unless set, since that is how every worker follows a reload)",
    )
    reload_timeout_s: float = Field(
        120.0,
        gt=0,
        le=24 * 3600,
        description="with several workers: how long POST /admin/reload waits for all to serve the model",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="uvicorn and application log level"
    )
    log_format: Literal["json", "text"] = Field("json", description="one JSON object per log line, or plain text")

    @field_validator("redis_url")
    @classmethod
    def redis_url_parses(cls, url: str) -> str:
        """Refused at start, in one line, rather than by the first worker's connection pool."""
        parse_url(url)  # type: ignore[no-untyped-call]  # ValueError: the scheme, the port's range
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def any_case_log_level(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("admin_api_key", "events_api_key", mode="before")
    @classmethod
    def empty_key_is_unset(cls, key: object) -> object:
        """``RECSYS_EVENTS_API_KEY=`` (compose passes an unset variable so) disables the endpoint: an empty key
        would let any request with an empty X-API-Key header in."""
        return None if key == "" else key


@lru_cache
def get_settings() -> ServiceSettings:
    return ServiceSettings()
