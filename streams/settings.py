"""Runtime settings: environment variables with the ``SWITCHBOARD_`` prefix, optionally
over a TOML file named by ``SWITCHBOARD_CONFIG`` (or ``switchboard --config FILE``).

Precedence, highest first: explicit arguments, environment, the config file, defaults.
Secrets (webhook signing keys, CRM tokens) only ever come from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "SWITCHBOARD_CONFIG"
# What a dead letter adds to the bytes it keeps: reason, stored headers, place, times.
DEAD_LETTER_HEADROOM_BYTES = 16_384
# Field-service systems a jobs webhook may name (besides "fieldservice", the default).
DEFAULT_JOB_SYSTEMS = ("servicetitan", "jobber", "housecall_pro", "fieldedge")
# Mailbox providers: their domain names no company, so enrichment never looks it up.
FREE_MAIL_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "ymail.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.net",
    "mail.com",
    "zoho.com",
    "yandex.com",
    "fastmail.com",
    "hey.com",
    "comcast.net",
    "verizon.net",
    "att.net",
    "sbcglobal.net",
)


def secret_env(name: str) -> str:
    """Where a secret comes from: only ever the environment, never a file in the repo."""
    return "SWITCHBOARD_SECRET_" + name.upper().replace("-", "_")


# The name of a secret (secret_env): letters, digits, underscores.
SecretName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]


def secret(name: str) -> str | None:
    return os.environ.get(secret_env(name)) or None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="forbid")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7",
        description="Base URL of the Confluent-compatible Schema Registry API.",
    )
    topic_prefix: str = Field("switchboard.", description="Prepended to every catalog topic name.")
    partitions: int = Field(6, ge=1, description="Partitions of each catalog topic.")
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(1, ge=1)
    kafka_max_message_bytes: int = Field(
        1_000_000,
        ge=65_536,
        description="The largest record a producer sends (librdkafka's message.max.bytes); "
        "keep it under the topics' max.message.bytes (1 MiB by default).",
    )
    app_id: str = Field(
        "switchboard",
        description="Worker app id: consumer group, changelog and transactional id prefix.",
    )
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    commit_interval_s: float = Field(
        0.1,
        gt=0,
        description="How often a worker commits its transaction (a checkpoint): under "
        "exactly-once, what a stage sends is visible downstream only then, so every hop "
        "waits for it.",
    )
    session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A worker that stops heartbeating (killed, hung) loses its partitions "
        "after this long; a restarted or standby worker takes them over then.",
    )
    store: str = Field(
        "memory://",
        description="Worker table store: memory://, or rocksdb:// (RocksDB through rocksdict) "
        "in production, which keeps tables on disk instead of rebuilding them from changelogs.",
    )
    data_dir: Path = Field(Path(".run/worker"), description="Worker state (tables) directory.")
    web_port: int = Field(6066, ge=1, le=65535, description="Worker web port; serves /metrics.")
    web_bind: str = Field("127.0.0.1", description="Worker web address; 0.0.0.0 in containers.")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="/metrics port of non-worker processes; 0 disables it."
    )
    metrics_bind: str = Field("127.0.0.1", description="Its address; 0.0.0.0 in containers.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    scoring_model: Path | None = Field(
        None, description="Lead scoring model (YAML); the packaged one when unset."
    )
    routing_rules: Path | None = Field(
        None, description="Lead routing rules (YAML); the packaged ones when unset."
    )
    sla_policies: Path | None = Field(
        None, description="SLA policies (YAML); the packaged ones when unset."
    )
    pipeline_rules: Path | None = Field(
        None, description="Pipeline triggers (YAML); the packaged ones when unset."
    )
    workflows: Path | None = Field(
        None,
        description="Workflow directory (*.yaml and policies.yaml); the packaged ones when unset.",
    )
    service_areas: Path | None = Field(
        None, description="Service areas (YAML); the packaged ones when unset."
    )
    clock: str = Field(
        "system",
        description="What drives timers: 'system', or 'file:PATH' (the ISO-8601 time written "
        "in PATH; tests and demos run days of SLA time in seconds with it).",
        pattern=r"^(system|file:.+)$",
    )
    timer_tick_s: float = Field(0.25, gt=0, description="How often a worker looks for due timers.")

    gateway_bind: str = Field("127.0.0.1", description="Webhook gateway address.")
    gateway_port: int = Field(8787, ge=1, le=65535, description="Webhook gateway port.")
    lookup_bind: str = Field("127.0.0.1", description="Caller lookup address.")
    lookup_port: int = Field(
        8790, ge=1, le=65535, description="Caller lookup port: GET /v1/contacts/lookup."
    )
    lookup_url: str = Field(
        "http://127.0.0.1:8790",
        description="Where the gateway asks the caller lookup (a voice AI's lookup_caller).",
    )
    lookup_timeout_s: float = Field(
        2.0, gt=0, description="How long the gateway waits for the caller lookup."
    )
    gateway_public_url: str | None = Field(
        None,
        description="The gateway's URL as providers call it (behind a proxy); Twilio and "
        "HubSpot sign the URL, so it must match what they called.",
    )
    gateway_max_body_bytes: int = Field(
        983_040,
        ge=1024,
        description="Larger bodies get 413. At most kafka_max_message_bytes less 16 KiB: a "
        "refused body goes to the dead-letter topic whole, with its reason.",
    )
    gateway_delivery_timeout_ms: int = Field(
        10_000, ge=100, description="How long a webhook waits for Kafka before a 503."
    )
    max_event_skew_s: float = Field(
        300.0,
        ge=0,
        description="The gateway refuses (400) an event dated more than this after it "
        "arrived: a future time would start timers no later event could stop.",
    )
    job_systems: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]] = Field(
        default_factory=lambda: list(DEFAULT_JOB_SYSTEMS),
        description="Field-service systems a jobs webhook may name in `system` (a metric "
        "label and event-id namespace), besides the default 'fieldservice'; never another "
        "source's name.",
    )

    sink_batch_size: int = Field(
        500, ge=1, description="Records a sink consumes, delivers and commits at a time."
    )
    sink_max_attempts: int = Field(
        8, ge=1, description="Attempts per record before it is dead-lettered (pauses excluded)."
    )
    sink_max_retry_s: float = Field(
        900.0,
        gt=0,
        description="The longest a record is retried, from its first retryable failure, "
        "before it is dead-lettered, whatever the circuit breaker does (an outage longer "
        "than this dead-letters what waits; `switchboard dlq replay` sends it again).",
    )
    sink_backoff_base_s: float = Field(0.5, gt=0, description="First retry waits up to this.")
    sink_backoff_cap_s: float = Field(
        30.0, gt=0, description="No retry waits longer (unless told)."
    )
    sink_retry_after_cap_s: float = Field(
        600.0, gt=0, description="No retry waits longer, whatever a Retry-After says."
    )
    sink_rate_per_s: float = Field(50.0, gt=0, description="Calls per second to one destination.")
    sink_burst: int = Field(10, ge=1, description="Calls one destination may get at once.")
    sink_concurrency: int = Field(4, ge=1, description="Calls in flight to one destination.")
    sink_breaker_threshold: int = Field(
        5, ge=1, description="Failed calls in a row that pause a destination."
    )
    sink_breaker_cooldown_s: float = Field(
        10.0, gt=0, description="How long a paused destination rests before a probe."
    )

    crm_backend: Literal["sql", "hubspot", "salesforce"] = Field(
        "sql", description="Where the CRM sink writes: the SQL store, HubSpot or Salesforce."
    )
    crm_database_url: str = Field(
        "sqlite:///.run/crm.db",
        description="SQL CRM store (SQLAlchemy URL): SQLite embedded, "
        "postgresql+psycopg://... in production.",
    )
    crm_owner_ids: dict[str, str] = Field(
        default_factory=dict,
        description="Rep id -> the CRM's owner/user id (HubSpot owner, Salesforce user).",
    )
    crm_stage_names: dict[str, str] = Field(
        default_factory=dict,
        description="Pipeline stage (processors/rules/pipeline.yaml) -> the CRM's own stage: "
        "a Salesforce StageName, a HubSpot pipeline's stage id. Unmapped stages go as they are.",
    )
    hubspot_url: str = Field("https://api.hubapi.com", description="HubSpot API base URL.")
    salesforce_url: str | None = Field(
        None, description="Salesforce instance URL (https://yourorg.my.salesforce.com)."
    )
    sink_ledger_url: str = Field(
        "sqlite:///.run/sink-ledger.db",
        description="Where the notification sink records what it delivered (SQLAlchemy URL).",
    )
    notify_outbox: Path | None = Field(
        None,
        description="Notifications for a channel with no settings go to this JSON-lines "
        "file instead of the dead-letter topic (make run sets it).",
    )
    smtp_host: str | None = Field(None, description="SMTP server for EMAIL notifications.")
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = Field(True, description="Upgrade with STARTTLS (port 587).")
    smtp_implicit_tls: bool = Field(False, description="TLS from the first byte (port 465).")
    smtp_username: str | None = Field(
        None, description="Password: SWITCHBOARD_SECRET_SMTP_PASSWORD."
    )
    smtp_sender: str = Field("switchboard@localhost", description="From address.")
    twilio_account_sid: str | None = Field(
        None, description="SMS through Twilio (auth token: SWITCHBOARD_SECRET_TWILIO_AUTH_TOKEN)."
    )
    twilio_from: str | None = Field(None, description="Sending number, E.164.")
    twilio_url: str = Field("https://api.twilio.com", description="Twilio API base URL.")
    notify_webhook_url: str | None = Field(
        None,
        description="WEBHOOK notifications go here, signed with the key in "
        "SWITCHBOARD_SECRET_NOTIFY_WEBHOOK_KEY. SLACK ones go to the incoming-webhook URL in "
        "SWITCHBOARD_SECRET_SLACK_WEBHOOK_URL.",
    )
    slack_recipients: dict[str, SecretName] = Field(
        default_factory=dict,
        description="SLACK notification recipient (a channel such as '#ops', a rep's id) -> "
        "the name of the secret holding its incoming-webhook URL: 'ops' reads "
        "SWITCHBOARD_SECRET_OPS. When set, a recipient not listed is refused (dead letter); "
        "unset, every SLACK notification goes to SWITCHBOARD_SECRET_SLACK_WEBHOOK_URL.",
    )
    webhook_recipients: dict[str, SecretName] = Field(
        default_factory=dict,
        description="WEBHOOK notification recipient -> the name of the secret holding its URL "
        "(signed with SWITCHBOARD_SECRET_NOTIFY_WEBHOOK_KEY). When set, a recipient not "
        "listed is refused (dead letter); unset, every WEBHOOK notification goes to "
        "notify_webhook_url.",
    )
    operations_channel: Literal["SLACK", "EMAIL", "WEBHOOK"] = Field(
        "SLACK", description="How the operations team hears of each payment."
    )
    operations_recipients: list[Annotated[str, Field(min_length=1, max_length=320)]] = Field(
        default_factory=list,
        description="Who on operations_channel hears of each payment: a Slack channel "
        "('#ops', a key of slack_recipients), e-mail addresses (one message each), or a "
        "webhook recipient. Empty: nobody is told.",
    )
    http_timeout_s: float = Field(10.0, gt=0, description="One HTTP call to a destination.")
    hubspot_job_object: str = Field(
        "p_switchboard_jobs",
        pattern=r"^(p_[a-z][a-z0-9_]*|2-\d+)$",
        description="The HubSpot custom object that holds job records (its fully qualified "
        "name p_<name>, or its objectTypeId 2-<n>).",
    )

    billing_backend: Literal["stripe"] = Field(
        "stripe",
        description="Where the billing sink invoices completed billable jobs (API key: "
        "SWITCHBOARD_SECRET_STRIPE_API_KEY).",
    )
    stripe_api_url: str = Field("https://api.stripe.com", description="Stripe API base URL.")
    billing_collection_method: Literal["send_invoice", "charge_automatically"] = Field(
        "send_invoice",
        description="send_invoice: Stripe e-mails the invoice, due after "
        "billing_days_until_due; charge_automatically: Stripe charges the customer's default "
        "payment method.",
    )
    billing_days_until_due: int = Field(
        30, ge=0, le=365, description="Days to pay a sent invoice (send_invoice only)."
    )

    # `switchboard enrich` (connectors/sources/enrichment.py). Token:
    # SWITCHBOARD_SECRET_ENRICHMENT_TOKEN.
    enrichment_url: str | None = Field(
        None,
        description="Base URL of the enrichment provider (GET /v2/companies/find?domain= and "
        "/v2/people/find?email=); `switchboard enrich` refuses to start without it.",
    )
    enrichment_provider: str = Field("enrichment", description="The provider's name in events.")
    enrichment_rate_per_s: float = Field(5.0, gt=0, description="Calls a second at most.")
    enrichment_timeout_s: float = Field(5.0, gt=0, description="One call to the provider.")
    enrichment_attempts: int = Field(
        5, ge=1, description="Calls per lookup before the command is dead-lettered."
    )
    enrichment_cache_size: int = Field(
        10_000, ge=1, description="Domains and e-mails whose answers are kept in memory."
    )
    enrichment_free_domains: list[str] = Field(
        default_factory=lambda: list(FREE_MAIL_DOMAINS),
        description="Mailbox providers: an address there is a person, never a company.",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @model_validator(mode="after")
    def _operations_addressable(self) -> Settings:
        if self.operations_channel == "EMAIL":
            bad = [r for r in self.operations_recipients if "@" not in r or " " in r.strip()]
            if bad:
                raise ValueError(
                    f"operations_recipients: {bad[0]!r} is not an e-mail address "
                    "(operations_channel is EMAIL)"
                )
        routes = {"SLACK": self.slack_recipients, "WEBHOOK": self.webhook_recipients}
        known = routes.get(self.operations_channel)
        if known:  # a map is set: the sink would refuse any other recipient
            missing = [r for r in self.operations_recipients if r not in known]
            if missing:
                which = f"{self.operations_channel.lower()}_recipients"
                raise ValueError(
                    f"operations_recipients: {missing[0]!r} is not a key of {which} "
                    f"({', '.join(sorted(known))})"
                )
        return self

    @model_validator(mode="after")
    def _isr_fits(self) -> Settings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) exceeds "
                f"replication_factor ({self.replication_factor})"
            )
        return self

    @model_validator(mode="after")
    def _dead_letter_fits(self) -> Settings:
        # A body the gateway refuses is dead-lettered whole: were the limit above what a
        # producer may send, the provider would get 503 for ever instead of its 400.
        room = self.kafka_max_message_bytes - DEAD_LETTER_HEADROOM_BYTES
        if self.gateway_max_body_bytes > room:
            raise ValueError(
                f"gateway_max_body_bytes ({self.gateway_max_body_bytes}) must be at most "
                f"kafka_max_message_bytes ({self.kafka_max_message_bytes}) less "
                f"{DEAD_LETTER_HEADROOM_BYTES} for a dead letter's reason and headers: {room}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_ENV}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)
