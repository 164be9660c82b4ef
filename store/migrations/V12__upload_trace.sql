-- The W3C traceparent of the request that accepted an upload (when traces
-- are exported over OTLP): the worker's job continues that trace, whichever
-- queue carried the job.
ALTER TABLE uploads ADD COLUMN trace_parent VARCHAR(64);
