# Layer gateway tasks. `just --list` shows them.

# Run the gateway on the embedded default (starts the local store itself; no Turbopuffer account needed).
run port="8080" workers="2":
    python -m gateway serve --host 127.0.0.1 --port {{port}} --workers {{workers}}

# Run the local Turbopuffer-compatible store alone.
localstore port="9090" data="./.layer/localstore":
    python -m localstore serve --host 127.0.0.1 --port {{port}} --data-dir {{data}}

# The whole test suite (pyproject's testpaths), or the paths and options given.
test *args:
    python -m pytest {{args}}

# Benchmarks with budgets (exits non-zero when a budget in bench/budgets.toml is broken).
bench *args:
    python -m bench.run {{args}}

# Every benchmark scenario, briefly, asserting only that it works (CI).
bench-smoke:
    python -m bench.run --smoke

lint:
    ruff check gateway localstore tests bench

# Regenerate the Python, TypeScript and Go clients from openapi.yaml (byte-identical on a second run).
sdk:
    python sdk/generate.py

# Fail when the committed clients differ from what openapi.yaml generates (CI).
sdk-check:
    python sdk/generate.py --check

# The three client suites (shared scenarios against a recording fake, live against the real gateway).
sdk-test:
    python -m pytest clients/python/tests
    cd clients/go && GOPROXY=off go vet ./... && GOPROXY=off go test -count=1 ./...
    cd clients/ts && (test -d node_modules || npm ci --no-audit --no-fund) && npm test

# schemathesis against a real gateway in embedded mode; CI runs `just fuzz --max-examples 50 --seed 1`.
fuzz *args="--max-time 600":
    python sdk/fuzz.py {{args}}
