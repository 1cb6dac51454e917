"""The client round with kafka-python (pure Python, its own protocol code): create a topic,
list all topics, produce keyed messages with every codec (snappy, lz4 and zstd through the
Python packages pinned next to it), consume them in a group, commit, describe the group,
delete the topic.

Usage: python3 kafka_python_round.py HOST:PORT (run by tests/support/clients.rs)
"""
import sys
import time

import rounds

rounds.require("kafka-python", "python-snappy", "lz4", "zstandard")

import kafka  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

address = sys.argv[1]
host, port = address.rsplit(":", 1)
topic, group = "kp-round", "kp-group"
codecs = ["gzip", "snappy", "lz4", "zstd"]
print("kafka-python %s" % kafka.__version__, flush=True)

admin = KafkaAdminClient(bootstrap_servers=address, client_id="kp-admin")
# list_topics() and describe_topics() send Metadata with no topic list: all topics.
assert topic not in admin.list_topics(), admin.list_topics()
admin.create_topics({topic: {"num_partitions": rounds.PARTITIONS, "replication_factor": 1}},
                    timeout_ms=30000)
assert topic in admin.list_topics(), admin.list_topics()
described = [t for t in admin.describe_topics() if t["name"] == topic]
assert len(described) == 1, described
assert described[0]["error_code"] == 0, described
partitions = sorted(described[0]["partitions"], key=lambda p: p["partition_index"])
assert [p["partition_index"] for p in partitions] == list(range(rounds.PARTITIONS)), partitions
for partition in partitions:
    assert partition["error_code"] == 0 and partition["leader_id"] == 0, partition
    assert partition["replica_nodes"] == [0] == partition["isr_nodes"], partition

# Keyed, compressed, idempotent (kafka-python's default), several requests in flight.
sent = {}
for codec in codecs:
    producer = KafkaProducer(bootstrap_servers=address, acks="all", compression_type=codec,
                             linger_ms=5, batch_size=8192, enable_idempotence=True,
                             max_in_flight_requests_per_connection=5)
    futures = [(i, producer.send(topic, key=key, value=value, headers=headers))
               for i, _, key, value, headers in rounds.messages_of(codecs, codec)]
    producer.flush(timeout=60)
    for i, future in futures:
        metadata = future.get(timeout=30)
        sent[i] = (metadata.partition, metadata.offset)
    producer.close(timeout=30)
rounds.check_sent(sent, codecs)
rounds.broker_check(topic, codecs)

consumer = KafkaConsumer(bootstrap_servers=address, group_id=group, client_id="kp-consumer",
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=10000, heartbeat_interval_ms=1000)
consumer.subscribe([topic])
total = len(codecs) * rounds.PER_CODEC
received = []
deadline = time.time() + 120
while len(received) < total and time.time() < deadline:
    for tp, messages in consumer.poll(timeout_ms=1000).items():
        assert tp.topic == topic, tp
        for m in messages:
            received.append((m.partition, m.offset, m.key, m.value, list(m.headers)))
quiet_until = time.time() + 2
while time.time() < quiet_until:
    extra = consumer.poll(timeout_ms=500)
    assert not extra, "more than was produced: %s" % extra
counts = rounds.check_received(received, sent, codecs)
tps = [TopicPartition(topic, p) for p in range(rounds.PARTITIONS)]
assert sorted(consumer.assignment()) == tps, consumer.assignment()

consumer.commit()
ends = consumer.end_offsets(tps)
assert {tp.partition: end for tp, end in ends.items()} == counts, (ends, counts)
for tp in tps:
    assert consumer.committed(tp) == counts[tp.partition], (tp, consumer.committed(tp))

description = admin.describe_groups([group])[group]
assert description["error"] is None, description
assert description["group_state"] == "Stable", description
assert description["protocol_type"] == "consumer", description
# The member's first choice: kafka-python lists the range assignor first.
assert description["protocol_data"] == "range", description
assert len(description["members"]) == 1, description
member = description["members"][0]
assert member["client_id"] == "kp-consumer", member
assert member["client_host"].lstrip("/") == host, member
assigned = member["member_assignment"]["assigned_partitions"]
assert sorted((a["topic"], p) for a in assigned for p in a["partitions"]) == [
    (topic, p) for p in range(rounds.PARTITIONS)], assigned
assert [(g["group_id"], g["protocol_type"]) for g in admin.list_groups()
        if g["group_id"] == group] == [(group, "consumer")], admin.list_groups()
offsets = admin.list_group_offsets({group: None})[group]
assert {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic} == counts, \
    offsets

consumer.close()
description = admin.describe_groups([group])[group]
assert description["group_state"] == "Empty" and description["members"] == [], description

admin.delete_topics([topic], timeout_ms=30000)
assert topic not in admin.list_topics(), admin.list_topics()
admin.close()
rounds.ok("kafka-python", "%d messages, codecs %s, partitions %s" % (
    total, ",".join(codecs), counts))
