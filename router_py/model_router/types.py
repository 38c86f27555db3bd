"""Every request and response body: one msgspec Struct each, camelCase on the wire.

The same Structs validate input (once, at decode), describe the API in
/openapi.json and build the config snapshot handed to the Rust core.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

# --- constrained scalars -------------------------------------------------------

Id = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$",
        description="1-128 characters: letters, digits and . _ : @ -, starting alphanumeric",
    ),
]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Url = Annotated[str, Meta(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)]
EnvVarName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
KeyFilePath = Annotated[
    str,
    Meta(
        pattern=r"^/[A-Za-z0-9._/-]{1,1023}$",
        description="absolute path of a file holding the provider key (a mounted Secret)",
    ),
]
Timestamp = Annotated[str, Meta(description="RFC 3339 UTC timestamp")]
NonNegative = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Milliseconds = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1, le=10_000_000)]
# A count the Rust core holds in 64 bits, up to where JSON numbers stay exact:
# an unbounded one was accepted, then failed the config load on every worker.
Count = Annotated[int, Meta(ge=0, le=2**53 - 1)]
WaitMs = Annotated[int, Meta(ge=1, le=600_000)]
# Request parameters the model's provider cannot honour that are dropped
# without a word instead of refused with a 400 (docs/providers.md).
DropParams = Annotated[list[Annotated[str, Meta(pattern=r"^[a-z_]{1,64}$")]], Meta(max_length=100)]

ModelStatus = Literal["active", "inactive", "deprecated", "maintenance"]
Provider = Literal["openai", "azure", "anthropic", "custom"]
ModelType = Literal["chat", "completion", "embedding", "image", "audio", "multimodal"]
HealthStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]
EndpointType = Literal["primary", "secondary", "backup"]
TargetRole = Literal["primary", "canary"]
Role = Literal["admin", "operator", "agent", "viewer"]


class Body(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Base of every body: camelCase on the wire, unknown fields rejected."""


# --- models ------------------------------------------------------------------


class Capability(Body):
    type: Tag
    max_tokens: PositiveInt | None = None


Price = Annotated[float, Meta(ge=0, le=1000)]  # USD per 1,000 tokens; more is a typo


class Pricing(Body):
    """USD per 1,000 tokens. Prompt tokens a provider's prompt cache served
    (read) or stored (write) cost `inputPer1k` unless their own price is set."""

    input_per1k: Price = msgspec.field(name="inputPer1k")
    output_per1k: Price = msgspec.field(name="outputPer1k")
    cache_read_per1k: Price | None = msgspec.field(default=None, name="cacheReadPer1k")
    cache_write_per1k: Price | None = msgspec.field(default=None, name="cacheWritePer1k")


class BreakerSettings(Body):
    """Circuit-breaker overrides for a model or an endpoint (docs/routing.md)."""

    failure_threshold: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    error_rate_threshold: Fraction | None = None
    window_size: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    min_requests: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    cooldown_ms: Annotated[int, Meta(ge=0, le=86_400_000)] | None = None
    max_cooldown_ms: Annotated[int, Meta(ge=0, le=86_400_000)] | None = None
    half_open_probes: Annotated[int, Meta(ge=1, le=1000)] | None = None


class ModelCreate(Body):
    name: Name
    version: Id
    provider: Provider
    model_type: ModelType
    id: Id | None = None
    capabilities: list[Capability] = []
    parameters: dict[str, Any] = {}
    status: ModelStatus = "active"
    tags: list[Tag] = []
    compliance: list[Tag] = []
    pricing: Pricing | None = None
    description: Annotated[str, Meta(max_length=2000)] | None = None
    breaker: BreakerSettings | None = None
    drop_params: DropParams = []


class Model(Body):
    id: Id
    name: Name
    version: Id
    provider: Provider
    model_type: ModelType
    capabilities: list[Capability] = []
    parameters: dict[str, Any] = {}
    status: ModelStatus = "active"
    tags: list[Tag] = []
    compliance: list[Tag] = []
    pricing: Pricing | None = None
    description: str | None = None
    breaker: BreakerSettings | None = None
    drop_params: DropParams = []
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class StatusUpdate(Body):
    status: ModelStatus


