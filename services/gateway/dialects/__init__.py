"""Other APIs' dialects of the generation API, each a translator in a package of its own.

A dialect maps its wire format (names, ranges, defaults, shapes) to the
canonical generation (voice.gateway.v1.GenerationSpec, run by
generation/pipeline.py) and back, and nothing more: it imports the
generation domain, never another dialect (an import-linter contract).

* ``openai``: OpenAI's speech API (POST /v1/audio/speech, GET /v1/audio/voices);
* ``predictor``: the hosted predictor's API that the ``replicate`` client
  speaks (predictions, files, webhooks, models in its shape).
"""
