"""The spans of one request through synth's engine (runtime/tracing.py), one phase at a time:

``synth.queue`` (waiting for a row), ``synth.prefill`` (the step it joined in: its prompt prepared
and prefilled), ``synth.decode`` (every later step, as one span: the step count and the batch sizes
are attributes, not a span each), ``synth.codec`` (its codes decoded to audio). Each is a child of
the request's RPC span. The engine calls these on the event loop; with tracing off it makes none.
"""

from __future__ import annotations

from opentelemetry import context as otel_context

from runtime import tracing


class JobSpans:
    def __init__(self) -> None:
        self.parent = otel_context.get_current()  # the RPC's span, whichever task ends a phase
        self.phase = "synth.queue"  # kept here: a span not sampled has no name to read back
        self.current = tracing.start(self.phase, parent=self.parent)
        self.steps = 0
        self.batch_least = self.batch_most = self.batch_sum = 0

    def _phase(self, name: str) -> None:
        self._end()
        self.phase = name
        self.current = tracing.start(name, parent=self.parent)

    def _end(self, error: BaseException | str | None = None) -> None:
        if self.current is None:
            return
        if self.steps and self.current.is_recording():
            self.current.set_attributes(
                {
                    "synth.steps": self.steps,
                    "synth.batch_size.min": self.batch_least,
                    "synth.batch_size.max": self.batch_most,
                    "synth.batch_size.mean": round(self.batch_sum / self.steps, 2),
                }
            )
            self.steps = self.batch_least = self.batch_most = self.batch_sum = 0
        if error is not None:
            tracing.failed(self.current, error)
        self.current.end()
        self.current = None
        self.phase = ""

    def joining(self) -> None:
        """It joins a batch in the next step (again, after a failed step: its last take ends failed)."""
        if self.phase not in ("synth.queue", ""):
            self._end("step_failed")
        self._phase("synth.prefill")

    def stepped(self, batch: int) -> None:
        """A step it was in, of `batch` rows; the step it joined in ends its prefill."""
        if self.phase == "synth.prefill":
            self._phase("synth.decode")
            return
        self.steps += 1
        self.batch_sum += batch
        self.batch_most = max(self.batch_most, batch)
        self.batch_least = min(self.batch_least, batch) if self.batch_least else batch

    def decoding(self) -> None:
        self._phase("synth.codec")

    def ended(self, error: BaseException | str | None = None) -> None:
        self._end(error)
