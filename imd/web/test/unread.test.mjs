// Unread counts and read positions across the devices of one user.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Imd, waitFor, LIMIT } from './harness.mjs';

const CONV = 'd:alice~bob';

test('a read on one device of bob updates the unread count on his other device, and alice sees it', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const alice = await imd.client('alice');
  const phone = await imd.client('bob', 'phone');
  const laptop = await imd.client('bob', 'laptop');

  for (const n of [1, 2, 3]) await alice.client.send({ to: 'bob', body: { n } });
  await waitFor(() => phone.client.unreadOf(CONV) === 3 && laptop.client.unreadOf(CONV) === 3, { what: '3 unread on both devices' });
  assert.equal(alice.client.unreadOf(CONV), 0, 'her own messages are not unread to alice');

  // Part of it: the laptop learns of the phone's read from the `read` frame alone.
  assert.equal(await phone.client.markRead(CONV, 2), 2);
  await waitFor(() => laptop.client.unreadOf(CONV) === 1, { what: 'the laptop to count 1 unread' });
  assert.deepEqual(laptop.events.read.at(-1), { conv: CONV, uid: 'bob', seq: 2 });
  assert.equal(phone.client.unreadOf(CONV), 1);
  await waitFor(() => alice.events.read.some((r) => r.uid === 'bob' && r.seq === 2), { what: 'alice to see bob\'s read' });

  // A new message counts on both devices; a read of everything clears both.
  await alice.client.send({ to: 'bob', body: { n: 4 } });
  await waitFor(() => laptop.client.unreadOf(CONV) === 2 && phone.client.unreadOf(CONV) === 2, { what: '2 unread on both' });
  assert.equal(await phone.client.markRead(CONV), 4, 'by default up to the last message seen');
  await waitFor(() => laptop.client.unreadOf(CONV) === 0, { what: 'the laptop to count 0 unread' });
  assert.deepEqual(laptop.events.unread.at(-1), { conv: CONV, unread: 0 });

  // bob replies from the laptop (seq 5): unread to alice until she writes (seq 6),
  // which moves her read position past it.
  await laptop.client.send({ to: 'alice', body: 'ok' });
  await waitFor(() => alice.client.unreadOf(CONV) === 1, { what: 'bob\'s reply to be unread to alice' });
  await alice.client.send({ to: 'bob', body: { n: 5 } });
  await waitFor(() => phone.client.unreadOf(CONV) === 1 && laptop.client.unreadOf(CONV) === 1, { what: '1 unread after the reply' });
  await waitFor(() => alice.client.unreadOf(CONV) === 0, { what: 'alice\'s own send to read bob\'s reply' });

  assert.equal(await phone.client.markRead(CONV), 6);

  // A device that was away reads everything from its inbox (where alice's last
  // message looks unread: read frames are not in it), then takes the read positions
  // from the conversation list: the counts agree with the server's.
  const tablet = await imd.client('bob', 'tablet');
  assert.equal(tablet.msgs.length, 6, 'the whole inbox');
  assert.equal(tablet.client.readSeqOf(CONV), 6);
  assert.equal(tablet.client.unreadOf(CONV), 0);
  const [entry] = (await tablet.client.conversations()).convs;
  assert.equal(entry.unread, 0, 'the server counts the same');
});
