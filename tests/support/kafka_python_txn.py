"""kafka-python transactions against a running Sluice broker: a transactional producer
commits and aborts alternately across 3 partitions; a read_committed consumer sees
exactly the committed records in order, a read_uncommitted one sees all of them.

Usage: python3 kafka_python_txn.py HOST:PORT
"""
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

address = sys.argv[1]
topic = "python-txn"
partitions = 3

admin = KafkaAdminClient(bootstrap_servers=address, client_id="sluice-txn-test")
admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])

producer = KafkaProducer(bootstrap_servers=address, transactional_id="python-tx")
producer.init_transactions()
committed = {p: [] for p in range(partitions)}
total = 0
for round_ in range(6):
    producer.begin_transaction()
    for i in range(30):
        value = b"r%d-%03d" % (round_, i)
        producer.send(topic, partition=i % partitions, value=value)
        total += 1
        if round_ % 2 == 0:
            committed[i % partitions].append(value)
    producer.flush()
    if round_ % 2 == 0:
        producer.commit_transaction()
    else:
        producer.abort_transaction()
producer.close()


def read(isolation, expected):
    consumer = KafkaConsumer(bootstrap_servers=address, isolation_level=isolation,
                             enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = {p: [] for p in range(partitions)}
    deadline = time.time() + 30
    quiet = None
    while time.time() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for tp, records in batch.items():
            for record in records:
                seen[tp.partition].append(record.value)
        count = sum(len(v) for v in seen.values())
        if count >= expected and quiet is None:
            quiet = time.time() + 1.5
        if quiet is not None and time.time() > quiet:
            break
    consumer.close()
    return seen


seen = read("read_committed", sum(len(v) for v in committed.values()))
assert seen == committed, ("read_committed", seen, committed)
everything = read("read_uncommitted", total)
assert sum(len(v) for v in everything.values()) == total, everything
print("kafka-python transactions ok")