class BatchStatusItem(Body):
    model_id: Id
    status: ModelStatus


class BatchStatusUpdate(Body):
    updates: Annotated[list[BatchStatusItem], Meta(min_length=1, max_length=1000)]


class BatchStatusResult(Body):
    updated: list[BatchStatusItem]


class HealthUpdate(Body):
    status: HealthStatus
    response_time: Milliseconds | None = None
    error_rate: Fraction | None = None
    availability: Percent | None = None
    expires_at: (
        Annotated[
            str,
            Meta(
                max_length=64,
                description="ISO 8601 time after which the report stops applying "
                "(no offset: UTC); none: until replaced",
            ),
        ]
        | None
    ) = None


class ModelHealth(Body):
    """An operator's report: an override of what the router observes, until it expires."""

    model_id: Id
    status: HealthStatus
    response_time: float | None = None
    error_rate: float | None = None
    availability: float | None = None
    last_checked: Timestamp | None = None
    expires_at: Timestamp | None = None


# --- endpoints ---------------------------------------------------------------


class EndpointCreate(Body):
    url: Url
    type: EndpointType = "primary"
    weight: NonNegative = 1.0
    id: Id | None = None
    health_check_url: Url | None = None
    api_key_env: EnvVarName | None = None
    api_key_file: KeyFilePath | None = None
    timeout_ms: WaitMs | None = None
    connect_timeout_ms: WaitMs | None = None
    first_byte_timeout_ms: WaitMs | None = None
    first_token_timeout_ms: WaitMs | None = None
    stream_idle_timeout_ms: WaitMs | None = None
    breaker: BreakerSettings | None = None


class Endpoint(Body):
    id: Id
    model_id: Id
    url: Url
    type: EndpointType = "primary"
    weight: NonNegative = 1.0
    health_check_url: Url | None = None
    api_key_env: EnvVarName | None = None
    api_key_file: KeyFilePath | None = None
    timeout_ms: WaitMs | None = None
    connect_timeout_ms: WaitMs | None = None
    first_byte_timeout_ms: WaitMs | None = None
    first_token_timeout_ms: WaitMs | None = None
    stream_idle_timeout_ms: WaitMs | None = None
    breaker: BreakerSettings | None = None
    created_at: Timestamp | None = None


# --- routing rules -----------------------------------------------------------


class LengthRange(Body):
    min: Count | None = None
    max: Count | None = None


MetadataValue = str | int | float | bool


class RuleCondition(Body):
    agent_type: list[Tag] | None = None
    request_type: list[Tag] | None = None
    content_length: LengthRange | None = None
    workspace_id: list[Id] | None = None
    user_id: list[Annotated[str, Meta(min_length=1, max_length=256)]] | None = None
    metadata: dict[Tag, MetadataValue] | None = None


class TargetModel(Body):
    model_id: Id
    weight: NonNegative = 1.0
    fallback_order: Count | None = None
    role: TargetRole = "primary"


class TrafficSplit(Body):
    """Percent of traffic to the primary and the canary targets; sums to 100."""

    primary: Percent
    canary: Percent


Targets = Annotated[list[TargetModel], Meta(min_length=1, max_length=100)]
Priority = Annotated[int, Meta(ge=-1_000_000, le=1_000_000)]


class RuleCreate(Body):
    name: Name
    target_models: Targets
    condition: RuleCondition = msgspec.field(default_factory=RuleCondition)
    traffic_split: TrafficSplit | None = None
    priority: Priority = 0
    enabled: bool = True
    sticky: bool = False
    id: Id | None = None
    description: Annotated[str, Meta(max_length=2000)] | None = None


class RulePatch(Body):
    """Partial update: only the fields present change."""

    name: Name | UnsetType = UNSET
    target_models: Targets | UnsetType = UNSET
    condition: RuleCondition | UnsetType = UNSET
    traffic_split: TrafficSplit | None | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    sticky: bool | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=2000)] | None | UnsetType = UNSET


class RoutingRule(Body):
    id: Id
    name: Name
    target_models: Targets
    condition: RuleCondition = msgspec.field(default_factory=RuleCondition)
    traffic_split: TrafficSplit | None = None
    priority: Priority = 0
    enabled: bool = True
    sticky: bool = False
    description: str | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


