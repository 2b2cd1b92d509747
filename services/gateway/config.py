"""Settings of the gateway's generation domain (the HTTP edge's are in edge/config.py;
the public HTTP port, GATEWAY_HTTP_PORT, is in runtime.config)."""

from __future__ import annotations

from runtime import config
from runtime.config import at_least, between, setting


KEY_CACHE_SECONDS = setting(
    "GATEWAY_KEY_CACHE_SECONDS",
    30.0,
    "how long a gateway process remembers an API key it has checked (its account and scopes); a key revoked, "
    "or an account disabled or deleted, on another replica keeps working here for at most this long (on the "
    "replica that revoked it, not at all); 0 checks every request against the database",
    between(0, 3600),
)
HEARTBEAT_INTERVAL_SECONDS = setting(
    "GATEWAY_HEARTBEAT_INTERVAL_SECONDS",
    5.0,
    "how often synth providers are told to send a heartbeat",
    float,
)
PROVIDER_TIMEOUT_SECONDS = setting(
    "GATEWAY_PROVIDER_TIMEOUT_SECONDS",
    15.0,
    "a provider without a heartbeat for this long is offline",
    float,
)
VOICE_AFFINITY = setting(
    "GATEWAY_VOICE_AFFINITY",
    True,
    "true: a generation with cloned voices goes to the synth provider its voices hash to (rendezvous hashing on "
    "the samples' ids and versions, weighted by capacity), which has most likely encoded them before and holds "
    "their codes, unless it is busier than the least loaded by more than GATEWAY_VOICE_AFFINITY_SLACK; "
    "false: every generation goes to the least loaded",
    config.boolean,
)
VOICE_AFFINITY_SLACK = setting(
    "GATEWAY_VOICE_AFFINITY_SLACK",
    2,
    "how many more requests in flight than the least loaded provider the provider holding a generation's voices "
    "may have and still be sent it; past that the generation goes to the least loaded (0: only when it is as "
    "idle as the least loaded)",
    between(0, 10_000, int),
)
READINESS_INTERVAL_SECONDS = setting(
    "GATEWAY_READINESS_INTERVAL_SECONDS",
    2.0,
    "how often the gateway checks that PostgreSQL is reachable and that an online synth provider offers a "
    "voice-cloning model; its generation and speech services (and /readyz) are NOT_SERVING while not",
    between(0.1, 3600),
)

SYNTH_TIMEOUT_SECONDS = setting(
    "GATEWAY_SYNTH_TIMEOUT_SECONDS",
    300.0,
    "deadline of one generation on the synth providers (a retry on another provider shares it); "
    "past it the request fails with 502 upstream_error",
    between(1, 3600),
)
RECORD_RETRY_SECONDS = setting(
    "GATEWAY_RECORD_RETRY_SECONDS",
    0.5,
    "first pause before trying again to record how generations ended while PostgreSQL was down (they answered "
    "503 database_unavailable); it doubles at each try that fails, up to GATEWAY_RECORD_RETRY_MAX_SECONDS. "
    "Any statement on the generations that reaches PostgreSQL records them first",
    between(0.01, 60),
)
RECORD_RETRY_MAX_SECONDS = setting(
    "GATEWAY_RECORD_RETRY_MAX_SECONDS",
    5.0,
    "longest pause between tries to record how generations ended while PostgreSQL was down: once it is back they "
    "are recorded within about this long (sooner if a request comes), and stop counting against their account",
    between(0.01, 600),
)
MAX_INPUT_CHARS = setting(
    "GATEWAY_MAX_INPUT_CHARS",
    8192,
    "longest generation `input` (the script) in characters (twice OpenAI's 4096 for speech); a longer one is "
    "refused with 413 request_too_large. A script over the model's text window (1024 bytes for Dia-1.6B) is "
    "generated in chunks",
    between(1, 1_000_000, int),
)
MAX_COLLECTION_CHARS = setting(
    "GATEWAY_MAX_COLLECTION_CHARS",
    100,
    "longest generation `collection` name in characters; a longer one is refused with 400 invalid_parameter",
    between(1, 10_000, int),
)
PROMPT_GAP_SECONDS = setting(
    "GATEWAY_PROMPT_GAP_SECONDS",
    0.3,
    "silence between the S1 and S2 clips of a voice-cloning prompt, in seconds (0 to 0.5, so that "
    "even a 1 s prompt keeps room for both voices); sent with each request, the synth provider joins them",
    between(0, 0.5),
)
SPEECH_FRAMES_PER_CHARACTER = setting(
    "GATEWAY_SPEECH_FRAMES_PER_CHARACTER",
    12.0,
    "the speech endpoint's max_new_tokens (which OpenAI's request lacks) per character of its `input`, "
    "kept between 256 and 4096 frames: at about 86 frames a second, 12 allows 7 characters a second, "
    "half the usual pace of speech; a model stops at the end of the text anyway, this bounds one that runs on",
    between(1, 100),
)

