.PHONY: demo test lint bench

# Start a local guarded demo server (127.0.0.1:8008) and print where the admin's password is.
demo:
	scripts/demo

# Run every test (lint, types, unit and integration suites on each supported Synapse).
# Arguments go to tox: make test ARGS="-e py-synapse1163 -- tests/unit -k network"
test:
	scripts/test $(ARGS)

lint:
	scripts/test -e lint,types

# Measure (not test): the network decision and the end-to-end cost of the guard.
bench:
	scripts/bench $(ARGS)
