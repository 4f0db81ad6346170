// Delivery between two users: each message once, in useq order, and each send
// resolved with the message the server committed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Imd, waitFor, inConv, LIMIT } from './harness.mjs';

const CONV = 'd:alice~bob';

test('bob sees each of alice\'s messages once, in order, and each send resolves with its committed message', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  // A small sync page, so that a device catching up reads several pages.
  const bob = await imd.client('bob', 'phone', { syncLimit: 7 });

  const N = 60;
  const committed = await Promise.all(
    Array.from({ length: N }, (_, n) => alice.client.send({ to: 'bob', body: { n } })),
  );
  assert.deepEqual(committed.map((m) => m.body.n), [...Array(N).keys()], 'each promise has its own message');
  assert.deepEqual(committed.map((m) => m.seq), [...Array(N).keys()].map((n) => n + 1), 'committed in send order');
  assert.equal(new Set(committed.map((m) => m.cid)).size, N, 'a cid of its own for each send');

  await waitFor(() => inConv(bob, CONV).length >= N, { what: `bob to get ${N} messages` });
  assert.deepEqual(inConv(bob, CONV).map((m) => m.id), committed.map((m) => m.id), 'bob sees each once, in order');
  assert.deepEqual(bob.msgs.map((m) => m.useq), [...Array(N).keys()].map((n) => n + 1), 'useqs delivered 1..N with no gap');
  assert.deepEqual(bob.client.unreadOf(CONV), N);
  // Alice's own device gets her messages too, in the same order.
  await waitFor(() => inConv(alice, CONV).length >= N, { what: 'alice\'s own pushes' });
  assert.deepEqual(inConv(alice, CONV).map((m) => m.id), committed.map((m) => m.id));
  assert.equal(alice.client.unreadOf(CONV), 0, 'her own messages are not unread to her');
  // Every push was acked: the server has nothing left in flight for bob.
  await waitFor(async () => {
    const { connections } = await imd.admin('GET', '/admin/v1/connections?uid=bob');
    return connections.length === 1 && connections[0].unacked === 0;
  }, { what: 'bob\'s pushes to be acked' });
});

test('a device that connects mid-stream gets the backlog by sync and the live pushes, each once, in order', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');

  const committed = await Promise.all(Array.from({ length: 40 }, (_, n) => alice.client.send({ to: 'bob', body: { n } })));
  // Alice keeps writing while bob's tablet connects and reads its inbox in pages of
  // 7, so that pushes arrive between (and ahead of) the sync pages.
  let stop = false;
  const stream = (async () => {
    while (!stop) committed.push(await alice.client.send({ to: 'bob', body: { n: committed.length } }));
  })();
  await waitFor(() => committed.length >= 45, { what: 'the stream to be under way' });
  const tablet = await imd.client('bob', 'tablet', { syncLimit: 7 });
  const atConnect = committed.length;
  await waitFor(() => committed.length >= atConnect + 20, { what: '20 more messages after the tablet caught up' });
  stop = true;
  await stream;

  const n = committed.length;
  await waitFor(() => tablet.msgs.length >= n, { what: `the tablet to get ${n} messages` });
  assert.deepEqual(tablet.msgs.map((m) => m.msg.id), committed.map((m) => m.id));
  assert.deepEqual(tablet.msgs.map((m) => m.useq), [...Array(n).keys()].map((i) => i + 1));
  assert.ok(tablet.frames.filter((f) => f.type === 'sync').length >= 6, 'it read its inbox in several pages');
});
