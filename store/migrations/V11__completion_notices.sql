-- Completion notices: a person can ask (on the upload form) for one mail
-- when a batch of their pictures is flipped, at most one every
-- FLIPSTACK_NOTICE_EVERY. `covered_until` is the newest `finished_at` of the
-- person's uploads that a notice (or the asking itself) already covered: the
-- next batch is the finished uploads after it. `sent_at` is when the last
-- notice was sent.
CREATE TABLE notices (
    person_id BIGINT NOT NULL PRIMARY KEY,
    wanted INTEGER NOT NULL,
    covered_until BIGINT NOT NULL,
    sent_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX notices_due ON notices (wanted, sent_at);
-- A person's uploads finished after a time, without reading all of them.
CREATE INDEX uploads_by_person_finished ON uploads (person_id, finished_at);
