# The two set-up commands: `make demo` and `make test` (as root, on Debian/Ubuntu).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Machine packages the sandbox and the tests use (Node and npm only where the machine has none; npm and xz
# build the sandbox's Node.js mirror; gpg keeps only the pinned Ubuntu archive key; pebble and openssl are each
# instance's ACME CA).
APT_PACKAGES := debootstrap systemd-container nftables iproute2 openssh-client ca-certificates curl xz-utils gpg \
	pebble openssl apt-cacher-ng

.PHONY: deps demo demo-nextjs nextjs demo-down test unit clean bench bench-quick

deps: $(BIN)/.installed

# nginx is only for `ssedeploy check` (nginx -t on a rendered tree): policy-rc.d keeps
# its package from starting a server on this machine.
$(BIN)/.installed: pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	dpkg -s nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  echo "installing machine packages:$$missing"; \
	  apt-get update -qq; \
	  made_policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; status=$$?; \
	  [ -n "$$made_policy" ] && rm -f /usr/sbin/policy-rc.d; [ $$status -eq 0 ]; \
	fi
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import ssedeploy, pyinfra, testinfra, hypothesis, gixy" && touch $@

demo: deps
	$(BIN)/ssedeploy sandbox up --name demo
	SSEDEPLOY_SANDBOX=demo $(BIN)/pyinfra -y inventories/sandbox.py deploy.py
	@read -r addr site roots < <($(BIN)/ssedeploy sandbox status --name demo --json | $(BIN)/python -c \
	  'import json,sys; h=json.load(sys.stdin)[0]; print(h["address"], h["acme_site"], h["acme_roots"])'); \
	echo; echo "The demo host is up, serving HTTPS (HTTP/2) with a certificate from the sandbox's own ACME CA:"; \
	echo "  https://$$site/ ($$site is $$addr; plain HTTP redirects there)"; \
	echo "Watch events stream through nginx, one per second (trusting that CA's root):"; \
	echo "  curl -N --cacert $$roots --resolve $$site:443:$$addr https://$$site/api/stream"; \
	echo "Shell on the host: $(BIN)/ssedeploy sandbox ssh --name demo"; \
	echo "Tear it down:      make demo-down"

# The real Next.js 16 example: built on this machine with an official LTS Node from the sandbox's mirror
# (`ssedeploy sandbox node`; this machine's npm runs on it, with its own registry config), then deployed.
nextjs: deps
	bin=$$($(BIN)/ssedeploy sandbox node) && cd examples/nextjs-sse && export PATH="$$bin:$$PATH" \
	  && NEXT_TELEMETRY_DISABLED=1 npm ci --no-audit --no-fund --loglevel=error \
	  && NEXT_TELEMETRY_DISABLED=1 npx next build

demo-nextjs: nextjs
	$(BIN)/ssedeploy sandbox up --name demo
	SSEDEPLOY_SANDBOX=demo $(BIN)/pyinfra -y inventories/sandbox_nextjs.py deploy.py
	@read -r addr site roots < <($(BIN)/ssedeploy sandbox status --name demo --json | $(BIN)/python -c \
	  'import json,sys; h=json.load(sys.stdin)[0]; print(h["address"], h["acme_site"], h["acme_roots"])'); \
	echo "The Next.js example streams at https://$$site/api/stream:"; \
	echo "  curl -N --cacert $$roots --resolve $$site:443:$$addr https://$$site/api/stream"

demo-down: deps
	$(BIN)/ssedeploy sandbox down --name demo

test: deps nextjs
	$(BIN)/pytest

unit: deps
	$(BIN)/pytest tests/unit

# Benchmarks (bench/): capacity and latency of active SSE streams (5 run series), idle streams' memory, fleet deploy
# speed (1, 5, 20 hosts), what a release costs the streams, what a rolling release across a cluster costs them.
# Each boots its own sandbox instances (bench, benchi, benchf, benchr, benchc) and tears them down; missed targets
# print FAIL but never fail the command. The quick run leaves out the two release benchmarks (their first deploys
# alone would take most of its 5 minutes); only the full run writes its tables into README.md, the quick one
# writes docs/benchmarks/*-quick.*.
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test,bench]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import matplotlib" && touch $@

bench: deps $(BIN)/.bench-installed
	status=0; $(BIN)/python -m bench.capacity || status=1; $(BIN)/python -m bench.idle || status=1; \
	$(BIN)/python -m bench.fleet || status=1; $(BIN)/python -m bench.release_cost || status=1; \
	$(BIN)/python -m bench.rolling || status=1; exit $$status

bench-quick: deps $(BIN)/.bench-installed
	status=0; $(BIN)/python -m bench.capacity --quick || status=1; $(BIN)/python -m bench.idle --quick || status=1; \
	$(BIN)/python -m bench.fleet --quick || status=1; exit $$status

clean: demo-down
	rm -rf $(VENV) .sandbox
