// The test harness: a real imd process on a free port with its own data dir, tokens
// minted by `imd token`, admin calls, and waiting for conditions (never for luck).
//
// IMD_BIN names the binary; by default the repository's target/debug/imd.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WS from 'ws';
import { ImdClient } from '../imd-client.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '../../..');
export const IMD_BIN = process.env.IMD_BIN ? resolve(process.env.IMD_BIN) : join(repoRoot, 'target/debug/imd');

const SECRET = 'imd-web-test-secret';
const ADMIN = 'imd-web-test-admin';
const run = promisify(execFile);

/** Each test's time limit: a send that never resolves fails its test, not the suite. */
export const LIMIT = { timeout: 20_000 };

/** Every server started, so that a failing or interrupted test leaves none behind. */
const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => process.exit(130));
}

/**
 * Waits until `cond()` returns a truthy value, and returns it; fails after `ms`
 * with `what` and the last value seen.
 */
export async function waitFor(cond, { ms = 10_000, what = 'condition' } = {}) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await cond();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A real imd process. */
export class Imd {
  /** @type {import('node:child_process').ChildProcess | null} */
  child = null;
  port = 0;
  logs = '';
  /** The clients made by client(), closed by dispose(). */
  clients = new Set();

  constructor(dataDir, port = 0, extraArgs = []) {
    this.dataDir = dataDir;
    this.port = port;
    this.extraArgs = extraArgs;
  }

  /** Starts imd on a free port with a fresh data dir. */
  static async start(extraArgs = []) {
    const imd = new Imd(mkdtempSync(join(tmpdir(), 'imd-web-')), 0, extraArgs);
    await imd.#spawn();
    return imd;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts imd again on the same port and data dir (after stop() or kill()). */
  async restart() {
    if (this.child) throw new Error('imd is still running');
    // The port was ours a moment ago; right after a kill it may take a moment to free.
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await this.#spawn();
        return;
      } catch (e) {
        if (Date.now() > deadline || !/in use/i.test(String(e.message))) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  #spawn() {
    const args = [
      'serve',
      '--listen', `127.0.0.1:${this.port}`,
      '--data-dir', this.dataDir,
      '--token-secret', SECRET,
      '--admin-token', ADMIN,
      // Tests reconnect many clients from one ip quickly.
      '--connect-rate', '0',
      ...this.extraArgs,
    ];
    const child = spawn(IMD_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    this.child = child;
    return new Promise((resolveReady, rejectReady) => {
      let out = '';
      const fail = (why) => {
        rejectReady(new Error(`imd did not start: ${why}\n${this.logs.slice(-4000)}`));
      };
      const timer = setTimeout(() => fail('no ready line within 15 s'), 15_000);
      child.on('error', (e) => {
        clearTimeout(timer);
        live.delete(child);
        this.child = null;
        fail(`${IMD_BIN}: ${e.message} (build it, or set IMD_BIN)`);
      });
      child.stderr.on('data', (d) => {
        this.logs = (this.logs + d).slice(-64_000);
      });
      child.stdout.on('data', (d) => {
        out += d;
        for (const line of out.split('\n').slice(0, -1)) {
          try {
            const ev = JSON.parse(line);
            if (ev.event === 'ready') {
              clearTimeout(timer);
              this.port = Number(ev.listen.split(':').pop());
              resolveReady();
            }
          } catch {
            // not the ready line
          }
        }
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        live.delete(child);
        if (this.child === child) this.child = null;
        fail(`exited with ${code ?? signal}`);
      });
    });
  }

  /** Stops imd with SIGTERM (a clean shutdown) and waits for it to exit. */
  stop() {
    return this.#signal('SIGTERM');
  }

  /** Kills imd with SIGKILL (a crash) and waits for it to exit. */
  kill() {
    return this.#signal('SIGKILL');
  }

  /** Freezes (SIGSTOP) or thaws (SIGCONT) imd. */
  pause(on = true) {
    this.child?.kill(on ? 'SIGSTOP' : 'SIGCONT');
  }

  #signal(sig) {
    const child = this.child;
    if (!child) return Promise.resolve();
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(sig);
    return exited;
  }

  /** Closes the clients made by client(), stops imd and removes its data dir. */
  async dispose() {
    for (const c of this.clients) c.close();
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A client token minted by `imd token` with the server's secret. */
  async token(uid, device = 'web', { ttl, roles = [] } = {}) {
    const args = ['token', '--uid', uid, '--device', device, '--platform', 'web', '--token-secret', SECRET, '--data-dir', this.dataDir];
    if (ttl) args.push('--ttl', ttl);
    for (const r of roles) args.push('--role', r);
    const { stdout } = await run(IMD_BIN, args);
    return stdout.trim();
  }

  /** An admin API call; resolves with the JSON answer, throws on a non-2xx status. */
  async admin(method, path, body) {
    const res = await fetch(this.url + path, {
      method,
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : {};
  }

  /** Every message of `conv` as the server stores it, in seq order. */
  async history(conv) {
    const all = [];
    for (let after = 0; ; ) {
      const page = await this.admin('GET', `/admin/v1/conversations/${encodeURIComponent(conv)}/messages?after=${after}&limit=1000`);
      all.push(...page.msgs);
      if (!page.more || page.msgs.length === 0) return all;
      after = page.msgs[page.msgs.length - 1].seq;
    }
  }

  /**
   * A connected client of `uid` on `device`, with what it delivered recorded:
   * `msgs` (each `{useq, msg}`), `frames` (every frame it wrote), `events` by name.
   * Backoffs are short so that tests reconnect fast.
   */
  async client(uid, device = 'web', options = {}) {
    const token = options.token ?? (await this.token(uid, device));
    const frames = [];
    const client = new ImdClient({
      url: this.url,
      token,
      WebSocket: recordingWebSocket(frames),
      minBackoffMs: 20,
      maxBackoffMs: 200,
      ...options,
    });
    this.clients.add(client);
    const rec = record(client);
    rec.frames = frames;
    if (options.connect !== false) await client.connect();
    return rec;
  }
}

/** Records what a client delivers; returns `{client, msgs, events}`. */
export function record(client) {
  const rec = { client, msgs: [], events: {} };
  client.on('message', (msg, useq) => rec.msgs.push({ useq, msg }));
  for (const name of ['read', 'typing', 'queue', 'state', 'recalled', 'unread', 'synced', 'generation', 'error']) {
    rec.events[name] = [];
    client.on(name, (e) => rec.events[name].push(e));
  }
  return rec;
}

/**
 * A `ws` WebSocket that records every frame it writes into `log` (parsed), and each
 * socket it opens as `{type: '$connect'}`.
 */
export function recordingWebSocket(log) {
  return class RecordingWebSocket extends WS {
    constructor(...args) {
      super(...args);
      log.push({ type: '$connect' });
    }

    send(data, ...rest) {
      try {
        log.push(JSON.parse(data));
      } catch {
        log.push(data);
      }
      return super.send(data, ...rest);
    }
  };
}

/** The messages of `conv` among what a recorder delivered, in delivery order. */
export function inConv(rec, conv) {
  return rec.msgs.filter((m) => m.msg.conv === conv).map((m) => m.msg);
}