# --- agents and workspaces ---------------------------------------------------


class PerformanceRequirements(Body):
    max_latency: Annotated[float, Meta(gt=0)] | None = None
    min_success_rate: Fraction | None = None
    max_cost_per_token: NonNegative | None = None


class AgentPreferencesBody(Body):
    preferred_models: list[Id] = []
    fallback_models: list[Id] = []
    required_capabilities: list[Tag] = []
    performance_requirements: PerformanceRequirements | None = None


class AgentPreferences(Body):
    agent_type: Tag
    preferred_models: list[Id] = []
    fallback_models: list[Id] = []
    required_capabilities: list[Tag] = []
    performance_requirements: PerformanceRequirements | None = None
    updated_at: Timestamp | None = None


class BudgetLimits(Body):
    """USD per calendar day, ISO week and month (UTC); model calls and
    tokens per minute (docs/deployment.md)."""

    daily: NonNegative | None = None
    weekly: NonNegative | None = None
    monthly: NonNegative | None = None
    # Left out of answers when unset, so configs without them read as before.
    requests_per_minute: PositiveInt | None | UnsetType = UNSET
    tokens_per_minute: Annotated[int, Meta(ge=1, le=10**12)] | None | UnsetType = UNSET


class QualityRequirements(Body):
    min_success_rate: Fraction | None = None
    max_latency: Annotated[float, Meta(gt=0)] | None = None


class WorkspaceConfigBody(Body):
    model_restrictions: list[Id] | None = None
    budget_limits: BudgetLimits | None = None
    quality_requirements: QualityRequirements | None = None
    compliance_requirements: list[Tag] = []


class WorkspaceConfig(Body):
    workspace_id: Id
    model_restrictions: list[Id] | None = None
    budget_limits: BudgetLimits | None = None
    quality_requirements: QualityRequirements | None = None
    compliance_requirements: list[Tag] = []
    updated_at: Timestamp | None = None


# --- API keys ----------------------------------------------------------------


class KeyCreate(Body):
    role: Role
    workspace_id: Id | None = None
    name: Name | None = None


class ApiKey(Body):
    """A stored key: only the SHA-256 of the secret is kept."""

    id: Id
    role: Role
    secret_hash: str
    workspace_id: Id | None = None
    name: str | None = None
    created_at: Timestamp | None = None


class KeyInfo(Body):
    id: Id
    role: Role
    workspace_id: Id | None
    name: str | None
    created_at: Timestamp | None


class KeyCreated(KeyInfo):
    key: Annotated[str, Meta(description="The secret: shown this once, never again")]


class Identity(Body):
    """GET /api/me: whom the bearer token stands for and what it may do."""

    key_id: str
    role: Role
    workspace_id: str | None
    user_id: str | None
    permissions: list[str]


# --- config export / import --------------------------------------------------


class ConfigDocument(Body):
    models: list[Model] = []
    endpoints: list[Endpoint] = []
    routing_rules: list[RoutingRule] = []
    agent_preferences: dict[Tag, AgentPreferencesBody] = {}
    workspace_configs: dict[Id, WorkspaceConfigBody] = {}


class ConfigExport(Body):
    config: ConfigDocument
    config_version: int
    exported_at: Timestamp


class ConfigImport(Body):
    config: ConfigDocument
    config_version: int | None = None
    exported_at: Timestamp | None = None


class KindChanges(Body):
    created: list[str] = []
    updated: list[str] = []
    deleted: list[str] = []
    unchanged: int = 0


class ImportResult(Body):
    dry_run: bool
    mode: Literal["merge", "replace"]
    applied: bool
    config_version: int
    changes: dict[str, KindChanges]


# --- audit -------------------------------------------------------------------

# The catalog's kinds (catalog.LABELS; tests/test_audit.py keeps them equal).
AuditedKind = Literal[
    "models",
    "endpoints",
    "rules",
    "agents",
    "workspaces",
    "health",
    "keys",
    "canaries",
    "experiments",
]


class AuditChange(Body):
    """One document a write changed: absent `before` is a creation, absent
    `after` a deletion; a document over 8 KiB of JSON is shown as
    {"truncated": true, "bytes": N}."""

    resource_type: str
    resource_id: str
    before: Any = None
    after: Any = None


