// The client round with KafkaJS (pure JavaScript, its own protocol code): create a topic,
// list all topics, produce keyed messages with the codecs KafkaJS has (gzip built in,
// snappy through kafkajs-snappy; its lz4 and zstd codecs are native add-ons), pipelined,
// consume them in a group, commit, describe the group, delete the topic. The same round
// as tests/clients/rounds.py for the Python clients.
//
// Usage: node round.js HOST:PORT (run by tests/support/clients.rs)
'use strict'

const readline = require('readline')

const INSTALL = 'tools/test.sh installs it (npm ci in tests/clients/js)'

function fail(message) {
  console.log(`ROUND FAILED: ${message}`)
  process.exit(2)
}

// A missing or stale client fails the round, never skips it.
let kafkajs, SnappyCodec
try {
  kafkajs = require('kafkajs')
  SnappyCodec = require('kafkajs-snappy')
} catch (error) {
  if (error.code !== 'MODULE_NOT_FOUND') throw error
  fail(`KafkaJS is not installed in tests/clients/js/node_modules; ${INSTALL}`)
}
const pinned = require('./package.json').dependencies
for (const name of Object.keys(pinned)) {
  const installed = require(`${name}/package.json`).version
  if (installed !== pinned[name]) {
    const pin = `tests/clients/js/package.json pins ${pinned[name]}`
    fail(`${name} ${installed} is installed, ${pin}; ${INSTALL}`)
  }
}

const { Kafka, CompressionTypes, CompressionCodecs, Partitioners, AssignerProtocol, logLevel } =
  kafkajs
CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec

const PARTITIONS = 4
const PER_CODEC = 1000
const KEYS = 40
const CHUNK = 100 // messages per send()
const WINDOW = 5 // send() calls in flight at once
const codecs = [
  ['gzip', CompressionTypes.GZIP],
  ['snappy', CompressionTypes.Snappy],
]
const address = process.argv[2]
const host = address.slice(0, address.lastIndexOf(':'))
const topic = 'kjs-round'
const group = 'kjs-group'

const keyOf = i => `key-${String(i % KEYS).padStart(2, '0')}`
// Repetition enough that even a batch of one record compresses (as rounds.py).
const valueOf = (i, codec) =>
  `${codec}|${String(i).padStart(6, '0')}|` + 'sluice '.repeat(8 + (i % 23))
const indexOf = value => Number(value.split('|')[1])

function check(condition, ...what) {
  if (!condition) throw new Error(`check failed: ${what.map(w => JSON.stringify(w)).join(' ')}`)
}

const sameList = (a, b) => JSON.stringify(a) === JSON.stringify(b)
const range = n => [...Array(n).keys()]

async function nextLine() {
  const lines = readline.createInterface({ input: process.stdin })
  const line = await new Promise(resolve => {
    lines.once('line', resolve)
    lines.once('close', () => resolve(null))
  })
  lines.close()
  return line
}

