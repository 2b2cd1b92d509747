"""The hosted predictor's prediction API as a dialect of the generation API.

* ``inputs.py``: the model's input (names, ranges, defaults: the model
  page's) translated into a GenerationSpec, and its OpenAPI schema;
* ``predictions.py``: PredictionService, predictions as background
  generation jobs in the predictor's shape, with its event stream;
* ``files.py``: FileService, the input files its client uploads;
* ``webhooks.py``: WebhookService and the deliveries' payload;
* ``models.py``: models and versions in its shape.
"""
