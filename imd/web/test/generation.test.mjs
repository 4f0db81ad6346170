// A cluster's Redis losing everything under a running imd (FLUSHALL: what a restart
// without persistence leaves): useqs are given again, and the client must start over
// in the new generation instead of dropping the new messages as ones it has.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { promisify } from 'node:util';
import { Imd, waitFor, inConv, LIMIT } from './harness.mjs';

const run = promisify(execFile);
const CONV = 'd:alice~bob';

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A redis-server without persistence; resolves once it answers PING. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  process.on('exit', () => child.kill('SIGKILL'));
  await waitFor(
    async () => {
      try {
        const { stdout } = await run('redis-cli', ['-p', String(port), 'PING']);
        return stdout.trim() === 'PONG';
      } catch {
        return false;
      }
    },
    { what: 'redis-server to answer PING' },
  );
  return { port, child };
}

test('after Redis lost everything the client starts over in the new generation and misses nothing', LIMIT, async (t) => {
  const redis = await startRedis();
  t.after(() => redis.child.kill('SIGKILL'));
  const imd = await Imd.start(['--redis', `redis://127.0.0.1:${redis.port}`]);
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const bob = await imd.client('bob');
  const before = bob.client.generation;
  assert.ok(before, 'a generation after the first sync');

  for (let n = 0; n < 3; n++) await alice.client.send({ to: 'bob', body: { n } });
  await waitFor(() => inConv(bob, CONV).length >= 3, { what: 'the first three' });
  assert.equal(bob.client.useq, 3);

  await run('redis-cli', ['-p', String(redis.port), 'FLUSHALL']);
  const after = [];
  for (let n = 3; n < 5; n++) after.push(await alice.client.send({ to: 'bob', body: { n } }));

  await waitFor(() => inConv(bob, CONV).length >= 5, { what: 'the two sent after the loss' });
  assert.deepEqual(inConv(bob, CONV).map((m) => m.body.n), [0, 1, 2, 3, 4], 'each once, none dropped');
  assert.deepEqual(inConv(bob, CONV).slice(3).map((m) => m.id), after.map((m) => m.id));
  assert.notEqual(bob.client.generation, before);
  assert.deepEqual(bob.events.generation, [{ from: before, to: bob.client.generation }]);
  // The useqs count again in the new generation.
  assert.ok(bob.client.useq <= 2, `useq ${bob.client.useq}`);
});
