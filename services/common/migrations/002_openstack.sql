-- The OpenStack front doors (docs/design.md "OpenStack front doors"): Masakari segments,
-- their hosts and notifications; the Nova compute-service flags; and the evacuation's
-- "leave the rebuilt instances stopped" flag (Nova >= 2.95).

ALTER TABLE evacuations ADD COLUMN leave_stopped boolean NOT NULL DEFAULT false;

-- One row per host an operator flagged through Nova's os-services (forced_down and the
-- reason of a disable); `enabled` itself stays in hosts.
CREATE TABLE compute_services (
    host             text PRIMARY KEY,
    forced_down      boolean NOT NULL DEFAULT false,
    disabled_reason  text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE failover_segments (
    id               bigserial PRIMARY KEY,
    uuid             uuid NOT NULL UNIQUE,
    name             text NOT NULL UNIQUE,
    description      text,
    recovery_method  text NOT NULL CHECK (recovery_method IN ('auto', 'reserved_host', 'auto_priority', 'rh_priority')),
    service_type     text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz
);

-- A host belongs to at most one segment: the segment's recovery method becomes the host's.
-- `reserved` and `on_maintenance` are not stored here: they are hosts.reserved and the
-- detector's maintenance state.
CREATE TABLE segment_hosts (
    id                  bigserial PRIMARY KEY,
    uuid                uuid NOT NULL UNIQUE,
    name                text NOT NULL UNIQUE,
    segment_id          bigint NOT NULL REFERENCES failover_segments(id) ON DELETE CASCADE,
    type                text NOT NULL,
    control_attributes  text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz
);

CREATE TABLE notifications (
    id                 bigserial PRIMARY KEY,
    uuid               uuid NOT NULL UNIQUE,
    type               text NOT NULL CHECK (type IN ('COMPUTE_HOST', 'INSTANCE', 'PROCESS')),
    hostname           text NOT NULL,
    generated_time     timestamptz NOT NULL,
    payload            jsonb NOT NULL,
    status             text NOT NULL,   -- new | running | ignored | error | failed | finished (see services/api)
    message            text NOT NULL DEFAULT '',
    source_host_uuid   uuid,
    segment_uuid       uuid,
    signal_id          uuid,            -- the HostCommand it sent, if any
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz
);
CREATE INDEX notifications_host ON notifications (hostname, created_at);
