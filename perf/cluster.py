#!/usr/bin/env python3
"""Measures the cluster's control plane on three local brokers (one process each,
--cores 1, every one a voter of the controller quorum):

  failover    SIGKILL of the broker leading a partition, to a new leader of it in the
              Metadata answer of another broker (repeated; the killed broker restarts
              between rounds); the target is under broker.session.timeout.ms + 1 s
  controller  SIGKILL of the active controller's process, to the next CreateTopics
              answered without error through another broker (repeated)
  partitions  one CreateTopics of N partitions with replication factor 3: time to the
              answer, time until every broker's Metadata shows them all led, and each
              broker's resident memory per partition replica (VmRSS before and after)

Usage: perf/cluster.py [--sluice target/release/sluice] [--rounds 5] [--partitions 10000]
                       [--session-timeout-ms 9000] [--only failover,controller,partitions]
Needs kafka-python (tests/requirements.txt). Prints one line per measurement and a
summary (min / median / max).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, base, node_id, port, controller_port, voters, session_ms):
        self.binary, self.node_id, self.port = binary, node_id, port
        self.dir = os.path.join(base, f"node-{node_id}")
        self.log = os.path.join(base, f"node-{node_id}.log")
        self.args = [
            binary, "serve", "--cores", "1", "--data-dir", self.dir,
            "--listen", f"127.0.0.1:{port}",
            "--set", f"node.id={node_id}",
            "--set", "process.roles=broker,controller",
            "--set", f"listeners=CONTROLLER://127.0.0.1:{controller_port}",
            "--set", "controller.listener.names=CONTROLLER",
            "--set", f"controller.quorum.voters={voters}",
            "--set", f"broker.session.timeout.ms={session_ms}",
        ]
        self.proc = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        # The log is appended across restarts: what this run wrote starts here.
        self.log_offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        log = open(self.log, "a")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, NO_COLOR="1"))

    def wait_listening(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"node {self.node_id} exited; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"node {self.node_id} did not listen; see {self.log}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def admin(address):
    return KafkaAdminClient(bootstrap_servers=address, request_timeout_ms=600_000)


def leaders(address, topic):
    """partition -> leader id, from one Metadata v1 request to exactly this broker (a
    client library would pick any broker it knows, the dead one included)."""
    host, port = address.rsplit(":", 1)
    name = topic.encode()
    body = struct.pack(">i", 1) + struct.pack(">h", len(name)) + name
    client_id = b"perf"
    header = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id
    request = header + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", read_exact(sock, 4))[0]
        data = read_exact(sock, size)
    at = 4  # correlation id
    def take(fmt):
        nonlocal at
        values = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return values[0]
    def string():
        nonlocal at
        length = take(">h")
        text = data[at:at + max(length, 0)]
        at += max(length, 0)
        return text
    for _ in range(take(">i")):  # brokers: id, host, port, rack
        take(">i"); string(); take(">i"); string()
    take(">i")  # controller id
    result = {}
    for _ in range(take(">i")):
        take(">h"); string(); take(">b")  # error, name, internal
        for _ in range(take(">i")):
            take(">h")
            index, leader = take(">i"), take(">i")
            for _ in range(take(">i")):
                take(">i")
            for _ in range(take(">i")):
                take(">i")
            result[index] = leader
    return result


def read_exact(sock, count):
    chunks = b""
    while len(chunks) < count:
        chunk = sock.recv(count - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return chunks


def summary(name, values, unit):
    values = sorted(values)
    print(f"{name}: min {values[0]:.3f} {unit}, median {statistics.median(values):.3f} {unit}, "
          f"max {values[-1]:.3f} {unit} ({len(values)} rounds)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", default="target/release/sluice")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=10_000)
    parser.add_argument("--session-timeout-ms", type=int, default=9_000)
    parser.add_argument("--only", default="failover,controller,partitions")
    args = parser.parse_args()
    only = set(args.only.split(","))
    base = tempfile.mkdtemp(prefix="sluice-cluster-")
    ports = [(free_port(), free_port()) for _ in range(3)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
    nodes = [Node(args.sluice, base, i + 1, p, c, voters, args.session_timeout_ms)
             for i, (p, c) in enumerate(ports)]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_listening()
        by_id = {node.node_id: node for node in nodes}

        if "failover" in only:
            times = []
            for round_ in range(args.rounds):
                # A new topic each round: its ISR holds all three (until replication,
                # a restarted broker does not rejoin the ISRs it left).
                topic = f"failover-{round_}"
                client = admin(nodes[0].address)
                client.create_topics([NewTopic(topic, 6, 3)])
                client.close()
                before = leaders(nodes[0].address, topic)
                victim = by_id[before[0]]
                other = next(n for n in nodes if n is not victim)
                killed = time.monotonic()
                victim.kill()
                while True:
                    now = leaders(other.address, topic)
                    if now.get(0, -1) not in (-1, victim.node_id):
                        break
                    time.sleep(0.02)
                elapsed = time.monotonic() - killed
                times.append(elapsed)
                print(f"failover round {round_}: broker {victim.node_id} killed, partition 0 "
                      f"led by {now[0]} after {elapsed:.3f} s", flush=True)
                victim.start()
                victim.wait_listening()
                time.sleep(1)
            summary("failover (SIGKILL to new leader in Metadata)", times, "s")

        if "controller" in only:
            times = []
            for round_ in range(args.rounds):
                # Which node is active: DescribeQuorum is not in kafka-python; the log says.
                active = None
                for node in nodes:
                    with open(node.log) as log:
                        log.seek(node.log_offset)
                        lines = [l for l in log if "active controller" in l]
                    if lines and "no longer" not in lines[-1]:
                        active = node
                if active is None:
                    sys.exit("no active controller found in the logs")
                other = next(n for n in nodes if n is not active)
                killed = time.monotonic()
                active.kill()
                name = f"after-controller-{round_}"
                while True:
                    try:
                        # kafka-python raises on an error in the answer.
                        client = admin(other.address)
                        client.create_topics([NewTopic(name, 1, 1)])
                        client.close()
                        break
                    except KafkaError:
                        pass
                    time.sleep(0.02)
                elapsed = time.monotonic() - killed
                times.append(elapsed)
                print(f"controller round {round_}: node {active.node_id} killed, topic created "
                      f"after {elapsed:.3f} s", flush=True)
                active.start()
                active.wait_listening()
                time.sleep(1)
            summary("controller failover (SIGKILL to a CreateTopics answered)", times, "s")

        if "partitions" in only:
            rss_before = [n.rss_kib() for n in nodes]
            started = time.monotonic()
            client = admin(nodes[0].address)
            # kafka-python raises on an error in the answer.
            client.create_topics([NewTopic("many", args.partitions, 3)], timeout_ms=600_000)
            client.close()
            answered = time.monotonic() - started
            for node in nodes:
                while True:
                    led = leaders(node.address, "many")
                    if len(led) == args.partitions and all(l >= 0 for l in led.values()):
                        break
                    time.sleep(0.2)
            everywhere = time.monotonic() - started
            rss_after = [n.rss_kib() for n in nodes]
            per_replica = [(a - b) * 1024 / args.partitions for a, b in zip(rss_after, rss_before)]
            print(f"partitions: {args.partitions} partitions x 3 replicas; CreateTopics answered "
                  f"in {answered:.2f} s, led on every broker's Metadata after {everywhere:.2f} s; "
                  f"resident memory per replica: "
                  + ", ".join(f"node {n.node_id} {r:.0f} B" for n, r in zip(nodes, per_replica)),
                  flush=True)
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
