"""Prometheus metrics shared by every service (served on /metrics by services.common.health)."""

from prometheus_client import Counter, Gauge, Histogram

HANDLED = Counter("evacuate_messages_handled_total", "Messages handled", ["consumer", "type"])
FAILED = Counter("evacuate_messages_failed_total", "Handler failures", ["consumer", "type"])
DEAD_LETTERS = Counter("evacuate_dead_letters_total", "Messages dead-lettered", ["consumer", "topic"])
HANDLER_SECONDS = Histogram(
    "evacuate_handler_seconds", "Handler latency", ["consumer", "type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_PUBLISHED = Counter("evacuate_outbox_published_total", "Outbox rows published", ["service"])
EVACUATIONS = Counter("evacuate_evacuations_total", "Evacuations closed by outcome", ["status"])
RECOVERY_SECONDS = Histogram(
    "evacuate_recovery_seconds", "Evacuation time from plan to last result",
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
FENCE_ATTEMPTS = Counter("evacuate_fence_attempts_total", "Fence attempts", ["driver", "ok"])
HOSTS_BY_STATE = Gauge("evacuate_hosts", "Hosts by detector state", ["state"])
HEARTBEAT_GAP = Histogram(
    "evacuate_heartbeat_gap_seconds",
    "Time between two heartbeats of one up host as this detector read them: the detection timeout must exceed the"
    " largest, or a live host is suspected",
    buckets=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0),
)
DETECTOR_LAG = Gauge("evacuate_detector_lag_seconds",
                     "How far behind the present the detector has read its heartbeats (it judges at that time)")
STALE_HEARTBEATS = Counter("evacuate_stale_heartbeats_total",
                           "Heartbeats dropped as duplicates or older than one already heard from the host")
DETECTOR_BLIND = Gauge("evacuate_detector_blind", "1 while this detector hears no watched host (it judges none)")
REBUILDS = Counter("evacuate_rebuilds_total", "Rebuilds on this executor", ["ok"])
