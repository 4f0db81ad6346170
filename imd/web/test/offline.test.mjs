// Sends made while the server is away, and a server killed mid-stream: every message
// is committed once (the cid dedupes resends) and delivered once, in order.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Imd, waitFor, inConv, LIMIT } from './harness.mjs';
import { ImdError } from '../imd-client.js';

const CONV = 'd:alice~bob';

/** The cids of the send frames a recorder wrote, in order, repeats included. */
const sentCids = (rec) => rec.frames.filter((f) => f.type === 'send').map((f) => f.cid);

test('sends made while the server is down are delivered once after it restarts, with their cids', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const bob = await imd.client('bob');

  await imd.stop();
  await waitFor(() => alice.client.state !== 'open' && bob.client.state !== 'open', { what: 'both clients to see the server go' });
  const N = 10;
  const sends = Array.from({ length: N }, (_, n) => alice.client.send({ to: 'bob', body: { n } }));
  const settled = Promise.allSettled(sends);
  assert.equal(alice.client.pendingSends, N, 'queued, not refused');
  assert.deepEqual(sentCids(alice), [], 'nothing written while offline');

  await imd.restart();
  const results = await settled;
  assert.deepEqual(results.map((r) => r.status), Array(N).fill('fulfilled'));
  const committed = results.map((r) => r.value);
  assert.deepEqual(committed.map((m) => m.body.n), [...Array(N).keys()]);
  // Written after the reconnect, with the cids they were given when queued.
  assert.deepEqual(sentCids(alice), committed.map((m) => m.cid));

  const history = await imd.history(CONV);
  assert.equal(history.length, N, 'the server stored each message once');
  assert.deepEqual(history.map((m) => m.id), committed.map((m) => m.id));
  await waitFor(() => inConv(bob, CONV).length >= N, { what: 'bob to get the queued messages' });
  assert.deepEqual(inConv(bob, CONV).map((m) => m.id), history.map((m) => m.id));
});

test('a server killed mid-stream loses nothing and duplicates nothing: bob sees the history exactly, in order', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const bob = await imd.client('bob');

  const N = 60;
  const committed = [];
  const stream = (async () => {
    for (let n = 0; n < N; n++) committed.push(await alice.client.send({ to: 'bob', body: { n } }));
  })();
  await waitFor(() => inConv(bob, CONV).length >= 15, { what: 'the stream to be under way' });
  await imd.kill();
  await imd.restart();
  await stream;

  const history = await imd.history(CONV);
  assert.deepEqual(history.map((m) => m.body.n), [...Array(N).keys()], 'each message stored once, in order');
  assert.deepEqual(committed.map((m) => m.id), history.map((m) => m.id), 'each send resolved with its stored message');
  await waitFor(() => inConv(bob, CONV).length >= N, { what: `bob to get ${N} messages` });
  assert.deepEqual(inConv(bob, CONV).map((m) => m.id), history.map((m) => m.id), 'bob saw each once, in order');
  assert.ok(bob.events.state.some((s) => s.state === 'reconnecting'), 'bob did lose the connection');
});

test('a send written to a server that dies before answering is resent with the same cid and stored once', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const bob = await imd.client('bob');
  await alice.client.send({ to: 'bob', body: { n: 0 } });

  // A frozen server reads nothing: the send is on the wire and unanswered when it dies.
  imd.pause();
  const send = alice.client.send({ to: 'bob', body: { n: 1 } });
  const cid = await waitFor(() => sentCids(alice)[1], { what: 'the send to be written' });
  await imd.kill();
  await imd.restart();
  const msg = await send;

  assert.equal(msg.cid, cid);
  assert.ok(sentCids(alice).filter((c) => c === cid).length >= 2, 'written again after the reconnect');
  const history = await imd.history(CONV);
  assert.deepEqual(history.map((m) => m.body.n), [0, 1]);
  await waitFor(() => inConv(bob, CONV).length >= 2, { what: 'bob to get both' });
  assert.deepEqual(inConv(bob, CONV).map((m) => m.id), history.map((m) => m.id));
});

test('close() rejects unanswered sends with `closed` and stops reconnecting', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  // A witness with the same backoff: once it is back, alice would have been too.
  const carol = await imd.client('carol');

  await imd.stop();
  await waitFor(() => alice.client.state !== 'open' && carol.client.state !== 'open', { what: 'both to see the server go' });
  const send = alice.client.send({ to: 'bob', body: 'never' });
  alice.client.close();
  await assert.rejects(send, (e) => e instanceof ImdError && e.code === 'closed');
  assert.equal(alice.client.state, 'closed');
  const sockets = alice.frames.filter((f) => f.type === '$connect').length;

  await imd.restart();
  await waitFor(() => carol.events.synced.length >= 2, { what: 'the witness to reconnect' });
  assert.equal(alice.frames.filter((f) => f.type === '$connect').length, sockets, 'alice opened no socket after close()');
  const { connections } = await imd.admin('GET', '/admin/v1/connections?uid=alice');
  assert.deepEqual(connections, []);
  assert.equal(alice.events.state.at(-1).state, 'closed');
});
