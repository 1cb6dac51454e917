"""kafka-python as a group member against a running Sluice broker: subscribe with a
group id, consume every message, commit, and check the committed offsets.

Usage: python3 kafka_python_group.py HOST:PORT TOPIC GROUP COUNT
"""
import sys
import time

from kafka import KafkaConsumer, TopicPartition

address, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

consumer = KafkaConsumer(topic, bootstrap_servers=address, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=10000, heartbeat_interval_ms=1000,
                         consumer_timeout_ms=1000)
seen = set()
deadline = time.time() + 90
while len(seen) < count:
    assert time.time() < deadline, "consumed %d of %d" % (len(seen), count)
    for message in consumer:
        seen.add((message.partition, message.offset))
        assert message.value.decode().startswith("py-"), message.value
assert len(seen) == count, len(seen)
assignment = consumer.assignment()
assert {tp.partition for tp in assignment} == {0, 1, 2}, assignment
consumer.commit()
ends = consumer.end_offsets(list(assignment))
for tp in assignment:
    assert consumer.committed(tp) == ends[tp], (tp, consumer.committed(tp), ends[tp])
consumer.close()
print("kafka-python group ok")
