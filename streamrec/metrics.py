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
ERASURES = Counter("streamrec_erasures_total", "User erasure requests carried out (repeats included)",
                   registry=REGISTRY)
REBALANCES = Counter("streamrec_rebalances_total", "Consumer group rebalances this worker took part in",
                     registry=REGISTRY)
RECOVERY = Gauge("streamrec_recovery_seconds", "Seconds from the start of the last rebalance until this worker's "
                 "tables were recovered and it resumed processing", registry=REGISTRY)
CATALOG_ITEMS = Gauge("streamrec_catalog_items", "Items in the catalog table", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
