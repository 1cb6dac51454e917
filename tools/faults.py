#!/usr/bin/env python3
"""Fault rounds against a three-broker cluster, each broker a host of its own.

Every broker runs in a network namespace of its own (`ip netns`, a veth pair into a
bridge in the caller's namespace), so faults hit one host's network as they would on a
real network. The client (confluent-kafka, librdkafka: an idempotent acks=all producer, 5
requests in flight) runs in the caller's namespace and streams uniquely numbered messages
to a topic with replication factor 3 and min.insync.replicas 2 through all the rounds.
Each round picks a fault at random (seeded) and holds it for a few seconds:

- kill:      SIGKILL one broker, restart it after the hold;
- pause:     SIGSTOP one broker (a process or disk that stalls), SIGCONT after the hold;
- partition: iptables DROP between one broker and the other two (the client still
             reaches it): a leader cut off from the quorum and its followers;
- isolate:   one broker's link down (nobody reaches it, it reaches nobody);
- flap:      one broker's link down and up every 300 ms for the hold;
- delay:     100-300 ms added to everything between one broker and the others;
- loss:      connections between one broker and the others cut at random (each chunk
             passed has a 2% chance to reset its connection), as a lossy link's timeouts.

Then the fault heals and the round waits until every partition has a leader and a full
ISR again. At the end the producer flushes, the brokers stop, and the invariants are
checked: every acknowledged message is in the log at its acknowledged partition and
offset (lost = 0), no message is in a log twice (duplicated = 0), offsets are dense, and
the three replicas of every partition agree byte for byte up to the shortest
(diverged = 0). Prints `rounds=N ... lost=L duplicated=D diverged=V gaps=G` and exits 1
unless all are 0.

Delay and loss come from a user-space TCP proxy (the kernel here has no `tc netem`): in
each broker's namespace an iptables DNAT rule sends its connections to the other brokers'
ports (client and controller listeners) to the proxy in the caller's namespace, which
connects on to the real broker and relays, delaying or cutting what the fault says.
Clients reach the brokers directly.

    tools/faults.py --broker target/release/sluice --rounds 20 --seed 7

Needs root (namespaces, iptables; installs iptables with apt when missing), and
confluent-kafka (tests/requirements.txt).
"""

