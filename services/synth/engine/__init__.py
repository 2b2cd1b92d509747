"""The synthesis engine: Dia with continuous batching, in parts that each own one thing.

Shaped as vLLM's v1 engine (its scheduler decides, its runner steps the
model, its sampler samples, its output processor turns tokens into results):

* core.py — the engine: requests in and results out on the event loop, the
  step loop that asks the scheduler, runs the runner in the one thread that
  owns the model, and hands what ended to the output processor;
* scheduler.py — policy only (no torch): admission and the bounded queue,
  account turns, lanes, the frame budget, retries after a failed step;
* runner.py — batch state: each lane's rows, slots and outputs, the step
  (kv_cache.py: the slot-resident key/value cache; model_step.py: the
  decoder's maths for one frame);
* sampler.py — the one home of Dia's sampling rules: guidance, end of audio,
  masking, temperature, top-p, per-row generators;
* output_processor.py — codes into audio: the codec, streamed chunks
  (streaming.py), tempo (tempo.py);
* prompts.py — a request's text and voice prompt into a row (the prompt cache);
* request.py — what a request and its result are; model.py — loading Dia.

pyproject.toml's import contracts keep the layers apart: the runner knows no
scheduler, the scheduler no torch.
"""
