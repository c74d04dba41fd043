// Reads a spoke's queue with Node's own bullmq, as bull-board or a BullMQ worker would see it.
//
//   node bullmq_queue.mjs --redis redis://127.0.0.1:6379/0 --prefix federation:spoke-1 \
//     --queue agents [--job JOB_ID ...]
//
// Prints one JSON line: {counts, paused, jobs: {id: {name, data} | null}}; exit status 0.

import { Queue } from "bullmq";
import IORedis from "ioredis";

function options(argv) {
  const o = { jobs: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--job") o.jobs.push(value);
    else if (flag.startsWith("--")) o[flag.slice(2)] = value;
    else throw new Error(`unexpected argument ${flag}`);
  }
  for (const need of ["redis", "prefix", "queue"]) {
    if (!o[need]) throw new Error(`--${need} is required`);
  }
  return o;
}

async function main() {
  const opt = options(process.argv.slice(2));
  const connection = new IORedis(opt.redis, { maxRetriesPerRequest: null });
  const queue = new Queue(opt.queue, { connection, prefix: opt.prefix });
  try {
    const counts = await queue.getJobCounts(
      "wait", "paused", "prioritized", "delayed", "active", "completed", "failed",
    );
    const jobs = {};
    for (const id of opt.jobs) {
      const job = await queue.getJob(id);
      jobs[id] = job ? { name: job.name, data: job.data, priority: job.priority } : null;
    }
    const paused = await queue.isPaused();
    process.stdout.write(`${JSON.stringify({ counts, paused, jobs })}\n`);
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${err.stack ?? err}\n`);
    process.exit(1);
  },
);
