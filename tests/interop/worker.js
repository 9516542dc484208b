// A Node.js worker declared the way today's RabbitMQ tutorial declares its task queue: durable,
// x-queue-type quorum, prefetch 1, manual acks. It prints each task it takes and closes after
// COUNT of them. Used by tests/test_interop.py (node worker.js URL QUEUE COUNT).
const amqp = require('amqplib');

async function main() {
  const [url, queue, count] = process.argv.slice(2);
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  await channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  await channel.prefetch(1);
  let taken = 0;
  await channel.consume(queue, (message) => {
    console.log(`received ${message.content.toString()}`);
    channel.ack(message);
    taken += 1;
    if (taken >= Number(count)) {
      setTimeout(() => connection.close().then(() => process.exit(0)), 200);
    }
  }, { noAck: false });
}

main().catch((error) => {
  console.error(`worker.js: ${error.message}`);
  process.exit(1);
});