import argparse
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "faults"
PARTITIONS = 6
FAULTS = ["kill", "pause", "partition", "isolate", "flap", "delay", "loss"]
BROKER_PORTS = (9092, 9093)


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Network:
    """A bridge in this namespace and one namespace per broker, on a /24 of its own."""

    def __init__(self, count):
        tag = os.getpid() % 10000
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.bridge = f"sfb{tag}"
        self.namespaces = [f"sf{tag}n{i}" for i in range(1, count + 1)]
        self.links = [f"sf{tag}v{i}" for i in range(1, count + 1)]
        self.addresses = [f"{self.subnet}.{10 + i}" for i in range(1, count + 1)]

    def up(self):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for ns, link, address in zip(self.namespaces, self.links, self.addresses):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
            sh("ip", "link", "set", f"{link}p", "netns", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", f"{link}p", "name", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "link", "set", link, "master", self.bridge)
            sh("ip", "link", "set", link, "up")

    def down(self):
        for ns, link in zip(self.namespaces, self.links):
            sh("ip", "link", "del", link, check=False)
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def link(self, index, up):
        sh("ip", "link", "set", self.links[index], "up" if up else "down")

    def cut(self, index):
        """Drops everything between broker `index` and the other brokers."""
        ns = self.namespaces[index]
        for other, address in enumerate(self.addresses):
            if other != index:
                sh("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", address, "-j", "DROP")
                sh("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", address, "-j", "DROP")

    def heal(self, index):
        sh("ip", "netns", "exec", self.namespaces[index], "iptables", "-F", check=False)
        self.link(index, True)


class Proxy:
    """Relays broker-to-broker connections, with the delay or loss of a fault applied to
    the connections of one broker (the victim). One listening port per (broker, port)
    target on the bridge address; threads per connection."""

    def __init__(self, network, seed):
        self.network = network
        self.rng = random.Random(seed)
        self.victim = None
        self.delay = 0.0
        self.loss = 0.0
        self.lock = threading.Lock()
        self.listeners = []
        self.ports = {}  # (target index, target port) -> proxy port
        self.closed = False

    def start(self):
        for index, address in enumerate(self.network.addresses):
            for port in BROKER_PORTS:
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((f"{self.network.subnet}.1", 0))
                listener.listen(128)
                self.ports[(index, port)] = listener.getsockname()[1]
                self.listeners.append(listener)
                threading.Thread(target=self.accept, args=(listener, index, address, port),
                                 daemon=True).start()
        # In each broker's namespace: its connections to another broker go to the proxy.
        for ns_index, ns in enumerate(self.network.namespaces):
            for index, address in enumerate(self.network.addresses):
                if index == ns_index:
                    continue
                for port in BROKER_PORTS:
                    target = f"{self.network.subnet}.1:{self.ports[(index, port)]}"
                    sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                       "-d", address, "--dport", str(port), "-j", "DNAT", "--to-destination", target)

    def set(self, victim=None, delay=0.0, loss=0.0):
        with self.lock:
            self.victim, self.delay, self.loss = victim, delay, loss

    def close(self):
        self.closed = True
        for listener in self.listeners:
            listener.close()

    def accept(self, listener, index, address, port):
        while not self.closed:
            try:
                client, peer = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((address, port), timeout=5)
            except OSError:
                client.close()
                continue
            source = self.network.addresses.index(peer[0]) if peer[0] in self.network.addresses else None
            involved = (source, index)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b, involved), daemon=True).start()

    def pump(self, src, dst, involved):
        try:
            while not self.closed:
                ready, _, _ = select.select([src], [], [], 0.5)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    hit = self.victim is not None and self.victim in involved
                    delay, loss = (self.delay, self.loss) if hit else (0.0, 0.0)
                    cut = loss > 0 and self.rng.random() < loss
                if cut:
                    break
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class Broker:
    def __init__(self, binary, network, index, data_dir, voters):
        self.binary, self.network, self.index = binary, network, index
        self.node = index + 1
        self.address = f"{network.addresses[index]}:9092"
        self.data_dir = os.path.join(data_dir, f"n{self.node}")
        self.log_path = os.path.join(data_dir, f"n{self.node}.log")
        self.voters = voters
        self.process = None

    def start(self):
        host = self.network.addresses[self.index]
        args = [
            "ip", "netns", "exec", self.network.namespaces[self.index], self.binary, "serve",
            "--cores", "1", "--data-dir", self.data_dir, "--listen", self.address,
            "--set", f"node.id={self.node}", "--set", "process.roles=broker,controller",
            "--set", f"listeners=CONTROLLER://{host}:9093",
            "--set", "controller.listener.names=CONTROLLER",
            "--set", f"controller.quorum.voters={self.voters}",
            "--set", "broker.session.timeout.ms=3000", "--set", "broker.heartbeat.interval.ms=500",
            "--set", "replica.lag.time.max.ms=3000", "--set", "reactor.idle.poll.us=0",
        ]
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def signal(self, sig):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self):
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self):
        if self.process:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # seq -> (partition, offset)
        self.failed = 0

    def on_delivery(self, error, message):
        seq = int(message.value()[:12])
        with self.lock:
            if error is None:
                self.acked[seq] = (message.partition(), message.offset())
            else:
                self.failed += 1


def produce(bootstrap, ledger, stop, counter):
    producer = Producer({
        "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
        "max.in.flight.requests.per.connection": 5, "linger.ms": 2,
        "message.timeout.ms": 300000, "request.timeout.ms": 10000,
    })
    seq = 0
    while not stop.is_set():
        value = f"{seq:012d}".encode() + b"x" * 100
        try:
            producer.produce(TOPIC, value=value, key=str(seq).encode(), on_delivery=ledger.on_delivery)
            seq += 1
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
        if seq % 200 == 0:
            time.sleep(0.01)
    remaining = producer.flush(300)
    counter["sent"] = seq
    counter["unflushed"] = remaining


def healthy(bootstrap, count, timeout):
    """Waits until every partition has a leader and a full ISR."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            topic = admin.list_topics(TOPIC, timeout=5).topics[TOPIC]
            parts = topic.partitions.values()
            if len(parts) == PARTITIONS and all(p.leader >= 0 and len(p.isrs) == count for p in parts):
                return True
        except KafkaException:
            pass
        time.sleep(0.2)
    return False


def read_all(bootstrap):
    """Every record of the topic: {partition: [(offset, seq)]}."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "faults-check", "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    ends = {}
    for p in range(PARTITIONS):
        _, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)
        ends[p] = high
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    records = {p: [] for p in range(PARTITIONS)}
    done = {p for p in range(PARTITIONS) if ends[p] == 0}
    deadline = time.time() + 300
    while len(done) < PARTITIONS and time.time() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            if message.error().code() == -191:  # partition EOF
                if message.offset() >= ends[message.partition()]:
                    done.add(message.partition())
            continue
        records[message.partition()].append((message.offset(), int(message.value()[:12])))
        if message.offset() + 1 >= ends[message.partition()]:
            done.add(message.partition())
    consumer.close()
    return records, ends


