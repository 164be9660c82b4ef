-- A gallery made by a bare first upload is unverified until its owner signs
-- in through a mailed link; sessions remember whether they proved control of
-- the address (made by a mailed link) or not (made by a first upload).
ALTER TABLE people ADD COLUMN verified_at BIGINT;
ALTER TABLE sessions ADD COLUMN proven INTEGER NOT NULL DEFAULT 0;