# Per-account limits on generations (POST /v1/voice/generations and /v1/audio/speech), for all of an
# account's keys together, held in PostgreSQL so that they hold across every gateway replica.
ACCOUNT_GENERATIONS_PER_SECOND = setting(
    "GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND",
    5.0,
    "generations an account may start per second, on average, whichever gateway replica it calls; past "
    "it (and its burst), 429 rate_limited with Retry-After until the next is allowed (0 turns the limit off). "
    "An operator may give an account its own (PATCH /v1/accounts/{id})",
    between(0, 1_000_000),
)
ACCOUNT_GENERATION_BURST = setting(
    "GATEWAY_ACCOUNT_GENERATION_BURST",
    20,
    "generations an account may start at once above its per-second rate, after a quiet spell (an account's own, "
    "set by an operator, replaces it)",
    between(1, 1_000_000, int),
)
ACCOUNT_CONCURRENT_GENERATIONS = setting(
    "GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS",
    4,
    "generations an account may have under way (queued or running) at once, whichever gateway replica "
    "it calls; one more is 429 rate_limited with Retry-After (0 turns the limit off; an account's own, set by "
    "an operator, replaces it)",
    between(0, 1_000_000, int),
)


def _default_public_url() -> str:
    return f"http://127.0.0.1:{config.GATEWAY_HTTP_PORT.value}"


_default_public_url.__doc__ = "http://127.0.0.1:$GATEWAY_HTTP_PORT"

PUBLIC_URL = setting(
    "GATEWAY_PUBLIC_URL",
    _default_public_url,
    "the gateway's address as users reach it, without a trailing slash: the start of the URLs it hands out "
    "(share URLs, signed audio URLs, a prediction's urls)",
)

SIGNED_URL_SECONDS = setting(
    "GATEWAY_SIGNED_URL_SECONDS",
    3600,
    "how long a signed audio URL (a generation's `audio_url`, a prediction's `output`) works without a key, "
    "at least (at most twice that: it expires at the end of the next window of this many seconds, so that the "
    "URLs handed out within one window are the same; the hosted predictor's deliveries last an hour too); past "
    "it 403 url_expired, and reading the generation or prediction again gives a fresh one",
    between(1, 7 * 24 * 3600, int),
)

