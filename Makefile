# voicemesh: `make run` starts the whole mesh, `make test` runs the whole suite.
# Both create the virtual environment and the generated protobuf code first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(shell find protos -name '*.proto')

.PHONY: run test fuzz protos key bench bench-fullsize tiny-models smoke-fullsize images promtool clean

run: $(VENV)/.installed gen/.stamp
	$(PY) -m tools.mesh

test: $(VENV)/.installed gen/.stamp var/buf/.installed promtool /usr/bin/chromium
	$(VENV)/bin/pytest

# A long fuzzing run of the HTTP API: over 10,000 requests, a new seed each time
# (`make test` runs a short one with a fixed seed); see tests/gateway/test_fuzz.py.
fuzz: $(VENV)/.installed gen/.stamp
	FUZZ_EXAMPLES=1000 FUZZ_SEED= FUZZ_ECHO=1 FUZZ_TIMEOUT_SECONDS=5400 $(VENV)/bin/pytest tests/gateway/test_fuzz.py -q -s -p no:cacheprovider

protos: $(VENV)/.requirements
	$(PY) tools/gen_protos.py && touch gen/.stamp

# Creates the account if needed and prints a new API key as the last line
# (every scope but admin, or SCOPES=a,b: SCOPES=admin makes an operator's key).
key: $(VENV)/.installed gen/.stamp
	$(PY) -m tools.make_key $(ACCOUNT) $(if $(SCOPES),--scopes $(SCOPES))

# A tiny random-weight Dia and codec under var/models/tiny-random: DIA_MODEL=tiny-random make run.
tiny-models: $(VENV)/.installed
	$(PY) -m services.synth.tiny_models

# The synth on the full-size Dia architecture with random weights (var/fullsize, built once):
# load time, memory, seconds a frame, audio length and rate. Minutes and ~8 GB; not in make test.
smoke-fullsize: $(VENV)/.installed gen/.stamp
	$(PY) -m tools.smoke_fullsize

bench: $(VENV)/.installed gen/.stamp
	-$(PY) bench/transcode_bench.py
	$(PY) bench/synth_batching_bench.py
	$(PY) bench/synth_engine_bench.py
	$(PY) bench/decoder_cache_bench.py
	$(MAKE) bench-fullsize
	bench/gpu.sh
	$(PY) bench/mesh_overhead_bench.py
	$(PY) bench/voice_affinity_bench.py
	$(PY) bench/upload_memory_bench.py
	$(PY) bench/load_bench.py
	$(PY) bench/streaming_bench.py
	$(PY) bench/tracing_bench.py
	$(PY) bench/object_store_bench.py
	$(PY) bench/audio_storage_bench.py
	$(PY) bench/analysis_bench.py

# The full-size Dia (random weights) on the CPU: 8 concurrent requests against one at a time through
# synth's engine, beside transformers' generate, in float32 and in bfloat16. ~8 GB and ~10 minutes.
bench-fullsize: $(VENV)/.installed gen/.stamp
	$(PY) bench/fullsize_bench.py --device cpu --concurrency 1,8 --steps 24 --rounds 2 --compare-generate
	$(PY) bench/fullsize_bench.py --device cpu --dtype bfloat16 --concurrency 1,8 --steps 24 --rounds 2

# The pinned dependencies (requirements.txt), then gen/, then the project itself,
# editable (pyproject.toml): runtime, services, tools and the generated voice
# package then import from anywhere in .venv, and from gen/ as it is made again.
$(VENV)/.requirements: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.requirements pyproject.toml | gen/.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

gen/.stamp: $(VENV)/.requirements $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	touch $@

# buf (protobuf linter) for the contract tests; the suite skips that test where npm is missing.
var/buf/.installed:
	-mkdir -p var/buf && npm install --silent --no-audit --no-fund --prefix var/buf @bufbuild/buf@1.75.0 && touch $@

# Every container image (deploy/docker/Dockerfile) with docker, podman, buildah or nerdctl:
# `make images TAG=dev`; REGISTRY=registry.example.com/voicemesh TAG=1.2.0 PUSH=1 make images.
# deploy/docker/build-images.sh --dry-run prints the builds without running them.
images:
	deploy/docker/build-images.sh

# promtool (Debian's prometheus package) checks and unit-tests the alert rules
# (tests/deploy/test_monitoring.py; skipped where it cannot be installed).
# Waits for a dpkg lock another install holds.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  APT="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq"; \
	  $$APT install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	    { $$APT update && $$APT install -y --no-install-recommends prometheus >/dev/null; }; \
	} || echo "promtool could not be installed: the alert-rule checks will be skipped"

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; its own
# browser download cannot work offline). Waits for a dpkg lock another install holds.
/usr/bin/chromium:
	-apt-get -o DPkg::Lock::Timeout=300 install -y chromium || \
	  (apt-get update && apt-get -o DPkg::Lock::Timeout=300 install -y chromium)

clean:
	rm -rf gen var .pytest_cache