class AuditEntry(Body):
    seq: int
    at: Timestamp
    config_version: Annotated[int, Meta(description="The config version this write produced")]
    key_id: Annotated[str, Meta(description="The API key, or jwt-<hash> for a JWT")]
    user_id: Annotated[str | None, Meta(description="A JWT's subject")]
    role: Role
    method: str
    path: str
    request_id: str
    resource_type: str | None
    resource_id: Annotated[str | None, Meta(description="None when several were changed")]
    changes: list[AuditChange]
    omitted_changes: Annotated[
        int, Meta(description="Further documents changed, beyond the ones listed")
    ] = 0


class AuditPage(Body):
    data: list[AuditEntry]
    next_before: Annotated[
        int | None, Meta(description="Pass as `before` for the next (older) page")
    ]


# --- generic envelopes -------------------------------------------------------


class ErrorDetail(Body):
    type: str
    message: str
    details: Any = None


class ErrorBody(Body):
    """An error on the router's own routes."""

    error: ErrorDetail


class OpenAIErrorDetail(Body):
    message: str
    type: str
    param: str | None
    code: str | None
    details: Any = None  # absent when there are none


class OpenAIErrorBody(Body):
    """An error on OpenAI's front door (/v1), in OpenAI's shape."""

    error: OpenAIErrorDetail


AnthropicErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
]


class AnthropicErrorDetail(Body):
    type: AnthropicErrorType
    message: str
    details: Any = None  # absent when there are none


class AnthropicErrorBody(Body):
    """An error on Anthropic's front door (/v1/messages, or /v1 with an
    anthropic-version header), in Anthropic's shape."""

    type: Literal["error"]
    error: AnthropicErrorDetail


T = TypeVar("T")


class Page(Body, Generic[T]):
    data: list[T]
    total: int


class Deleted(Body):
    id: str
    deleted: bool = True


class HealthSummary(Body):
    status: Literal["healthy", "unhealthy"]
    timestamp: Timestamp
    service: str
    version: str


class ReadinessCheck(Body):
    status: Literal["ready", "not_ready"]
    timestamp: Timestamp
    checks: dict[str, Any]


class DetailedHealth(Body):
    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: Timestamp
    service: str
    version: str
    uptime_seconds: float
    worker_pid: int
    components: dict[str, Any]


# --- the snapshot handed to Rust ---------------------------------------------


class SnapshotModel(Body):
    """A model as the Rust core sees it: with its health and endpoints inlined."""

    id: str
    version: str
    provider: str
    model_type: str
    status: str
    capabilities: list[Capability]
    compliance: list[str]
    pricing: Pricing | None
    tags: list[str]
    health: ModelHealth | None
    endpoints: list[Endpoint]
    breaker: BreakerSettings | None
    parameters: dict[str, Any] = {}
    drop_params: list[str] = []


class EngineSettings(Body):
    fail_open: bool
    min_samples: int
    active_probes: bool = True  # half-open endpoints: the router's probes, not callers


class ConfigSnapshot(Body):
    version: int
    settings: EngineSettings
    models: list[SnapshotModel]
    rules: list[RoutingRule]
    agent_preferences: dict[str, AgentPreferences]
    workspace_configs: dict[str, WorkspaceConfig]


# --- query strings -----------------------------------------------------------


class Query(msgspec.Struct, rename="camel"):
    """Base of query-string Structs: decoded leniently ("10" -> 10)."""


class ModelListQuery(Query):
    provider: Provider | None = None
    status: ModelStatus | None = None
    model_type: ModelType | None = None
    tag: Tag | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, Meta(ge=0)] = 0


class ImportQuery(Query):
    mode: Literal["merge", "replace"] = "merge"
    dry_run: bool = False


# --- routing -----------------------------------------------------------------

RequestType = Annotated[str, Meta(min_length=1, max_length=64)]
Messages = Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=10_000)]


class RoutingTestRequest(Body):
    """What /api/route would receive, minus the call: the decision only."""

    agent_type: Tag
    workspace_id: Id | None = None
    user_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    request_type: RequestType | None = None
    prompt: str | None = None
    messages: Messages | None = None
    content_length: Count | None = None
    capabilities: list[Tag] = []
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    metadata: dict[Tag, MetadataValue] = {}
    # The request id /api/route would get: it draws a request-assigned
    # experiment's variant or a canary's side (this request's own id if absent).
    id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class RuleRef(Body):
    id: str
    name: str


