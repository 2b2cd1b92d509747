-- What speech recognition heard in a generation's audio against its script (word and turn timings,
-- word error rate, voice similarity): the GenerationAnalysis message as proto JSON; NULL when the
-- analysis was off or could not run (services/gateway/generation/analysis.py).
ALTER TABLE generations ADD COLUMN analysis jsonb;
