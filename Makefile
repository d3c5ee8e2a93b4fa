# Developer entry points. The README's two commands are `make run` and `make test`.
.PHONY: run test kafka-start kafka-stop fmt lint build release

## Run the service with the embedded (in-memory) Kafka: nothing to install.
run:
	cargo run --release -- --embedded-kafka

## The whole test suite, against a real Kafka that this starts (scripts/kafka.sh).
test:
	scripts/test.sh

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

build:
	cargo build --locked

release:
	cargo build --release --locked
