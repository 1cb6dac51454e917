#!/usr/bin/env python3
"""Crash cycles: a pipelined idempotent librdkafka producer against a broker that is
SIGKILLed at random moments, over and over; after every restart, everything the
producer was told is stored must be there, at its offset, exactly once.

Each cycle starts the broker on the same data dir and port and produces small keyed
messages to a multi-partition topic at full speed (confluent-kafka, librdkafka: acks=all,
idempotence on, 5 requests in flight, linger.ms=2 and batch.size 1 MB unless told
otherwise). Then the broker is killed: half the cycles mid-stream, at a random moment
of the produce run, and half at rest (the producer flushed, the broker idle for a
while). After the restart the producer, which lives on
across cycles as an application's would, delivers what it still holds (its retries must
not duplicate what the killed broker had written), and the new part of every partition is
read back and checked:

- acked: every message whose delivery report said stored is in the log at the reported
  partition and offset (else it is counted as lost);
- duplicated: no message (each carries a unique sequence number) is in the log twice;
- offline: every partition answers metadata and fetches without an error, and the broker
  log has no "offline" line;
- the log never shrinks below what an earlier cycle read.

At the end the whole topic is read once more and checked again. Prints one summary line,
`cycles=N acked=A lost=L duplicated=D offline=O ...`, and exits 1 if L, D or O is not 0.

    tools/crash-cycles.py --broker target/release/sluice --io buffered --cycles 100

Needs confluent-kafka (tests/requirements.txt).
"""

