// Typing notices, recalls, and refused sends.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Imd, waitFor, inConv, LIMIT } from './harness.mjs';
import { ImdError } from '../imd-client.js';

const CONV = 'd:alice~bob';

test('typing reaches the other side and expires; a recall reaches it as an event in order', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const bob = await imd.client('bob', 'phone', { typingTtlMs: 300 });
  const first = await alice.client.send({ to: 'bob', body: 'hello' });

  assert.equal(alice.client.typing(CONV), true);
  assert.equal(alice.client.typing(CONV), false, 'throttled: one notice per few seconds');
  const on = await waitFor(() => bob.events.typing.find((e) => e.typing), { what: 'bob to see alice typing' });
  assert.equal(on.conv, CONV);
  assert.equal(on.uid, 'alice');
  assert.deepEqual(bob.client.typers(CONV), ['alice']);
  await waitFor(() => bob.events.typing.some((e) => !e.typing), { what: 'the typing notice to expire' });
  assert.deepEqual(bob.client.typers(CONV), []);
  assert.equal(alice.events.typing.length, 0, 'not echoed to the typist');

  const second = await alice.client.send({ to: 'bob', body: 'oops' });
  // Sending ends the throttle: bob stopped showing alice typing when the message came.
  assert.equal(alice.client.typing(CONV), true, 'typing right after a send is not throttled');
  assert.deepEqual(await alice.client.recall(CONV, second.seq), { conv: CONV, seq: second.seq });
  const recalled = await waitFor(() => bob.events.recalled[0], { what: 'bob to see the recall' });
  assert.equal(recalled.conv, CONV);
  assert.equal(recalled.seq, second.seq);
  assert.equal(recalled.msg.from, 'alice');
  // The event message comes in the conversation's order, after what it recalls.
  await waitFor(() => inConv(bob, CONV).length >= 3, { what: 'the event message' });
  assert.deepEqual(inConv(bob, CONV).map((m) => m.event?.type ?? m.body), ['hello', 'oops', 'recalled']);
  assert.equal(bob.client.unreadOf(CONV), 2, 'event messages are never unread');

  const { msgs } = await bob.client.history(CONV);
  assert.equal(msgs[1].recalled, true);
  assert.equal('body' in msgs[1], false, 'the body is gone');
  await assert.rejects(bob.client.recall(CONV, first.seq), (e) => e instanceof ImdError && e.code === 'forbidden' && e.status === 403);
});

test('refused sends reject with the protocol code; the sends after them go on', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  await imd.admin('PUT', '/admin/v1/words', { words: ['contraband'], policy: 'reject' });
  const alice = await imd.client('alice', 'web', { maxFrameBytes: 1024 });

  const sends = [
    alice.client.send({ to: 'bob', body: 'some contraband' }),
    alice.client.send({ to: 'not a uid', body: 'x' }),
    alice.client.send({ conv: 'd:carol~dave', body: 'x' }),
    alice.client.send({ to: 'bob', body: 'x'.repeat(2000) }),
    alice.client.send({ to: 'bob', shop: 's1', body: 'x' }),
    alice.client.send({ to: 'bob', body: 'fine' }),
  ];
  const results = await Promise.allSettled(sends);
  assert.deepEqual(
    results.map((r) => (r.status === 'fulfilled' ? r.value.body : r.reason instanceof ImdError && r.reason.code)),
    ['blocked_content', 'bad_request', 'forbidden', 'too_large', 'bad_request', 'fine'],
  );
  assert.equal(alice.client.state, 'open', 'refusals leave the connection open');
  assert.equal(alice.client.pendingSends, 0);
  assert.deepEqual((await imd.history(CONV)).map((m) => m.body), ['fine']);
});

test('presence tells who of the users sharing a conversation is online', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const bob = await imd.client('bob');
  await alice.client.send({ to: 'bob', body: 'hi' });

  assert.deepEqual(await alice.client.presence(['bob', 'stranger']), [{ uid: 'bob', online: true }]);
  bob.client.close();
  await waitFor(async () => (await alice.client.presence(['bob']))[0]?.online === false, { what: 'bob to be offline' });
});

test('a message over the server\'s frame limit is refused with too_large, not resent forever', LIMIT, async (t) => {
  const imd = await Imd.start(['--max-frame-bytes', '4096']);
  t.after(() => imd.dispose());
  // The client believes in a larger limit than the server's.
  const alice = await imd.client('alice', 'web', { maxFrameBytes: 65_536 });

  await assert.rejects(alice.client.send({ to: 'bob', body: 'x'.repeat(10_000) }), (e) => e.code === 'too_large');
  assert.equal((await alice.client.send({ to: 'bob', body: 'small' })).body, 'small', 'the next send goes through');
  assert.deepEqual((await imd.history(CONV)).map((m) => m.body), ['small']);
});

test('event messages of a service conversation reach both sides in order and are never unread', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  await imd.admin('PUT', '/admin/v1/shops/shop1/agents', { agents: ['ann'] });
  const ann = await imd.client('ann', 'desk', { token: await imd.token('ann', 'desk', { roles: ['agent'] }) });
  const carol = await imd.client('carol');

  const question = await carol.client.send({ shop: 'shop1', body: 'in stock?' });
  const conv = question.conv;
  assert.equal(conv, 's:shop1~carol');
  const detail = await carol.client.conversation(conv);
  assert.deepEqual([detail.kind, detail.agent, detail.open], ['service', 'ann', true]);
  await imd.admin('POST', `/admin/v1/conversations/${conv}/close`);
  const kinds = (rec) => inConv(rec, conv).map((m) => m.event?.type ?? m.body);
  await waitFor(() => kinds(carol).length >= 3 && kinds(ann).length >= 3, { what: 'the events on both sides' });
  assert.deepEqual(kinds(carol), ['in stock?', 'assigned', 'closed']);
  assert.deepEqual(kinds(ann), ['in stock?', 'assigned', 'closed']);
  assert.equal(inConv(ann, conv)[1].event.agent, 'ann');
  assert.equal(ann.client.unreadOf(conv), 1, 'the question only');
  assert.equal(carol.client.unreadOf(conv), 0);
});