class RankedCandidate(Body):
    rank: int
    model_id: str
    endpoints: list[str]
    reason: str


class ExcludedModel(Body):
    model_id: str
    reason: str


class DecisionOutcome(Body):
    """What /api/route would answer before calling anything: 200 when there
    are candidates, else the error status and why."""

    status: int
    type: str | None = None
    message: str | None = None
    details: dict[str, Any] | None = None


class RoutingDecision(Body):
    source: Literal["requested", "rule", "preferences", "default"]
    rule: RuleRef | None
    candidates: list[RankedCandidate]
    excluded: list[ExcludedModel]
    outcome: DecisionOutcome
    failed_open: bool
    request_type: str
    content_length: int
    config_version: int
    # The canary or experiment the request would take part in, as /api/route
    # answers it: its arm's model is then the first candidate.
    experiment_id: str | None = None
    canary_id: str | None = None
    variant: str | None = None


class AgentModelsQuery(Query):
    workspace_id: Id | None = None
    request_type: RequestType = "chat"


# --- calling models ----------------------------------------------------------


class RouteParameters(Body):
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    top_p: Fraction | None = None
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None


class RouteRequest(Body):
    """POST /api/route: the spec's request; `prompt` or OpenAI `messages`."""

    agent_type: Tag
    id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    workspace_id: Id | None = None
    user_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    prompt: Annotated[str, Meta(max_length=4_000_000)] | None = None
    messages: Messages | None = None
    parameters: RouteParameters = msgspec.field(default_factory=RouteParameters)
    metadata: dict[Tag, MetadataValue] = {}
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    capabilities: list[Tag] = []
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] | None = None


class AttemptReport(Body):
    model_id: str
    endpoint_id: str
    outcome: str
    status: int | None
    latency_ms: float
    error: str | None = None
    retry_after_ms: int | None = None


class RouteUsage(Body):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    estimated: bool = False


class RouteResponse(Body):
    id: str
    request_id: str
    model_id: str
    endpoint_id: str
    response: str
    usage: RouteUsage
    latency: int
    status: Literal["success"]
    timestamp: Timestamp
    attempts: list[AttemptReport]
    finish_reason: str | None = None
    experiment_id: str | None = None
    canary_id: str | None = None
    variant: str | None = None


ModelName = Annotated[str, Meta(min_length=1, max_length=256)]


class ChatCompletionRequest(msgspec.Struct):
    """OpenAI's chat request, as far as the router reads it; every other field
    goes to the provider as sent (or translated, docs/providers.md)."""

    model: ModelName
    messages: Messages
    stream: bool = False
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Fraction | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None


class TextCompletionRequest(msgspec.Struct):
    """OpenAI's legacy completions request, as far as the router reads it."""

    model: ModelName
    prompt: str | list[Any]
    stream: bool = False


class EmbeddingRequest(msgspec.Struct):
    model: ModelName
    input: str | Annotated[list[Any], Meta(min_length=1)]


class ResponsesRequest(msgspec.Struct):
    """OpenAI's Responses API request, as far as the router reads it."""

    model: ModelName
    input: str | list[Any] | None = None
    instructions: str | None = None
    stream: bool = False


class MessagesRequest(msgspec.Struct):
    """Anthropic's Messages request, as far as the router reads it."""

    model: ModelName
    messages: Messages
    max_tokens: Annotated[int, Meta(ge=1)]
    system: str | list[Any] | None = None
    stream: bool = False


class CountTokensRequest(msgspec.Struct):
    model: ModelName
    messages: Messages