import argparse
import array
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "crash-cycles"
# What the broker logs when a partition cannot be opened.
OFFLINE_LINE = re.compile(r"partition offline|stays offline|rebuilding producer state failed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """The sluice broker on a fixed port and data dir, restarted after every kill."""

    def __init__(self, binary, data_dir, port, io, cores, log_dir):
        self.binary, self.data_dir, self.port, self.io, self.cores = binary, data_dir, port, io, cores
        self.log_dir = log_dir
        self.process = None
        self.starts = 0
        self.log_path = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.starts += 1
        self.log_path = os.path.join(self.log_dir, f"broker-{self.starts}.log")
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [self.binary, "serve", "--listen", self.address, "--data-dir", self.data_dir,
             "--io", self.io, "--cores", str(self.cores)],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, SLUICE_LOG="info"))
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited at start:\n{self.log()}")
            if "shard ready" in self.log() and self.accepts():
                return
            time.sleep(0.05)
        raise RuntimeError(f"broker did not start within 60 s:\n{self.log()}")

    def accepts(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class Ledger:
    """What the producer was told (acked), and what the log holds (read back)."""

    def __init__(self, partitions):
        self.acked = []  # (partition, offset, seq), in the order reports came
        self.acked_checked = 0
        self.delivery_failures = 0
        self.fatal = None
        # Per partition, the seq at every offset read back so far.
        self.log = [array.array("q") for _ in range(partitions)]
        self.seen = bytearray()
        self.lost = 0
        self.duplicated = 0
        self.offline = 0
        self.shrunk = 0
        self.lock = threading.Lock()

    def on_delivery(self, error, message):
        if error is not None:
            with self.lock:
                self.delivery_failures += 1
                if error.fatal():
                    self.fatal = str(error)
            return
        seq = struct.unpack(">q", message.value()[:8])[0]
        with self.lock:
            self.acked.append((message.partition(), message.offset(), seq))

    def mark_seen(self, seq):
        if seq >= len(self.seen):
            self.seen.extend(bytes(max(seq + 1 - len(self.seen), 1 << 20)))
        if self.seen[seq]:
            self.duplicated += 1
        self.seen[seq] = 1


def read_partition(address, partition, start, end, errors):
    """Every message of `partition` in [start, end) as (offset, seq)."""
    if start >= end:
        return []
    consumer = Consumer({"bootstrap.servers": address, "group.id": "crash-cycles-check",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.max.bytes": 16 << 20, "max.partition.fetch.bytes": 4 << 20})
    consumer.assign([TopicPartition(TOPIC, partition, start)])
    out = []
    deadline = time.time() + 120
    next_offset = start
    while next_offset < end and time.time() < deadline:
        for message in consumer.consume(num_messages=10000, timeout=1.0):
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(f"partition {partition}: {message.error()}")
                continue
            if message.offset() >= end:
                continue
            out.append((message.offset(), struct.unpack(">q", message.value()[:8])[0]))
            next_offset = message.offset() + 1
    consumer.close()
    if next_offset < end:
        errors.append(f"partition {partition}: read stopped at {next_offset} of {end}")
    return out


def check(broker, ledger, partitions, full=False):
    """Reads the new part of every partition (all of it when `full`) and checks it
    against the ledger. Returns the problems found."""
    problems = []
    probe = Consumer({"bootstrap.servers": broker.address, "group.id": "crash-cycles-check"})
    metadata = AdminClient({"bootstrap.servers": broker.address}).list_topics(TOPIC, timeout=30)
    topic = metadata.topics.get(TOPIC)
    for partition in range(partitions):
        meta = topic.partitions.get(partition) if topic else None
        if meta is None or meta.error is not None:
            ledger.offline += 1
            problems.append(f"partition {partition} in metadata: {meta.error if meta else 'missing'}")
    if OFFLINE_LINE.search(broker.log()):
        ledger.offline += 1
        problems.append("the broker log reports an offline partition")
    if full:
        ledger.lost = ledger.duplicated = 0
        ledger.seen = bytearray(len(ledger.seen))
        ledger.log = [array.array("q") for _ in range(partitions)]
    for partition in range(partitions):
        try:
            _, high = probe.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=30)
        except KafkaException as error:
            ledger.offline += 1
            problems.append(f"partition {partition}: {error}")
            continue
        known = ledger.log[partition]
        if high < len(known):
            ledger.shrunk += 1
            problems.append(f"partition {partition} ends at {high}, below {len(known)} read before")
        errors = []
        for offset, seq in read_partition(broker.address, partition, len(known), high, errors):
            if offset != len(known):
                problems.append(f"partition {partition}: offset {offset} where {len(known)} was next")
                break
            known.append(seq)
            ledger.mark_seen(seq)
        if errors:
            ledger.offline += 1
            problems.extend(errors)
    probe.close()
    with ledger.lock:
        start = 0 if full else ledger.acked_checked
        reports = ledger.acked[start:]
        ledger.acked_checked = len(ledger.acked)
    for partition, offset, seq in reports:
        known = ledger.log[partition]
        if offset >= len(known) or known[offset] != seq:
            ledger.lost += 1
            if ledger.lost <= 5:
                found = known[offset] if offset < len(known) else "nothing"
                problems.append(f"acked seq {seq} at {partition}:{offset} lost (found {found})")
    return problems


def produce(producer, ledger, next_seq, stop_at, value_bytes, partitions, rng):
    """Produces keyed messages as fast as the producer takes them until `stop_at`."""
    padding = bytes(value_bytes - 8)
    while time.time() < stop_at and ledger.fatal is None:
        for _ in range(1000):
            key = b"key-%d" % rng.randrange(partitions * 64)
            try:
                producer.produce(TOPIC, key=key, value=struct.pack(">q", next_seq) + padding,
                                 on_delivery=ledger.on_delivery)
            except BufferError:
                producer.poll(0.05)
                break
            next_seq += 1
        producer.poll(0)
    return next_seq


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="target/release/sluice", help="the sluice binary")
    parser.add_argument("--io", choices=["buffered", "direct"], default="buffered")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--cores", type=int, default=1, help="broker shards")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="longest produce run per cycle (the kill comes at a random moment of it)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch-bytes", type=int, default=1000000,
                        help="the producer's batch.size (librdkafka's default)")
    parser.add_argument("--linger-ms", type=float, default=2.0, help="the producer's linger.ms")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)

    with tempfile.TemporaryDirectory(prefix="crash-cycles-") as scratch:
        data_dir = args.data_dir or os.path.join(scratch, "data")
        broker = Broker(os.path.abspath(args.broker), data_dir, free_port(), args.io, args.cores, scratch)
        try:
            run_cycles(args, rng, seed, broker)
        finally:
            if broker.process and broker.process.poll() is None:
                broker.kill()


def run_cycles(args, rng, seed, broker):
    """The cycles, the final check and the summary; exits with the verdict."""
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.address})
    for future in admin.create_topics([NewTopic(TOPIC, args.partitions, 1)]).values():
        future.result(30)
    ledger = Ledger(args.partitions)
    producer = Producer({
        "bootstrap.servers": broker.address, "enable.idempotence": True, "acks": "all",
        "linger.ms": args.linger_ms, "batch.size": args.batch_bytes,
        "max.in.flight.requests.per.connection": 5,
        "message.timeout.ms": 180000, "queue.buffering.max.messages": 1000000,
        "reconnect.backoff.max.ms": 200, "log_level": 3,
        "error_cb": lambda error: setattr(ledger, "fatal", str(error)) if error.fatal() else None,
    })
    next_seq = 0
    failed = []
    started = time.time()
    for cycle in range(1, args.cycles + 1):
        at_rest = cycle % 2 == 0
        run = rng.uniform(0.2, args.seconds)
        if at_rest:
            next_seq = produce(producer, ledger, next_seq, time.time() + run, args.value_bytes,
                               args.partitions, rng)
            producer.flush(120)
            time.sleep(rng.uniform(0.5, 2.0))
            broker.kill()
        else:
            killer = threading.Timer(rng.uniform(0.05, run), broker.kill)
            killer.start()
            next_seq = produce(producer, ledger, next_seq, time.time() + run, args.value_bytes,
                               args.partitions, rng)
            killer.join()
        broker.start()
        remaining = producer.flush(120)
        problems = check(broker, ledger, args.partitions)
        if remaining:
            problems.append(f"{remaining} messages still undelivered 120 s after the restart")
        if ledger.fatal:
            problems.append(f"the producer failed: {ledger.fatal}")
        kind = "at rest" if at_rest else "mid-stream"
        print(f"cycle {cycle} ({kind}): produced {next_seq} acked {len(ledger.acked)} "
              f"log {sum(len(p) for p in ledger.log)} lost {ledger.lost} "
              f"duplicated {ledger.duplicated} offline {ledger.offline}", flush=True)
        if problems:
            failed.append(cycle)
            for problem in problems:
                print(f"  cycle {cycle}: {problem}", flush=True)
            if ledger.fatal or ledger.offline:
                alarms = [line for line in broker.log().splitlines() if "ERROR" in line or "WARN" in line]
                print("\n".join(alarms[-20:]), flush=True)
                break
    problems = check(broker, ledger, args.partitions, full=True)
    for problem in problems:
        print(f"  final check: {problem}", flush=True)
    broker.stop()
    print(f"cycles={cycle} acked={len(ledger.acked)} lost={ledger.lost} "
          f"duplicated={ledger.duplicated} offline={ledger.offline} shrunk={ledger.shrunk} "
          f"produced={next_seq} delivery_failures={ledger.delivery_failures} io={args.io} "
          f"seed={seed} seconds={time.time() - started:.0f}", flush=True)
    bad = ledger.lost or ledger.duplicated or ledger.offline or ledger.shrunk or ledger.fatal or problems
    sys.exit(1 if bad or failed else 0)


if __name__ == "__main__":
    main()
