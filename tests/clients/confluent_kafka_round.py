"""The client round with confluent-kafka (the newest librdkafka): create a topic, list all
topics (the Metadata request with no topic list, which librdkafka 2.16 sends differently),
produce keyed messages with every codec, consume them in a group subscribed by pattern,
commit, describe the group, delete the topic.

Usage: python3 confluent_kafka_round.py HOST:PORT (run by tests/support/clients.rs)
"""
import sys
import time

import rounds

rounds.require("confluent-kafka")

import confluent_kafka  # noqa: E402
from confluent_kafka import (  # noqa: E402
    Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

address = sys.argv[1]
host, port = address.rsplit(":", 1)
topic, decoy, group = "ck-round", "decoy-ck", "ck-group"
codecs = ["gzip", "snappy", "lz4", "zstd"]
print("confluent-kafka %s, librdkafka %s" % (confluent_kafka.version(),
                                             confluent_kafka.libversion()[0]), flush=True)
# The wheel's own librdkafka, of the same minor version (confluent-kafka follows it).
assert confluent_kafka.libversion()[0].split(".")[:2] == confluent_kafka.version().split(".")[:2], \
    "confluent-kafka %s runs on librdkafka %s" % (confluent_kafka.version(),
                                                 confluent_kafka.libversion()[0])

admin = AdminClient({"bootstrap.servers": address})


def all_topics(handle):
    """Metadata for all topics: list_topics() with no topic."""
    metadata = handle.list_topics(timeout=30)
    assert list(metadata.brokers) == [metadata.controller_id], metadata.brokers
    broker = metadata.brokers[metadata.controller_id]
    assert (broker.host, broker.port) == (host, int(port)), broker
    return metadata


before = all_topics(admin)
assert topic not in before.topics and decoy not in before.topics, before.topics

futures = admin.create_topics([NewTopic(topic, rounds.PARTITIONS, 1), NewTopic(decoy, 1, 1)],
                              operation_timeout=30)
for name, future in futures.items():
    assert future.result(timeout=30) is None, name

# From the admin client and from a producer: both list through librdkafka's all-topics
# Metadata request.
listings = [all_topics(admin)]
producer = Producer({"bootstrap.servers": address})
listings.append(all_topics(producer))
for metadata in listings:
    listed = metadata.topics[topic]
    assert listed.error is None, listed.error
    assert sorted(listed.partitions) == list(range(rounds.PARTITIONS)), listed.partitions
    for partition in listed.partitions.values():
        assert partition.error is None, partition.error
        assert partition.leader == metadata.controller_id, partition
        assert partition.replicas == [partition.leader] == partition.isrs, partition
    assert sorted(metadata.topics[decoy].partitions) == [0], metadata.topics[decoy].partitions

# Keyed, compressed, idempotent, up to five produce requests in flight on the connection.
sent = {}
errors = []


def delivered(error, message):
    if error is not None:
        errors.append(error)
    else:
        sent[rounds.index_of(message.value())] = (message.partition(), message.offset())


for codec in codecs:
    producer = Producer({"bootstrap.servers": address, "compression.type": codec,
                         "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                         "batch.num.messages": 100, "max.in.flight.requests.per.connection": 5})
    for _, _, key, value, headers in rounds.messages_of(codecs, codec):
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages left unsent"
assert not errors, errors[:5]
rounds.check_sent(sent, codecs)
for n in range(10):
    producer.produce(decoy, key=b"decoy", value=b"decoy-%d" % n)
assert producer.flush(30) == 0
rounds.broker_check(topic, codecs)

# A group consumer subscribed by pattern: librdkafka matches it against all-topics
# Metadata. The decoy topic does not match and must not be assigned.
consumer = Consumer({"bootstrap.servers": address, "group.id": group, "client.id": "ck-consumer",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
consumer.subscribe(["^ck-.*"])
total = len(codecs) * rounds.PER_CODEC
received = []
deadline = time.time() + 120
while len(received) < total and time.time() < deadline:
    for message in consumer.consume(500, timeout=1):
        assert message.error() is None, message.error()
        assert message.topic() == topic, message.topic()
        received.append((message.partition(), message.offset(), message.key(), message.value(),
                         message.headers()))
# Anything more (a duplicate, the decoy) would show within a few polls.
quiet_until = time.time() + 2
while time.time() < quiet_until:
    extra = consumer.consume(100, timeout=0.5)
    assert not extra, "more than was produced: %s" % [(m.topic(), m.partition(), m.offset())
                                                      for m in extra]
counts = rounds.check_received(received, sent, codecs)
assignment = consumer.assignment()
assert sorted((tp.topic, tp.partition) for tp in assignment) == [
    (topic, p) for p in range(rounds.PARTITIONS)], assignment

committed = consumer.commit(asynchronous=False)
ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        for p in range(rounds.PARTITIONS)}
assert ends == {p: (0, counts[p]) for p in counts}, (ends, counts)
assert sorted((tp.partition, tp.offset) for tp in committed) == [
    (p, counts[p]) for p in sorted(counts)], committed
read_back = consumer.committed([TopicPartition(topic, p) for p in range(rounds.PARTITIONS)],
                               timeout=10)
assert [(tp.partition, tp.offset, tp.error) for tp in read_back] == [
    (p, counts[p], None) for p in sorted(counts)], read_back

# The group as the admin API shows it, with the member still in it.
description = admin.describe_consumer_groups([group])[group].result(timeout=30)
assert description.group_id == group
assert description.state == ConsumerGroupState.STABLE, description.state
assert not description.is_simple_consumer_group
assert description.partition_assignor == "range", description.partition_assignor
assert len(description.members) == 1, description.members
member = description.members[0]
assert member.client_id == "ck-consumer", member.client_id
assert member.host.lstrip("/") == host, member.host
assert sorted((tp.topic, tp.partition) for tp in member.assignment.topic_partitions) == [
    (topic, p) for p in range(rounds.PARTITIONS)], member.assignment.topic_partitions
listed = admin.list_consumer_groups().result(timeout=30)
assert not listed.errors, listed.errors
assert [(g.group_id, g.state) for g in listed.valid if g.group_id == group] == [
    (group, ConsumerGroupState.STABLE)], [(g.group_id, g.state) for g in listed.valid]
offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
offsets = offsets[group].result(timeout=30)
assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets.topic_partitions) == [
    (topic, p, counts[p]) for p in sorted(counts)], offsets.topic_partitions

consumer.close()
description = admin.describe_consumer_groups([group])[group].result(timeout=30)
assert description.state == ConsumerGroupState.EMPTY, description.state
assert description.members == [], description.members

futures = admin.delete_topics([topic, decoy], operation_timeout=30)
for name, future in futures.items():
    assert future.result(timeout=30) is None, name
after = all_topics(admin)
assert topic not in after.topics and decoy not in after.topics, list(after.topics)
rounds.ok("confluent-kafka", "%d messages, codecs %s, partitions %s" % (
    total, ",".join(codecs), counts))
