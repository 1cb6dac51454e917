"""kafka-python against a cluster of Sluice brokers: create a topic with replication
factor 3 through the admin client, produce keyed messages with acks=all (the client
sends each partition's batches to its leader), consume all of them in a group (whose
coordinator is the leader of its __consumer_offsets partition), commit, and read the
committed offsets back.

Usage: python3 kafka_python_cluster.py HOST:PORT,HOST:PORT,... TOPIC GROUP COUNT
"""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

servers, topic, group, count = sys.argv[1].split(","), sys.argv[2], sys.argv[3], int(sys.argv[4])

admin = KafkaAdminClient(bootstrap_servers=servers)
admin.create_topics([NewTopic(topic, 6, 3)])
described = admin.describe_topics([topic])[0]
assert all(len(p["replica_nodes"]) == 3 for p in described["partitions"]), described
leaders = {p["leader_id"] for p in described["partitions"]}
assert len(leaders) >= 2, "leaders spread over the brokers: %s" % described
admin.close()

producer = KafkaProducer(bootstrap_servers=servers, acks="all", retries=5)
for i in range(count):
    producer.send(topic, key=b"k%d" % i, value=b"py-%d" % i)
producer.flush()
producer.close()

consumer = KafkaConsumer(topic, bootstrap_servers=servers, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=10000, heartbeat_interval_ms=1000,
                         consumer_timeout_ms=1000)
seen = set()
deadline = time.time() + 90
while len(seen) < count:
    assert time.time() < deadline, "consumed %d of %d" % (len(seen), count)
    for message in consumer:
        assert message.value.startswith(b"py-"), message.value
        seen.add(message.value)
assert len(seen) == count, len(seen)
consumer.commit()
assignment = consumer.assignment()
ends = consumer.end_offsets(list(assignment))
for tp in assignment:
    assert consumer.committed(tp) == ends[tp], (tp, consumer.committed(tp), ends[tp])
consumer.close()
print("kafka-python cluster OK")
