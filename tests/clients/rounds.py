"""The parts every Python client round shares (tests/support/clients.rs runs the rounds):
the check that a client is installed at its pin, the messages a round produces, the
pause in which the test reads the broker's segment files, and the checks of what a
group consumer received. tests/clients/js/round.js is the same for KafkaJS.
"""
import importlib.metadata
import os
import sys

PARTITIONS = 4
# Per codec: with four partitions about 250 a partition, several batches each.
PER_CODEC = 1000
KEYS = 40

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "requirements.txt")
INSTALL = "tools/test.sh installs it (pip install -r tests/requirements.txt)"


def fail(message):
    """Ends the round with `message`: a missing client fails the test, never skips it."""
    print("ROUND FAILED: " + message, flush=True)
    sys.exit(2)


def require(*distributions):
    """Fails unless each distribution is installed at its version in tests/requirements.txt."""
    pins = {}
    with open(REQUIREMENTS) as requirements:
        for line in requirements:
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                pins[name.strip().lower()] = version.strip()
    for distribution in distributions:
        wanted = pins[distribution.lower()]
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            fail("%s is not installed; %s" % (distribution, INSTALL))
        if installed != wanted:
            fail("%s %s is installed, tests/requirements.txt pins %s; %s"
                 % (distribution, installed, wanted, INSTALL))


def key_of(i):
    return b"key-%02d" % (i % KEYS)


def value_of(i, codec):
    # Varied lengths, and repetition enough that even a batch of one record compresses
    # (clients send a batch uncompressed when the codec would make it larger).
    return b"%s|%06d|" % (codec.encode(), i) + b"sluice " * (8 + i % 23)


def index_of(value):
    return int(value.split(b"|")[1])


def headers_of(i, codec):
    return [("seq", b"%d" % i), ("codec", codec.encode())]


def messages(codecs):
    """(index, codec, key, value, headers) of every message: PER_CODEC per codec, in order."""
    return [(i, codec, key_of(i), value_of(i, codec), headers_of(i, codec))
            for c, codec in enumerate(codecs)
            for i in range(c * PER_CODEC, (c + 1) * PER_CODEC)]


def messages_of(codecs, codec):
    """The messages of `messages(codecs)` sent with `codec`."""
    return [m for m in messages(codecs) if m[1] == codec]


def broker_check(topic, codecs):
    """Tells the test what was produced, and waits while it reads the broker's segment files
    (every batch stored with the codec it was sent with, the record counts per codec)."""
    counts = " ".join("%s=%d" % (codec, PER_CODEC) for codec in codecs)
    print("PRODUCED %s %s" % (topic, counts), flush=True)
    answer = sys.stdin.readline().strip()
    assert answer == "checked", "the test answered %r" % answer


def check_sent(sent, codecs):
    """`sent` maps index -> (partition, offset) from the produce acknowledgements."""
    total = len(codecs) * PER_CODEC
    assert sorted(sent) == list(range(total)), "acknowledged %d of %d" % (len(sent), total)
    per_partition = {}
    for i in range(total):
        per_partition.setdefault(sent[i][0], []).append(sent[i][1])
    assert sorted(per_partition) == list(range(PARTITIONS)), sorted(per_partition)
    for partition, offsets in per_partition.items():
        # Produced in index order on one connection: the offsets follow that order.
        assert offsets == list(range(len(offsets))), "partition %d acknowledged %s" % (
            partition, offsets[:20])


def check_received(received, sent, codecs):
    """`received` is [(partition, offset, key, value, headers)] in the order the group
    consumer got them; `sent` maps index -> (partition, offset). Checks every message
    arrived once, where it was acknowledged, in partition order, with its key, value and
    headers, and that a key always went to the same partition."""
    total = len(codecs) * PER_CODEC
    codec_of = {i: codec for i, codec, _, _, _ in messages(codecs)}
    seen = {}
    positions = {}
    key_partition = {}
    for partition, offset, key, value, headers in received:
        i = index_of(value)
        assert i not in seen, "message %d twice: at %s and %s" % (i, seen[i], (partition, offset))
        seen[i] = (partition, offset)
        assert value == value_of(i, codec_of[i]), (i, value)
        assert key == key_of(i), (i, key)
        assert list(headers) == headers_of(i, codec_of[i]), (i, headers)
        assert key_partition.setdefault(key, partition) == partition, (
            "key %r in partitions %d and %d" % (key, key_partition[key], partition))
        positions.setdefault(partition, []).append((offset, i))
    assert len(seen) == total, "received %d of %d" % (len(seen), total)
    assert seen == sent, "consumed positions differ from the produce acknowledgements"
    assert sorted(positions) == list(range(PARTITIONS)), sorted(positions)
    for partition, entries in positions.items():
        offsets = [offset for offset, _ in entries]
        assert offsets == list(range(len(offsets))), "partition %d out of order: %s" % (
            partition, offsets[:20])
        indexes = [i for _, i in entries]
        assert indexes == sorted(indexes), "partition %d: messages out of produce order" % partition
    assert len(key_partition) == KEYS, len(key_partition)
    return {p: len(positions[p]) for p in sorted(positions)}


def ok(client, detail):
    print("ROUND OK %s: %s" % (client, detail), flush=True)
