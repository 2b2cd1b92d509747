-- The trace a background job belongs to (runtime/tracing.py): the W3C traceparent of the
-- request that created it, so that a gateway taking the job over (store/jobs.py) goes on in
-- that trace, with that request id in its log lines. '' when tracing was off.
ALTER TABLE generation_jobs ADD COLUMN traceparent text NOT NULL DEFAULT '';
