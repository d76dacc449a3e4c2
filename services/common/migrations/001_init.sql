-- The system of record (DESIGN §3).

CREATE TABLE hosts (
    name            text PRIMARY KEY,
    state           text NOT NULL DEFAULT 'up',
    state_since     timestamptz NOT NULL DEFAULT now(),
    state_reason    text NOT NULL DEFAULT '',
    detector        jsonb,               -- the failure detector's record of this host
    last_heartbeat  timestamptz,
    fence_driver    text NOT NULL DEFAULT 'process',
    fence_target    text NOT NULL DEFAULT '',
    vcpus           int NOT NULL DEFAULT 0,
    memory_mib      int NOT NULL DEFAULT 0,
    disk_gib        int NOT NULL DEFAULT 0,
    cpu_ratio       real NOT NULL DEFAULT 4.0,
    ram_ratio       real NOT NULL DEFAULT 1.0,
    disk_ratio      real NOT NULL DEFAULT 1.0,
    enabled         boolean NOT NULL DEFAULT true,
    reserved        boolean NOT NULL DEFAULT false,
    recovery_method text NOT NULL DEFAULT 'auto',
    inventory_at    timestamptz
);

CREATE TABLE templates (
    name        text NOT NULL,
    version     int NOT NULL,
    text        text NOT NULL,
    bodies      jsonb NOT NULL,            -- guest path -> template body
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE server_groups (
    name    text PRIMARY KEY,
    policy  text NOT NULL CHECK (policy IN ('affinity', 'anti-affinity', 'soft-anti-affinity'))
);

CREATE TABLE instances (
    uuid                 uuid PRIMARY KEY,
    name                 text NOT NULL,
    host                 text NOT NULL,
    power_state          text NOT NULL,
    vcpus                int NOT NULL DEFAULT 1,
    memory_mib           int NOT NULL DEFAULT 0,
    disk_gib             int NOT NULL DEFAULT 0,
    xml                  text NOT NULL,
    macs                 text[] NOT NULL DEFAULT '{}',
    ips                  text[] NOT NULL DEFAULT '{}',
    disks                jsonb NOT NULL DEFAULT '[]',
    evacuable            boolean NOT NULL DEFAULT true,
    not_evacuable_reason text,
    ha                   boolean NOT NULL DEFAULT true,
    priority             int NOT NULL DEFAULT 2,
    server_group         text REFERENCES server_groups(name),
    template             text,
    metadata             jsonb NOT NULL DEFAULT '{}',
    present              boolean NOT NULL DEFAULT true,
    reported_at          timestamptz NOT NULL
);
CREATE INDEX instances_host ON instances (host);

CREATE TABLE evacuations (
    id            uuid PRIMARY KEY,
    source        text NOT NULL,
    trigger       text NOT NULL,          -- NodeDown | manual
    trigger_id    uuid NOT NULL,
    status        text NOT NULL,          -- running | completed | completed_with_errors | failed | refused
    reason        text NOT NULL DEFAULT '',
    target        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX evacuations_open ON evacuations (status) WHERE status = 'running';

CREATE TABLE evacuation_items (
    id             uuid PRIMARY KEY,
    evacuation_id  uuid NOT NULL REFERENCES evacuations(id),
    instance_uuid  uuid NOT NULL,
    instance_name  text NOT NULL,
    source         text NOT NULL,
    target         text,
    attempt        int NOT NULL DEFAULT 0,
    status         text NOT NULL,  -- pending | done | failed | no_capacity | not_evacuable | ha_off
    reason         text NOT NULL DEFAULT '',
    power_state    text,
    excluded       text[] NOT NULL DEFAULT '{}',
    order_id       uuid,
    steps          jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    ordered_at     timestamptz,
    finished_at    timestamptz
);
CREATE INDEX evacuation_items_evac ON evacuation_items (evacuation_id);

CREATE TABLE processed_messages (
    consumer   text NOT NULL,
    message_id text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    kind           text NOT NULL,
    detail         text NOT NULL,
    host           text,
    evacuation_id  uuid,
    data           jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_evacuation ON audit (evacuation_id);
