-- Queue settings an admin changed at run time (PUT /v1/queues/{name}); they override the
-- configuration's. NULL keeps the configured value.
CREATE TABLE queue_settings (
    name         text PRIMARY KEY,
    concurrency  bigint,
    max_depth    bigint,
    rate         double precision,
    paused       boolean NOT NULL DEFAULT false,
    updated_at   bigint NOT NULL
);
