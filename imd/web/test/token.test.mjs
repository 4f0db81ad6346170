// Tokens from a callback: called for every connection, and again when the server
// refuses the token it gave.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Imd, waitFor, inConv, LIMIT } from './harness.mjs';
import { ImdClient } from '../imd-client.js';

test('the token callback is called again on each reconnect, and after a refused token', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  let calls = 0;
  const token = async () => {
    calls += 1;
    // The first token is refused before the upgrade (401).
    return calls === 1 ? 'not-a-token' : imd.token('alice', 'web');
  };
  const alice = await imd.client('alice', 'web', { token });
  assert.equal(calls, 2, 'called once more after the refusal');
  assert.ok(alice.events.state.some((s) => s.state === 'reconnecting'), 'the refused connection was retried');
  assert.equal(alice.client.uid, 'alice', 'the uid comes from the token');

  // An operator disconnects alice: she reconnects with a fresh token.
  await imd.admin('DELETE', '/admin/v1/connections/alice');
  await waitFor(() => alice.events.synced.length >= 2, { what: 'alice to reconnect' });
  assert.equal(calls, 3);
  assert.equal(alice.events.state.filter((s) => s.state === 'reconnecting').at(-1).reason, 'admin');

  // And the new connection works.
  const bob = await imd.client('bob');
  const m = await bob.client.send({ to: 'alice', body: 'after the kick' });
  await waitFor(() => inConv(alice, m.conv).some((x) => x.id === m.id), { what: 'alice to get bob\'s message' });
});

test('an HTTP call refused for an expired token gets a fresh token and succeeds', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  let calls = 0;
  const tokens = [];
  const client = new ImdClient({
    url: imd.url,
    WebSocket: class {}, // never connected: HTTP calls only
    token: async () => {
      calls += 1;
      tokens.push(await imd.token('carol', 'web', { ttl: calls === 1 ? '1s' : '1h' }));
      return tokens.at(-1);
    },
  });
  t.after(() => client.close());

  assert.deepEqual((await client.conversations()).convs, []);
  assert.equal(calls, 1);
  const exp = JSON.parse(Buffer.from(tokens[0].split('.')[1], 'base64url')).exp;
  // Tokens are checked with no leeway, to the second.
  await waitFor(() => Date.now() / 1000 >= exp + 1, { ms: 5_000, what: 'the first token to expire' });
  assert.deepEqual((await client.conversations()).convs, []);
  assert.equal(calls, 2, 'a fresh token after the 401');
});

test('a device replaced by another connection of the same device stops, and says why', LIMIT, async (t) => {
  const imd = await Imd.start();
  t.after(() => imd.dispose());
  const first = await imd.client('alice', 'laptop');
  const second = await imd.client('alice', 'laptop');

  await waitFor(() => first.client.state === 'closed', { what: 'the first to close' });
  assert.equal(first.events.error.at(-1).code, 'replaced');
  assert.equal(second.client.state, 'open');
  const { connections } = await imd.admin('GET', '/admin/v1/connections?uid=alice');
  assert.equal(connections.length, 1);
});
