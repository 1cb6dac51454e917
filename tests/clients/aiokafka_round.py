"""The client round with aiokafka (asyncio, its own protocol code): create a topic, list all
topics, produce keyed messages with every codec (cramjam's), pipelined, consume them in a
group, commit, describe the group, delete the topic.

Usage: python3 aiokafka_round.py HOST:PORT (run by tests/support/clients.rs)
"""
import asyncio
import sys
import time

import rounds

rounds.require("aiokafka", "cramjam")

import aiokafka  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment  # noqa: E402

address = sys.argv[1]
host, port = address.rsplit(":", 1)
topic, group = "aio-round", "aio-group"
codecs = ["gzip", "snappy", "lz4", "zstd"]


async def all_topics(admin):
    """describe_topics() with no topic: Metadata for all topics."""
    return {t["topic"]: t for t in await admin.describe_topics()}


async def describe_group(admin):
    responses = await admin.describe_consumer_groups([group])
    assert len(responses) == 1, responses
    groups = responses[0].to_object()["groups"]
    assert len(groups) == 1 and groups[0]["error_code"] == 0, groups
    return groups[0]


async def main():
    print("aiokafka %s" % aiokafka.__version__, flush=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=address, client_id="aio-admin")
    await admin.start()
    assert topic not in await admin.list_topics()
    response = (await admin.create_topics([NewTopic(topic, rounds.PARTITIONS, 1)])).to_object()
    errors = [(t["topic"], t["error_code"]) for t in response["topic_errors"]]
    assert errors == [(topic, 0)], response
    assert topic in await admin.list_topics()
    listed = (await all_topics(admin))[topic]
    assert listed["error_code"] == 0, listed
    partitions = sorted(listed["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in partitions] == list(range(rounds.PARTITIONS)), partitions
    for partition in partitions:
        assert partition["error_code"] == 0 and partition["leader"] == 0, partition
        assert partition["replicas"] == [0] == partition["isr"], partition

    # Keyed, compressed, idempotent; every send queued before the first acknowledgement.
    sent = {}
    for codec in codecs:
        producer = AIOKafkaProducer(bootstrap_servers=address, acks="all", compression_type=codec,
                                    linger_ms=5, max_batch_size=8192, enable_idempotence=True)
        await producer.start()
        futures = []
        for i, _, key, value, headers in rounds.messages_of(codecs, codec):
            futures.append((i, await producer.send(topic, key=key, value=value, headers=headers)))
        await producer.flush()
        for i, future in futures:
            metadata = await future
            sent[i] = (metadata.partition, metadata.offset)
        await producer.stop()
    rounds.check_sent(sent, codecs)
    await asyncio.get_running_loop().run_in_executor(None, rounds.broker_check, topic, codecs)

    consumer = AIOKafkaConsumer(bootstrap_servers=address, group_id=group,
                                client_id="aio-consumer", auto_offset_reset="earliest",
                                enable_auto_commit=False, session_timeout_ms=10000,
                                heartbeat_interval_ms=1000)
    await consumer.start()
    consumer.subscribe([topic])
    total = len(codecs) * rounds.PER_CODEC
    received = []
    deadline = time.time() + 120
    while len(received) < total and time.time() < deadline:
        for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
            assert tp.topic == topic, tp
            for m in messages:
                received.append((m.partition, m.offset, m.key, m.value, list(m.headers)))
    quiet_until = time.time() + 2
    while time.time() < quiet_until:
        extra = await consumer.getmany(timeout_ms=500)
        assert not any(extra.values()), "more than was produced: %s" % extra
    counts = rounds.check_received(received, sent, codecs)
    tps = [TopicPartition(topic, p) for p in range(rounds.PARTITIONS)]
    assert sorted(consumer.assignment()) == tps, consumer.assignment()

    await consumer.commit()
    ends = await consumer.end_offsets(tps)
    assert {tp.partition: end for tp, end in ends.items()} == counts, (ends, counts)
    for tp in tps:
        assert await consumer.committed(tp) == counts[tp.partition], tp

    description = await describe_group(admin)
    assert description["group"] == group, description
    assert description["state"] == "Stable", description
    assert description["protocol_type"] == "consumer", description
    # aiokafka's one default assignor.
    assert description["protocol"] == "roundrobin", description
    assert len(description["members"]) == 1, description
    member = description["members"][0]
    assert member["client_id"] == "aio-consumer", member
    assert member["client_host"].lstrip("/") == host, member
    assignment = ConsumerProtocolMemberAssignment.decode(member["member_assignment"])
    assert sorted(assignment.partitions()) == tps, assignment
    listed = [g for g in await admin.list_consumer_groups() if g[0] == group]
    assert listed == [(group, "consumer")], listed
    offsets = await admin.list_consumer_group_offsets(group)
    assert {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic} == \
        counts, offsets

    await consumer.stop()
    description = await describe_group(admin)
    assert description["state"] == "Empty" and description["members"] == [], description

    response = (await admin.delete_topics([topic])).to_object()
    errors = [(t["topic"], t["error_code"]) for t in response["topic_error_codes"]]
    assert errors == [(topic, 0)], response
    assert topic not in await admin.list_topics()
    await admin.close()
    rounds.ok("aiokafka", "%d messages, codecs %s, partitions %s" % (
        total, ",".join(codecs), counts))


asyncio.run(main())