class OpenAIModel(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(msgspec.Struct):
    """GET /v1/models in OpenAI's shape: `auto` first, then the active models."""

    object: Literal["list"]
    data: list[OpenAIModel]


class AnthropicModel(msgspec.Struct):
    type: Literal["model"]
    id: str
    display_name: str
    created_at: str


class AnthropicModelList(msgspec.Struct):
    """GET /v1/models in Anthropic's shape (to a caller sending anthropic-version)."""

    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


class RecentRequest(Body):
    id: str
    request_id: str
    timestamp: Timestamp
    route: str
    workspace_id: str | None
    agent_type: str
    model_id: str | None
    endpoint_id: str | None
    status: int
    outcome: str
    latency_ms: float
    upstream_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: bool
    attempts: int
    stream: bool
    user_id: str | None = None
    # The canary or experiment the request took part in, and its side of it.
    experiment_id: str | None = None
    canary_id: str | None = None
    variant: str | None = None
    # Each attempt's model, endpoint, outcome and latency (no provider message).
    attempt_details: list[AttemptReport] = []


class RecentQuery(Query):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class AuditQuery(Query):
    since: str | None = None
    resource_type: AuditedKind | None = None
    key_id: str | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before: Annotated[int, Meta(ge=1, le=2**62)] | None = None  # a seq: SQLite's integers


# --- analytics and the health overview ---------------------------------------

TimeRange = Literal["1h", "24h", "7d", "30d"]
Interval = Literal["1m", "5m", "15m", "1h", "6h", "1d"]


class AnalyticsQuery(Query):
    """`timeRange`, or `from` (and optionally `to`) in ISO 8601; not both."""

    time_range: TimeRange | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    model_id: Id | None = None
    workspace_id: Id | None = None
    agent_type: str | None = None
    interval: Interval | None = None
    # A canary's or experiment's traffic, and one arm of it as the
    # X-Model-Router-Variant header shows it (a model id, canary or baseline).
    experiment_id: Id | None = None
    variant: Id | None = None


class AnalyticsRange(Body):
    """What an analytics answer covers: buckets starting in [from, to)."""

    from_: Timestamp = msgspec.field(name="from")
    to: Timestamp
    time_range: TimeRange | None
    resolution: Literal["minute", "hour"]  # the store buckets read
    interval: Interval  # the size of each series point
    interval_seconds: int


class Percentiles(Body):
    p50: float | None
    p95: float | None
    p99: float | None


class OutcomeFigures(Body):
    """Upstream attempts and requests of one slice of the rollups."""

    requests: int  # first attempts: requests that reached a provider
    attempts: int
    successes: int
    success_rate: float | None  # successes / attempts
    errors: dict[str, int]  # failed attempts by outcome kind
    latency_ms: Percentiles  # attempt latency as the router measured it
    ttft_ms: Percentiles  # time to first token, streams only
    tokens_in: int
    tokens_out: int
    cost_usd: float
    cost_nanos: int
    cost_per_1k_tokens_usd: float | None
    failovers_in: int  # attempts here that came from a failed attempt elsewhere
    failovers_out: int  # attempts here that failed and moved the request on


class SeriesPoint(OutcomeFigures):
    start: Timestamp = ""


class ModelAnalytics(Body):
    model_id: str
    totals: OutcomeFigures
    series: list[SeriesPoint]


class ModelsAnalytics(Body):
    range: AnalyticsRange
    models: list[ModelAnalytics]
    # With ?experimentId: its traffic by variant, failovers to other models
    # included (a variant's `requests` is the experiment's n); else null.
    by_variant: dict[str, OutcomeFigures] | None = None


class BudgetUse(Body):
    period: Literal["daily", "weekly", "monthly"]
    spent_usd: float
    limit_usd: float | None
    remaining_usd: float | None
    resets_at: Timestamp


class WorkspaceSpend(Body):
    workspace_id: str
    totals: OutcomeFigures
    budgets: list[BudgetUse]


class WorkspacesAnalytics(Body):
    range: AnalyticsRange
    workspaces: list[WorkspaceSpend]
    # Every request the caller may see (with or without a workspace), by agent type.
    by_agent_type: dict[str, OutcomeFigures]


class WorkspaceAnalytics(Body):
    workspace_id: str
    range: AnalyticsRange
    budgets: list[BudgetUse]
    totals: OutcomeFigures
    by_model: dict[str, OutcomeFigures]
    by_agent_type: dict[str, OutcomeFigures]
    series: list[SeriesPoint]
    by_variant: dict[str, OutcomeFigures] | None = None  # as ModelsAnalytics'


ObservedStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]


