.PHONY: demo test lint bench

# Start a local guarded demo server (127.0.0.1:8008) and print the admin's credentials.
demo:
	scripts/demo

# Run every test (lint, types, unit and integration suites on each supported Synapse).
test:
	scripts/test

lint:
	scripts/test -e lint,types

bench:
	scripts/bench
