"""Prometheus metrics of the worker, served at ``/metrics`` on the worker's web port."""

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
                               generate_latest)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)     # process_resident_memory_bytes, process_cpu_seconds_total, open fds
PlatformCollector(registry=REGISTRY)    # python_info

EVENTS = Counter("streamrec_events_total", "Interaction events by outcome", ["outcome"], registry=REGISTRY)
# outcome: applied | duplicate | dead_letter | rekeyed
DEAD_LETTERS = Counter("streamrec_dead_letters_total", "Dead-lettered records by reason", ["reason"],
                       registry=REGISTRY)
# reason: the InvalidEvent kind (schema, not_json, not_utf8, too_large) or processing
RECOMMENDATIONS = Counter("streamrec_recommendations_total", "Recommendation messages published", registry=REGISTRY)
AGENT_BATCH = Histogram("streamrec_agent_batch_events", "Events per batch taken from the stream",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
SCORE_BATCH = Histogram("streamrec_score_batch_size", "Requests per scorer call",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
QUEUE_WAIT = Histogram("streamrec_score_queue_wait_seconds", "Time a scoring request waited for its batch",
                       buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1), registry=REGISTRY)
COMPUTE = Histogram("streamrec_score_compute_seconds", "Scorer call duration", ["scorer"],
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5), registry=REGISTRY)
FALLBACKS = Counter("streamrec_score_fallbacks_total", "Requests answered by the fallback scorer", ["reason"],
                    registry=REGISTRY)
QUEUE_DEPTH = Gauge("streamrec_score_queue_depth", "Scoring requests waiting", registry=REGISTRY)
WARMUP_USERS = Counter("streamrec_warmup_users_total",
                       "User histories replayed into the scorer from user_state partitions this worker gained",
                       registry=REGISTRY)
COLD_START_BACKLOG = Gauge("streamrec_cold_start_backlog_items",
                           "Cold-start items waiting to be embedded into the item LM's table", registry=REGISTRY)
EVENT_LATENCY = Histogram(
    "streamrec_event_to_recommendation_seconds",
    "From an event's Kafka record timestamp (when it was produced) to its recommendation being handed to the "
    "producer: queueing in Kafka and the worker included", registry=REGISTRY,
    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
CONSUMER_LAG = Gauge("streamrec_consumer_lag",
                     "Records of an assigned interactions partition after this worker's committed offset "
                     "(set when /metrics is read)", ["topic", "partition"], registry=REGISTRY)
EXPIRED_USERS = Counter("streamrec_expired_users_total", "Users erased by the retention of inactive users "
                        "(user_retention_days)", registry=REGISTRY)
ERASURES = Counter("streamrec_erasures_total", "User erasure requests carried out (repeats included)",
                   registry=REGISTRY)
REBALANCES = Counter("streamrec_rebalances_total", "Consumer group rebalances this worker took part in",
                     registry=REGISTRY)
RECOVERY = Gauge("streamrec_recovery_seconds", "Seconds from the start of the last rebalance until this worker's "
                 "tables were recovered and it resumed processing", registry=REGISTRY)
CATALOG_ITEMS = Gauge("streamrec_catalog_items", "Items in the catalog table", registry=REGISTRY)
# Prequential quality: each applied event judged against the list last served to its user (stream/prequential.py).
# Quality over a window = rate(hits) / rate(events), likewise NDCG and reciprocal rank.
PREQ_EVENTS = Counter("streamrec_prequential_events", "Applied events judged against the list last served to "
                      "their user", registry=REGISTRY)
PREQ_HITS = Counter("streamrec_prequential_hits", "Judged events whose item was in the served top k",
                    registry=REGISTRY)
PREQ_NDCG = Counter("streamrec_prequential_ndcg", "Sum of NDCG@k of judged events", registry=REGISTRY)
PREQ_RR = Counter("streamrec_prequential_reciprocal_rank", "Sum of reciprocal ranks of judged events",
                  registry=REGISTRY)
PREQ_FALLBACK = Counter("streamrec_prequential_fallback_lists", "Judged events whose served list came from the "
                        "fallback scorer", registry=REGISTRY)
RECOMMENDED_ITEMS = Gauge("streamrec_recommended_items", "Distinct items this worker has recommended (catalogue "
                          "coverage = this / streamrec_catalog_items)", registry=REGISTRY)


def set_consumer_lag(lags: dict[tuple[str, int], int]) -> None:
    """Replace the lag gauges with ``lags`` ((topic, partition) -> records): partitions this worker no longer owns
    disappear instead of showing their last value."""
    CONSUMER_LAG.clear()
    for (topic, partition), lag in lags.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(lag)


def render() -> bytes:
    return generate_latest(REGISTRY)
MODEL_VERSION = Gauge("streamrec_model_version_info", "The model version being served (1 on its label)", ["version"],
                      registry=REGISTRY)
MODEL_SWAPS = Counter("streamrec_model_swaps_total", "Model versions swapped in without a restart", registry=REGISTRY)
MODEL_REFUSALS = Counter("streamrec_model_refusals_total", "Model versions refused (not loadable or failed a check)",
                         ["reason"], registry=REGISTRY)