class Observed(Body):
    """What the router saw over the last `windowSeconds`, fleet-wide. For an
    endpoint, `status` combines the outcomes with its breaker and active
    probes; for a model, with its endpoints'. `reasons` say what lowered it."""

    status: ObservedStatus
    reasons: list[str]
    window_seconds: int
    attempts: int
    success_rate: float | None
    latency_ms: Percentiles
    requests_per_minute: float


class Reported(Body):
    """What an operator reported (POST /api/models/{id}/health): it overrides
    the observation until `expiresAt`, and is kept, `expired`, after."""

    status: HealthStatus
    last_checked: Timestamp | None
    expires_at: Timestamp | None  # None: until replaced
    expired: bool


class BreakerView(Body):
    state: Literal["closed", "open", "half_open"]
    next_probe_at: Timestamp | None  # when an open breaker lets a probe through


class ProbeResult(Body):
    """One active probe of an endpoint's healthCheckUrl."""

    at: Timestamp
    ok: bool  # answered 2xx or 3xx within the probe timeout
    status_code: int | None  # None: no answer (see error)
    error: str | None
    latency_ms: float


class ProbeVerdict(Body):
    """What the active probes concluded: unhealthy after K failures in a row,
    healthy again after J successes in a row (docs/operations.md)."""

    status: Literal["healthy", "unhealthy"]
    consecutive_failures: int
    consecutive_successes: int
    since: Timestamp  # when the status last changed (or probing began)


class ActiveHealth(Body):
    """An endpoint's active health, as the prober shares it through the store."""

    verdict: ProbeVerdict
    last_probe: ProbeResult
    # The healthCheckUrl probed: a verdict on another URL is not the endpoint's now.
    url: str = ""


class EndpointOverview(Body):
    endpoint_id: str
    observed: Observed  # passive figures, with a status that folds in breaker and probes
    breaker: BreakerView | None
    probes: ProbeVerdict | None  # None: no healthCheckUrl, or not probed yet
    last_probe: ProbeResult | None


class ModelOverview(Body):
    model_id: str
    status: str  # the configured lifecycle status
    reported: Reported | None
    observed: Observed
    spend_today_usd: float
    endpoints: list[EndpointOverview]


class ServiceOverview(Body):
    version: str
    uptime_seconds: float
    workers: int
    store: dict[str, Any]
    config_version: int


class HealthOverview(Body):
    timestamp: Timestamp
    service: ServiceOverview
    models: list[ModelOverview]
    canaries: list[CanarySummary] = []


class ModelHealthView(ModelHealth):
    """GET /api/models/{id}/health: the spec's fields are what applies (the
    report until it expires, else the observation); then the report and the
    observation side by side, and each endpoint's."""

    reported: Reported | None = None
    observed: Observed | None = None
    endpoints: list[EndpointOverview] = []


# --- canaries and experiments (docs/experiments.md) -----------------------------


class RolloutScope(Body):
    """Which requests a canary or experiment sees: exactly one of these."""

    rule_id: Id | None = None
    agent_type: Tag | None = None
    workspace_id: Id | None = None


class Guardrails(Body):
    """What a canary may not be worse by, against its baseline."""

    max_error_rate_increase: Fraction = 0.02
    max_p95_latency_ratio: Annotated[float, Meta(ge=1, le=100)] = 1.5
    max_cost_ratio: Annotated[float, Meta(ge=1, le=100)] = 1.5


CanaryState = Literal["running", "paused", "promoted", "rolledBack"]
Steps = Annotated[list[Annotated[float, Meta(gt=0, le=100)]], Meta(min_length=1, max_length=20)]


class CanaryCreate(Body):
    model_id: Id
    baseline_model_id: Id
    scope: RolloutScope
    steps: Steps = msgspec.field(default_factory=lambda: [1.0, 5.0, 25.0, 50.0, 100.0])
    step_duration: Annotated[float, Meta(ge=0, le=30 * 86_400, description="seconds")] = 300
    min_requests_per_step: PositiveInt = 100
    guardrails: Guardrails = msgspec.field(default_factory=Guardrails)
    id: Id | None = None


class ArmFigures(Body):
    """One side of a canary over the current step's window."""

    requests: int
    error_rate: float | None
    p95_ms: float | None
    cost_per_request: float | None  # USD


