-- One schema for SQLite and MySQL/MariaDB: only types and statements both accept.
-- Ids are made by the application (time-ordered 63-bit integers), times are
-- milliseconds since the Unix epoch.
CREATE TABLE people (
    id BIGINT NOT NULL PRIMARY KEY,
    email VARCHAR(254) NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE uploads (
    id BIGINT NOT NULL PRIMARY KEY,
    person_id BIGINT NOT NULL,
    display_name VARCHAR(200) NOT NULL,
    format VARCHAR(8) NOT NULL,
    bytes BIGINT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    claims INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner VARCHAR(64),
    lease_until BIGINT,
    enqueued_at BIGINT,
    failure_reason VARCHAR(500),
    flipped_bytes BIGINT,
    flipped_width INTEGER,
    flipped_height INTEGER,
    flip_method VARCHAR(32),
    thumb_width INTEGER,
    thumb_height INTEGER,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX uploads_by_person ON uploads (person_id, id);
CREATE INDEX uploads_by_state ON uploads (state, next_attempt_at);
CREATE TABLE sessions (
    token_hash CHAR(64) NOT NULL PRIMARY KEY,
    person_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_person ON sessions (person_id);
CREATE TABLE signin_tokens (
    token_hash CHAR(64) NOT NULL PRIMARY KEY,
    person_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE TABLE settings (
    setting_key VARCHAR(64) NOT NULL PRIMARY KEY,
    setting_value VARCHAR(1000) NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE workers (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL,
    pid INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    current_upload BIGINT,
    jobs_done BIGINT NOT NULL
);
CREATE TABLE events (
    id BIGINT NOT NULL PRIMARY KEY,
    at BIGINT NOT NULL,
    kind VARCHAR(16) NOT NULL,
    upload_id BIGINT,
    person_hash VARCHAR(32),
    detail VARCHAR(500)
);
CREATE INDEX events_by_upload ON events (upload_id);