def segments(data_dir, partition):
    directory = os.path.join(data_dir, f"{TOPIC}-{partition}")
    names = sorted(n for n in os.listdir(directory) if n.endswith(".log"))
    return b"".join(open(os.path.join(directory, n), "rb").read() for n in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="the sluice binary")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--hold", type=float, default=4.0, help="seconds each fault lasts")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("faults.py needs root (network namespaces, iptables)")
    if shutil.which("iptables") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "iptables"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed={seed}", flush=True)

    work = tempfile.mkdtemp(prefix="sluice-faults-")
    network = Network(3)
    brokers = []
    proxy = None
    try:
        network.down()
        network.up()
        proxy = Proxy(network, seed)
        proxy.start()
        voters = ",".join(f"{i + 1}@{a}:9093" for i, a in enumerate(network.addresses))
        brokers = [Broker(args.broker, network, i, work, voters) for i in range(3)]
        for broker in brokers:
            broker.start()
        bootstrap = ",".join(b.address for b in brokers)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        deadline = time.time() + 60
        while True:
            futures = admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, config={"min.insync.replicas": "2"})])
            try:
                futures[TOPIC].result(timeout=15)
                break
            except Exception as error:  # noqa: BLE001 - the cluster may still be forming
                if "already exists" in str(error):
                    break
                if time.time() > deadline:
                    raise
                time.sleep(1)
        if not healthy(bootstrap, 3, 60):
            sys.exit("the cluster did not come up")

        ledger, stop, counter = Ledger(), threading.Event(), {}
        producer = threading.Thread(target=produce, args=(bootstrap, ledger, stop, counter))
        producer.start()
        unhealed = 0
        faults = []
        for round_ in range(args.rounds):
            time.sleep(1 + rng.random())
            fault, victim = rng.choice(FAULTS), rng.randrange(3)
            faults.append(f"{fault}:{victim + 1}")
            started = time.time()
            broker = brokers[victim]
            if fault == "kill":
                broker.kill()
                time.sleep(args.hold)
                broker.start()
            elif fault == "pause":
                broker.signal(signal.SIGSTOP)
                time.sleep(args.hold)
                broker.signal(signal.SIGCONT)
            elif fault == "partition":
                network.cut(victim)
                time.sleep(args.hold)
                network.heal(victim)
            elif fault == "isolate":
                network.link(victim, False)
                time.sleep(args.hold)
                network.link(victim, True)
            elif fault in ("delay", "loss"):
                if fault == "delay":
                    proxy.set(victim, delay=0.1 + 0.2 * rng.random())
                else:
                    proxy.set(victim, loss=0.02)
                time.sleep(args.hold)
                proxy.set()
            elif fault == "flap":
                end = time.time() + args.hold
                while time.time() < end:
                    network.link(victim, False)
                    time.sleep(0.3)
                    network.link(victim, True)
                    time.sleep(0.3)
            ok = healthy(bootstrap, 3, 120)
            unhealed += 0 if ok else 1
            print(f"round {round_}: {fault} broker {victim + 1}, healed={ok} "
                  f"after {time.time() - started:.1f} s, acked so far {len(ledger.acked)}", flush=True)
        time.sleep(2)
        stop.set()
        producer.join()
        healthy(bootstrap, 3, 60)

        records, ends = read_all(bootstrap)
        seen = {}
        duplicated = gaps = 0
        for partition, entries in records.items():
            offsets = [offset for offset, _ in entries]
            if offsets != list(range(len(offsets))) or len(offsets) != ends[partition]:
                gaps += 1
            for offset, seq in entries:
                if seq in seen:
                    duplicated += 1
                seen[seq] = (partition, offset)
        lost = sum(1 for seq, at in ledger.acked.items() if seen.get(seq) != at)
        for broker in brokers:
            broker.stop()
        diverged = 0
        for partition in range(PARTITIONS):
            logs = [segments(b.data_dir, partition) for b in brokers]
            shortest = min(len(log) for log in logs)
            if any(log[:shortest] != logs[0][:shortest] for log in logs):
                diverged += 1
        print(f"rounds={args.rounds} faults={','.join(faults)} sent={counter.get('sent')} "
              f"acked={len(ledger.acked)} failed={ledger.failed} unflushed={counter.get('unflushed')} "
              f"lost={lost} duplicated={duplicated} diverged={diverged} gaps={gaps} "
              f"unhealed={unhealed} seed={seed}", flush=True)
        bad = lost or duplicated or diverged or gaps or unhealed or ledger.failed
        if bad and args.keep:
            print(f"data and logs kept in {work}")
        return 1 if bad else 0
    finally:
        for broker in brokers:
            broker.kill()
        if proxy:
            proxy.close()
        network.down()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