PREDICTION_MAX_WAIT_SECONDS = setting(
    "GATEWAY_PREDICTION_MAX_WAIT_SECONDS",
    60.0,
    "longest a prediction request with `Prefer: wait` is held open for the prediction to end (the hosted "
    "predictor's client waits 60 s); past it the prediction is answered as it is and goes on in the background",
    between(1, 600),
)
MAX_FILE_BYTES = setting(
    "GATEWAY_MAX_FILE_BYTES",
    20 * 1024 * 1024,
    "largest file uploaded to /v1/files (a prediction's audio_prompt), also of a data: URI or allowed URL "
    "given as audio_prompt; larger is refused with 413 request_too_large",
    at_least(1),
)
# A File's metadata comes back as a google.protobuf.Struct inside the answer (ListFilesResponse > File >
# Struct, then Struct > map entry > Value for each level of objects): protobuf parses at most 100 nested
# messages, which 33 levels of objects reach, so 32 is as deep as any stored metadata can be read back.
METADATA_DEPTH_CEILING = 32
MAX_METADATA_DEPTH = setting(
    "GATEWAY_MAX_METADATA_DEPTH",
    METADATA_DEPTH_CEILING,
    "deepest nesting of objects and lists in the JSON `metadata` of a file uploaded to /v1/files (a flat object "
    "is 1); a deeper one is refused with 400 invalid_parameter. At most 32, as deep as a protobuf Struct can "
    "carry it back in the answers",
    between(1, METADATA_DEPTH_CEILING, int),
)
PREDICTION_URL_ALLOW_LIST = setting(
    "GATEWAY_PREDICTION_URL_ALLOW_LIST",
    "",
    "comma-separated URL prefixes (`https://files.example.com/voices/`) a prediction's audio_prompt may be "
    "fetched from; empty: the gateway fetches no URL a user supplies (only its own /v1/files URLs, data: URIs "
    "and sample:<id>)",
    str,
)
WEBHOOK_ALLOW_LIST = setting(
    "GATEWAY_WEBHOOK_ALLOW_LIST",
    "",
    "comma-separated URL prefixes (`https://hooks.example.com/`) a prediction's webhook may point at; "
    "empty: no webhooks (a prediction asking for one is refused with 400 invalid_parameter)",
    str,
)
WEBHOOK_ATTEMPTS = setting(
    "GATEWAY_WEBHOOK_ATTEMPTS",
    5,
    "tries of one webhook delivery (a connection error, a timeout or a non-2xx answer is retried, the pauses "
    "doubling from 1 s)",
    between(1, 20, int),
)
PREDICTIONS_PAGE_SIZE = setting(
    "GATEWAY_PREDICTIONS_PAGE_SIZE",
    100,
    "predictions on one page of GET /v1/predictions (the hosted predictor's client follows `next` for more)",
    between(1, 100, int),
)
MAX_KEY_NAME_CHARS = setting(
    "GATEWAY_MAX_KEY_NAME_CHARS",
    100,
    "longest API key `name` in characters; a longer one is refused with 400 invalid_parameter",
    between(1, 10_000, int),
)
MAX_KEYS_PER_ACCOUNT = setting(
    "GATEWAY_MAX_KEYS_PER_ACCOUNT",
    100,
    "API keys an account may have that are neither revoked nor expired (browser tokens not counted); one more "
    "is refused with 429 rate_limited until one is revoked",
    between(1, 1_000_000, int),
)
BROWSER_TOKEN_MAX_SECONDS = setting(
    "GATEWAY_BROWSER_TOKEN_MAX_SECONDS",
    900,
    "longest life of a browser token (POST /v1/tokens `ttl_seconds`) in seconds; a longer one is refused with "
    "400 invalid_parameter, and one asked for without a ttl_seconds lives 300 s or this, whichever is shorter",
    between(1, 86_400, int),
)
MAX_BROWSER_TOKENS_PER_ACCOUNT = setting(
    "GATEWAY_MAX_BROWSER_TOKENS_PER_ACCOUNT",
    1000,
    "browser tokens an account may have that have not expired; minting one more is refused with 429 "
    "rate_limited (Retry-After 60 s) until some have",
    between(1, 1_000_000, int),
)
USAGE_MAX_DAYS = setting(
    "GATEWAY_USAGE_MAX_DAYS",
    366,
    "most UTC days one GET /v1/usage may cover (end_date - start_date + 1); a longer range is refused with 400 "
    "invalid_parameter naming start_date",
    between(1, 100_000, int),
)
AUDIO_RETENTION_SECONDS = setting(
    "GATEWAY_AUDIO_RETENTION_SECONDS",
    0.0,
    "how long generated audio is kept after its generation ended, in seconds (0: forever); past it the gateway's "
    "sweep (every S3_SWEEP_SECONDS) deletes it from the object store, the history keeps the record "
    "(audio_expired) and its audio answers 410 audio_expired",
    between(0, 100 * 365 * 24 * 3600),
)
AUDIO_REDIRECTS = setting(
    "GATEWAY_AUDIO_REDIRECTS",
    False,
    "true: a generation's audio (with the key, by its share_url or its audio_url) is answered with a 307 to a "
    "presigned URL of the object store on S3_PUBLIC_ENDPOINT_URL (valid S3_PRESIGNED_URL_SECONDS, never past the "
    "audio_url's own expiry), so that the store or a CDN before it sends the bytes, byte ranges included; "
    "false: the gateway sends them, as it reads them from the store",
    config.boolean,
)
ANALYSIS = setting(
    "GATEWAY_ANALYSIS",
    True,
    "true: every generation's audio is analyzed once made (README: \"Generation analysis\"): speech recognition "
    "times each script word and turn, scores the word error rate and the cloned voices' similarity to their "
    "samples (about 0.1-0.3 s of the STT service's CPU per second of audio, added before the generation is "
    "returned); false: none of it, and no captions",
    config.boolean,
)
ANALYSIS_TIMEOUT_SECONDS = setting(
    "GATEWAY_ANALYSIS_TIMEOUT_SECONDS",
    60.0,
    "how long the analysis of a generation's audio may take; past that (or with the STT service down or busy) "
    "the generation succeeds without an analysis",
    between(0.1, 3600),
)