class CanaryFigures(Body):
    canary: ArmFigures
    baseline: ArmFigures


class CanaryPosition(Body):
    state: CanaryState
    percent: float


class CanaryTransition(Body):
    at: Timestamp
    from_: CanaryPosition = msgspec.field(name="from")
    to: CanaryPosition
    reason: str
    figures: CanaryFigures | None = None


class Canary(Body):
    id: Id
    model_id: Id
    baseline_model_id: Id
    scope: RolloutScope
    steps: list[float]
    step_duration: float
    min_requests_per_step: int
    guardrails: Guardrails
    step_index: int
    percent: float
    state: CanaryState
    step_started_at: Timestamp
    window_start_ms: int  # the current step's measurement window (ms since the epoch)
    created_at: Timestamp
    updated_at: Timestamp
    history: list[CanaryTransition] = []
    current: CanaryFigures | None = None  # filled in when read, never stored


Metric = Literal["successRate", "latency", "cost", "feedback"]
Assignment = Literal["request", "user"]
ExperimentState = Literal["running", "ended"]


class Variant(Body):
    model_id: Id
    # Bounded: a sum of huge weights is not a number, and routing needs one.
    weight: Annotated[float, Meta(ge=0, le=1e6)] = 1.0


class ExperimentCreate(Body):
    name: Name
    scope: RolloutScope
    variants: Annotated[list[Variant], Meta(min_length=2, max_length=10)]
    primary_metric: Metric = "successRate"
    guardrail_metrics: Annotated[list[Metric], Meta(max_length=4)] = []
    assignment: Assignment = "request"
    min_samples_per_variant: PositiveInt = 100
    alpha: Annotated[float, Meta(gt=0, le=0.2)] = 0.05
    # On the primary metric's scale: rate points (0.05), ms, USD or score units.
    # A floor, so that the sample size it implies (∝ 1 / effect²) stays a number.
    min_detectable_effect: Annotated[float, Meta(ge=1e-9)] = 0.05
    auto_end: bool = False
    id: Id | None = None


class VariantResult(Body):
    model_id: str
    n: int  # requests
    mean: float | None
    ci: list[float] | None
    # The always-valid interval of (this variant - the control), at the
    # decision's alpha; None for the control and below 100 samples an arm.
    difference_ci: list[float] | None = None
    users: int | None = None  # with `assignment: "user"`
    # (Σn)² / Σn² over users: what the per-user tests rest on (stats.py).
    effective_users: float | None = None


class SrmResult(Body):
    p_value: float
    mismatch: bool


class ExperimentResults(Body):
    test: str
    p_value: float
    always_valid_p_value: float
    variants: list[VariantResult]
    # Requests (users, with `assignment: "user"`) against the weights.
    srm: SrmResult
    # When "no difference" can be called: requests or users, as `srm`.
    samples_needed_per_variant: int | None


class Experiment(Body):
    id: Id
    name: Name
    scope: RolloutScope
    variants: list[Variant]
    primary_metric: Metric
    guardrail_metrics: list[Metric]
    assignment: Assignment
    min_samples_per_variant: int
    alpha: float
    min_detectable_effect: float
    auto_end: bool
    state: ExperimentState
    decision: str  # "running" | "winner: <modelId>" | "no difference" | "stopped: guardrail"
    window_start_ms: int
    created_at: Timestamp
    updated_at: Timestamp
    winner: str | None = None
    reason: str | None = None  # why the decision, in words and figures
    ended_at: Timestamp | None = None
    results: ExperimentResults | None = None  # filled in when read, never stored


class FeedbackCreate(Body):
    request_id: Annotated[str, Meta(min_length=1, max_length=128)]
    # Bounded so that the sum of squares cannot overflow (experiments/tally.py).
    score: Annotated[float, Meta(ge=-1000, le=1000)]
    # The workspace the request was made for (a workspace-scoped key's own).
    workspace_id: Id | None = None


class FeedbackRecorded(Body):
    experiment_id: str
    request_id: str
    variant: str  # the model the request was assigned


class CanarySummary(Body):
    """The overview's line for each canary."""

    id: str
    model_id: str
    baseline_model_id: str
    state: CanaryState
    percent: float
    last_transition: CanaryTransition | None
