"""kafka-python against a running Sluice broker: create a topic, produce with acks=all,
consume every partition by assignment, and check counts, order, offsets and content.

Usage: python3 kafka_python.py HOST:PORT
"""
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

address = sys.argv[1]
topic = "python-round-trip"
partitions = 3
count = 3000

admin = KafkaAdminClient(bootstrap_servers=address, client_id="sluice-test")
admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
assert topic in admin.list_topics(), admin.list_topics()

# An idempotent producer (InitProducerId, sequence numbers), as kafka-python defaults to.
producer = KafkaProducer(bootstrap_servers=address, acks="all", linger_ms=5,
                         enable_idempotence=True)
futures = [producer.send(topic, key=b"k%d" % (i % 10), value=b"value-%06d" % i)
           for i in range(count)]
producer.flush()
sent = {}
for i, future in enumerate(futures):
    metadata = future.get(timeout=30)
    sent[i] = (metadata.partition, metadata.offset)
producer.close()

consumer = KafkaConsumer(bootstrap_servers=address, group_id=None,
                         enable_auto_commit=False, consumer_timeout_ms=5000)
tps = [TopicPartition(topic, p) for p in range(partitions)]
consumer.assign(tps)
consumer.seek_to_beginning(*tps)
received = {}
per_partition = {}
for message in consumer:
    i = int(message.value.decode().split("-")[1])
    assert message.key == b"k%d" % (i % 10), message
    assert i not in received, "duplicate %d" % i
    received[i] = (message.partition, message.offset)
    per_partition.setdefault(message.partition, []).append((message.offset, i))
    if len(received) == count:
        break
assert len(received) == count, "received %d of %d" % (len(received), count)
assert received == sent, "consumed positions differ from the produce acknowledgements"
for partition, entries in per_partition.items():
    offsets = [o for o, _ in entries]
    assert offsets == list(range(len(offsets))), "offsets of %d not dense" % partition
    ids = [i for _, i in entries]
    assert ids == sorted(ids), "order of partition %d" % partition
end = consumer.end_offsets(tps)
assert sum(end.values()) == count, end
print("kafka-python round trip ok: %d messages over %d partitions" % (count, partitions))