async function main() {
  console.log(`KafkaJS ${require('kafkajs/package.json').version}`)
  const kafka = new Kafka({ clientId: 'kjs', brokers: [address], logLevel: logLevel.WARN })
  const admin = kafka.admin()
  await admin.connect()

  // listTopics() and fetchTopicMetadata() with no topic: Metadata with a null topic list.
  check(!(await admin.listTopics()).includes(topic), 'topic exists before creation')
  check(
    await admin.createTopics({
      topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }],
      waitForLeaders: true,
    }),
    'createTopics'
  )
  check((await admin.listTopics()).includes(topic), 'created topic not listed')
  const metadata = await admin.fetchTopicMetadata()
  const listed = metadata.topics.filter(t => t.name === topic)
  check(listed.length === 1, metadata)
  const partitions = listed[0].partitions.sort((a, b) => a.partitionId - b.partitionId)
  check(sameList(partitions.map(p => p.partitionId), range(PARTITIONS)), partitions)
  for (const p of partitions) {
    check(p.partitionErrorCode === 0 && p.leader === 0, p)
    check(sameList(p.replicas, [0]) && sameList(p.isr, [0]), p)
  }

  // The partitioner the producer uses (murmur2, as Java's), recording its choice per message.
  const chosen = new Map()
  const recording = () => {
    const partitioner = Partitioners.DefaultPartitioner()
    return args => {
      const partition = partitioner(args)
      chosen.set(indexOf(args.message.value), partition)
      return partition
    }
  }
  // Not idempotent: KafkaJS's idempotent producer allows one request in flight.
  const producer = kafka.producer({ createPartitioner: recording, allowAutoTopicCreation: false })
  await producer.connect()
  const sent = new Map() // index -> [partition, offset]
  const send = async (codecName, compression, indexes) => {
    const messages = indexes.map(i => ({
      key: keyOf(i),
      value: valueOf(i, codecName),
      headers: { seq: String(i), codec: codecName },
    }))
    const results = await producer.send({ topic, compression, acks: -1, messages })
    // Within one send, a partition's messages keep their order: base offset + position.
    const base = new Map(results.map(r => [r.partition, Number(r.baseOffset)]))
    for (const r of results) check(r.errorCode === 0 && r.topicName === topic, r)
    const position = new Map()
    for (const i of indexes) {
      const partition = chosen.get(i)
      const k = position.get(partition) || 0
      position.set(partition, k + 1)
      check(base.has(partition), 'no result for partition', partition, results)
      sent.set(i, [partition, base.get(partition) + k])
    }
  }
  for (const [c, [codecName, compression]] of codecs.entries()) {
    const chunks = []
    for (let start = c * PER_CODEC; start < (c + 1) * PER_CODEC; start += CHUNK) {
      chunks.push(range(CHUNK).map(k => start + k))
    }
    for (let at = 0; at < chunks.length; at += WINDOW) {
      await Promise.all(chunks.slice(at, at + WINDOW).map(ch => send(codecName, compression, ch)))
    }
  }
  await producer.disconnect()
  const total = codecs.length * PER_CODEC
  check(sent.size === total, 'acknowledged', sent.size)
  const ackedOffsets = new Map()
  for (const [, [partition, offset]] of sent) {
    ackedOffsets.set(partition, (ackedOffsets.get(partition) || []).concat([offset]))
  }
  check(sameList([...ackedOffsets.keys()].sort(), range(PARTITIONS)), [...ackedOffsets.keys()])
  for (const [partition, offsets] of ackedOffsets) {
    offsets.sort((a, b) => a - b)
    check(sameList(offsets, range(offsets.length)), 'acknowledged offsets of', partition)
  }

  console.log(`PRODUCED ${topic} ${codecs.map(([name]) => `${name}=${PER_CODEC}`).join(' ')}`)
  const answer = await nextLine()
  check(answer === 'checked', 'the test answered', answer)

  const consumer = kafka.consumer({
    groupId: group,
    sessionTimeout: 10000,
    heartbeatInterval: 1000,
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const received = []
  let assigned = null
  consumer.on(consumer.events.GROUP_JOIN, event => {
    assigned = event.payload.memberAssignment
  })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ topic: from, partition, message }) => {
      received.push({ from, partition, message })
    },
  })
  const deadline = Date.now() + 120000
  while (received.length < total && Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  // Anything more (a duplicate) would show within two seconds.
  await new Promise(resolve => setTimeout(resolve, 2000))
  check(received.length === total, 'received', received.length, 'of', total)

  const seen = new Map()
  const keyPartition = new Map()
  const consumedOffsets = new Map()
  for (const { from, partition, message } of received) {
    check(from === topic, from)
    const value = message.value.toString()
    const i = indexOf(value)
    const codecName = codecs[Math.floor(i / PER_CODEC)][0]
    check(!seen.has(i), 'message twice', i)
    seen.set(i, [partition, Number(message.offset)])
    check(value === valueOf(i, codecName), i, value)
    check(message.key.toString() === keyOf(i), i, message.key.toString())
    const headers = Object.entries(message.headers).map(([k, v]) => [k, v.toString()])
    check(sameList(headers, [['seq', String(i)], ['codec', codecName]]), i, headers)
    const key = message.key.toString()
    if (!keyPartition.has(key)) keyPartition.set(key, partition)
    check(keyPartition.get(key) === partition, 'key in two partitions', key)
    if (!consumedOffsets.has(partition)) consumedOffsets.set(partition, [])
    consumedOffsets.get(partition).push(Number(message.offset))
  }
  check(keyPartition.size === KEYS, keyPartition.size)
  for (const i of range(total)) {
    const [at, acked] = [seen.get(i), sent.get(i)]
    check(sameList(at, acked), 'message', i, 'consumed at', at, 'acknowledged at', acked)
  }
  // Per partition, in the order the consumer got them: offsets 0, 1, 2, ...
  const counts = {}
  for (const p of range(PARTITIONS)) {
    const offsets = consumedOffsets.get(p) || []
    check(sameList(offsets, range(offsets.length)), 'partition out of order', p)
    counts[p] = offsets.length
  }
  check(sameList(Object.keys(assigned || {}), [topic]), assigned)
  check(sameList([...assigned[topic]].sort(), range(PARTITIONS)), assigned)

  await consumer.commitOffsets(
    range(PARTITIONS).map(p => ({ topic, partition: p, offset: String(counts[p]) }))
  )
  const ends = (await admin.fetchTopicOffsets(topic)).sort((a, b) => a.partition - b.partition)
  check(sameList(ends.map(e => [e.partition, Number(e.high), Number(e.low)]),
    range(PARTITIONS).map(p => [p, counts[p], 0])), ends, counts)
  const [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] })
  check(committed.topic === topic, committed)
  const committedOffsets = committed.partitions.sort((a, b) => a.partition - b.partition)
  check(sameList(committedOffsets.map(c => [c.partition, Number(c.offset)]),
    range(PARTITIONS).map(p => [p, counts[p]])), committedOffsets, counts)

  const describe = async () => {
    const { groups } = await admin.describeGroups([group])
    check(groups.length === 1 && groups[0].errorCode === 0 && groups[0].groupId === group, groups)
    return groups[0]
  }
  let description = await describe()
  check(description.state === 'Stable', description.state)
  check(description.protocolType === 'consumer', description.protocolType)
  // KafkaJS's one default assignor.
  check(description.protocol === 'RoundRobinAssigner', description.protocol)
  check(description.members.length === 1, description.members)
  const member = description.members[0]
  check(member.clientId === 'kjs', member.clientId)
  check(member.clientHost.replace(/^\//, '') === host, member.clientHost)
  const assignment = AssignerProtocol.MemberAssignment.decode(member.memberAssignment)
  check(sameList([...assignment.assignment[topic]].sort(), range(PARTITIONS)), assignment)
  const { groups } = await admin.listGroups()
  const ours = groups.filter(g => g.groupId === group)
  check(sameList(ours, [{ groupId: group, protocolType: 'consumer' }]), groups)

  await consumer.disconnect()
  description = await describe()
  check(description.state === 'Empty' && description.members.length === 0, description)

  await admin.deleteTopics({ topics: [topic], timeout: 30000 })
  check(!(await admin.listTopics()).includes(topic), 'deleted topic still listed')
  await admin.disconnect()
  const names = codecs.map(([name]) => name).join(',')
  console.log(`ROUND OK KafkaJS: ${total} messages, codecs ${names}, partitions ${JSON.stringify(counts)}`)
}

main().then(
  () => process.exit(0),
  error => {
    console.error(error)
    process.exit(1)
  }
)
