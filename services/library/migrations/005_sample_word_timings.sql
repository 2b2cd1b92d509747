-- The words speech recognition heard in each sample, with their times, for cutting a voice
-- prompt between two words (synth's GetPromptSample): a JSON array of [start, end, text],
-- seconds from the sample's start. NULL: not timed yet (a sample stored before this
-- migration, or while speech recognition was down); timed once when first needed, then kept.
ALTER TABLE samples ADD COLUMN word_timings jsonb;
