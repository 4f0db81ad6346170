// imd-client: the JavaScript SDK for imd, the instant-messaging daemon.
//
// One self-contained ES module with no imports (imd serves it as /sdk/imd-client.js).
// It runs in browsers (global WebSocket and fetch) and in Node 20 (global fetch; pass
// a WebSocket constructor, e.g. the `ws` package's, as the `WebSocket` option).
//
// What it owns, and why it is built this way:
// - Delivery. The server writes every message of a user into the user's inbox under
//   the next `useq` (1, 2, 3, … with no gaps) and pushes it; a device that was away
//   reads the inbox with `sync`. This client syncs from the last delivered useq on
//   every (re)connect until `more: false`, acks every push, drops any useq it has
//   already delivered, holds pushes that arrive ahead of a missing useq, and fills a
//   gap that does not close by itself with another sync. So the app's `message`
//   listeners see each useq once, in useq order, and never a hole.
// - Sends. Each send carries a cid (crypto.randomUUID unless the app gives one). A
//   send stays queued until the server answers `sent` or refuses it; after a
//   reconnect everything unanswered goes out again with the same cid, and the server
//   answers a repeated cid with the message it already committed. `internal` answers
//   are retried after a backoff; refusals reject the promise with an ImdError.
// - Unread counts, computed the way the server computes them (messages of others,
//   not event messages, with seq above the user's read position), kept current from
//   pushes and `read` frames, and corrected from the conversation list after each
//   (re)connect, because read positions moved while a device was away are not in the
//   inbox.
// Requests whose answer the app needs (read marking, recall, agent status, close,
// rating) go over HTTP: their WebSocket error frames carry no id to match them with.

/** An error of the protocol (its `code`), or of the client (`closed`, `network`, …). */
export class ImdError extends Error {
  /**
   * @param {string} code protocol error code (`forbidden`, `rate_limited`, …) or a
   *   client one: `closed`, `network`, `replaced`, `http_<status>`
   * @param {string} message
   * @param {{status?: number, cid?: string, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'ImdError';
    this.code = code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.cid !== undefined) this.cid = extra.cid;
  }
}

/** Send error codes that are the server's fault: the send is retried, not rejected. */
const TRANSIENT = new Set(['internal']);

/** How many delivered message ids are kept, to skip them after the server lost state. */
const RECENT_IDS = 4096;

const DEFAULTS = {
  after: 0,
  generation: null,
  minBackoffMs: 250,
  maxBackoffMs: 30_000,
  pingMs: 20_000,
  connectTimeoutMs: 10_000,
  syncLimit: 100,
  gapMs: 250,
  typingTtlMs: 5_000,
  typingEveryMs: 3_000,
  maxFrameBytes: 65_536,
  refreshUnread: true,
};

const encoder = new TextEncoder();

/**
 * A connection to imd for one user's device. See README.md for the guarantees.
 */
export class ImdClient {
  #o;
  #WS;
  #fetch;
  #base;
  #wsUrl;
  #listeners = new Map();

  // Connection.
  #started = false;
  #closed = false;
  #phase = 'idle';
  #socket = null; // the open socket; null while connecting or offline
  #connecting = null; // the socket being opened
  #connId = 0;
  #attempt = 0;
  #kick = null;
  #timers = new Set();
  #reconnectTimer = null;
  #connectTimer = null;
  #liveTimer = null;
  #lastRecv = 0;
  #ready;
  #readyResolve;
  #readyReject;

  // Token.
  #token = null;
  #tokenPromise = null;
  #uid = null;
  #device = null;

  // Delivery.
  #useq;
  #generation = null; // the server's store generation that #useq counts in
  #recent = new Set(); // ids of the last RECENT_IDS messages delivered
  #afterLoss = false; // the server lost state once: skip what was delivered already
  #held = new Map(); // useq -> msg, pushed or synced ahead of a missing useq
  #syncing = false;
  #catchingUp = false; // from a connection's open to its first complete sync
  #gapTimer = null;
  #acks = [];

  // Sends, by cid, in the order they were made.
  #pending = new Map();

  // Conversation state: conv -> {read, last, seen, extra, extraMax}.
  #convs = new Map();
  // conv -> Map(uid -> timer) of who is typing.
  #typing = new Map();
  #typingSent = new Map();
  #status = null;

  /**
   * @param {object} options see README.md or imd-client.d.ts (ImdClientOptions)
   */
  constructor(options = {}) {
    this.#o = { ...DEFAULTS, ...options };
    this.#WS = options.WebSocket ?? globalThis.WebSocket;
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof this.#WS !== 'function') {
      throw new TypeError('no WebSocket constructor: pass one as the WebSocket option (in Node: the ws package)');
    }
    if (typeof this.#fetch !== 'function') throw new TypeError('no fetch: pass one as the fetch option');
    if (options.token === undefined) throw new TypeError('the token option is required');
    const base = options.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError('the url option is required (e.g. "http://127.0.0.1:8080")');
    this.#base = String(base).replace(/\/+$/, '');
    this.#wsUrl = options.wsUrl ?? `${this.#base.replace(/^http/, 'ws')}/v1/ws`;
    this.#useq = Number(this.#o.after) || 0;
    this.#generation = typeof this.#o.generation === 'string' && this.#o.generation !== '' ? this.#o.generation : null;
    if (typeof options.token === 'string') this.#setToken(options.token);
    this.#uid = options.uid ?? this.#uid;
    this.#ready = new Promise((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    // Nobody may be waiting on connect(): a rejection must not be reported as unhandled.
    this.#ready.catch(() => {});
  }

  // ---------------------------------------------------------------- public state

  /** The user's uid (the token's `sub`), once a token is known. */
  get uid() {
    return this.#uid;
  }

  /** The device id (the token's `dev`), once a token is known. */
  get device() {
    return this.#device;
  }

  /** The last useq delivered to `message` listeners; persist it and pass it as `after`. */
  get useq() {
    return this.#useq;
  }

  /**
   * The server's store generation that `useq` counts in (null before the first sync);
   * persist it with `useq` and pass it as `generation`.
   */
  get generation() {
    return this.#generation;
  }

  /** `connecting`, `open`, `reconnecting` or `closed` (`idle` before connect()). */
  get state() {
    return this.#phase;
  }

  /** Unread count of every conversation this client knows of, as a new Map. */
  get unread() {
    const out = new Map();
    for (const [conv, c] of this.#convs) out.set(conv, unreadOf(c));
    return out;
  }

  /** Unread count of one conversation (0 when unknown). */
  unreadOf(conv) {
    const c = this.#convs.get(conv);
    return c ? unreadOf(c) : 0;
  }

  /** The user's read position in `conv` as far as this client knows (0 when unknown). */
  readSeqOf(conv) {
    return this.#convs.get(conv)?.read ?? 0;
  }

  /** The highest seq of `conv` this client has seen (0 when unknown). */
  lastSeqOf(conv) {
    return this.#convs.get(conv)?.last ?? 0;
  }

  /** Uids typing in `conv` now (their typing notice has not expired). */
  typers(conv) {
    return [...(this.#typing.get(conv)?.keys() ?? [])];
  }

  // ---------------------------------------------------------------- events

  /**
   * Listens to an event: `message`, `read`, `typing`, `queue`, `state`, `recalled`,
   * `unread`, `synced`, `error`. Returns a function that removes the listener.
   */
  on(name, fn) {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  #emit(name, ...args) {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // A failing listener must not stop delivery to the others, nor the client.
        if (name === 'error') console.error('imd-client: an error listener threw', e);
        else this.#emit('error', e);
      }
    }
  }

  // ---------------------------------------------------------------- connection

  /**
   * Starts connecting (once; later calls only wait). Resolves when the client is
   * first connected and caught up (synced, unread counts refreshed). It keeps trying
   * while the server is unreachable; it rejects only if close() comes first.
   * @returns {Promise<void>}
   */
  connect() {
    if (!this.#started && !this.#closed) {
      this.#started = true;
      this.#open();
    }
    return this.#ready;
  }

  /** Closes the connection and stops reconnecting; unanswered sends reject with `closed`. */
  close() {
    this.#shutdown(new ImdError('closed', 'the client was closed'));
  }

  #shutdown(err) {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    clearInterval(this.#liveTimer);
    for (const users of this.#typing.values()) for (const t of users.values()) clearTimeout(t);
    this.#typing.clear();
    for (const ws of [this.#socket, this.#connecting]) if (ws) closeQuietly(ws, 1000);
    this.#socket = this.#connecting = null;
    for (const p of this.#pending.values()) {
      clearTimeout(p.retry);
      p.reject(err);
    }
    this.#pending.clear();
    this.#readyReject(err);
    this.#setState({ state: 'closed', attempt: this.#attempt });
  }

  #setState(s) {
    this.#phase = s.state;
    this.#emit('state', s);
  }

  #later(fn, ms) {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
    return t;
  }

  #cancel(t) {
    if (t) {
      clearTimeout(t);
      this.#timers.delete(t);
    }
  }

  async #open() {
    if (this.#closed) return;
    const id = ++this.#connId;
    this.#kick = null;
    this.#setState({ state: 'connecting', attempt: this.#attempt });
    let token;
    try {
      token = await this.#refreshToken();
    } catch (e) {
      if (this.#closed || id !== this.#connId) return;
      this.#emit('error', asImdError(e, 'token'));
      this.#reconnect('token');
      return;
    }
    if (this.#closed || id !== this.#connId) return;
    let ws;
    try {
      ws = new this.#WS(`${this.#wsUrl}?token=${encodeURIComponent(token)}`);
    } catch (e) {
      this.#emit('error', asImdError(e, 'network'));
      this.#reconnect('error');
      return;
    }
    this.#connecting = ws;
    // A server that accepts TCP but never answers the upgrade must not stall us.
    this.#connectTimer = this.#later(() => {
      if (this.#connecting === ws) this.#lost(ws, 'timeout');
    }, this.#o.connectTimeoutMs);
    ws.onopen = () => {
      if (this.#connecting !== ws) return;
      this.#cancel(this.#connectTimer);
      this.#connecting = null;
      this.#socket = ws;
      this.#lastRecv = Date.now();
      this.#setState({ state: 'open', attempt: this.#attempt });
      this.#watchLiveness(ws);
      // The server makes every agent available when it connects.
      if (this.#status === 'away') this.#write({ type: 'status', status: 'away' });
      this.#syncing = false;
      this.#catchingUp = true;
      this.#sync();
      for (const p of this.#pending.values()) if (!p.retry) this.#writeSend(p);
    };
    ws.onmessage = (ev) => {
      if (this.#socket !== ws) return;
      this.#lastRecv = Date.now();
      let frame;
      try {
        frame = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
      } catch {
        return;
      }
      this.#onFrame(frame);
    };
    ws.onerror = () => {}; // a close event follows, and says it
    ws.onclose = (ev) => {
      if (this.#socket !== ws && this.#connecting !== ws) return;
      if (ev.code === 1009) this.#tooLarge(id);
      this.#lost(ws, this.#kick ?? `close ${ev.code}`);
    };
  }

  /** The socket `ws` is gone (closed, timed out, or silent): reconnect. */
  #lost(ws, reason) {
    if (this.#socket !== ws && this.#connecting !== ws) return;
    this.#socket = this.#connecting = null;
    this.#cancel(this.#connectTimer);
    clearInterval(this.#liveTimer);
    this.#cancel(this.#gapTimer);
    this.#gapTimer = null;
    this.#syncing = false;
    this.#acks = [];
    closeQuietly(ws, 1000);
    // Unanswered sends go out again, same cid, on the next connection.
    for (const p of this.#pending.values()) p.conn = 0;
    if (this.#closed) return;
    if (this.#kick === 'replaced') {
      // Another connection of this uid and device took over: reconnecting would
      // take it back, and the two would replace each other forever.
      const err = new ImdError('replaced', 'another connection of this device took over');
      this.#emit('error', err);
      this.#shutdown(err);
      return;
    }
    this.#reconnect(reason);
  }

  /**
   * The server closed connection `id` for a frame over its size limit (1009), which
   * means a smaller limit than maxFrameBytes: the largest send written on it is
   * refused rather than resent into the same close forever.
   */
  #tooLarge(id) {
    let big = null;
    for (const p of this.#pending.values()) {
      if (p.conn === id && (!big || p.frame.length > big.frame.length)) big = p;
    }
    if (!big) return;
    this.#pending.delete(big.cid);
    big.reject(new ImdError('too_large', 'the server closed the connection: frame too large (1009)', { cid: big.cid }));
  }

  #reconnect(reason) {
    this.#attempt += 1;
    // Exponential backoff with full jitter: anywhere in [0, min·2^(attempt-1)], capped.
    const cap = Math.min(this.#o.maxBackoffMs, this.#o.minBackoffMs * 2 ** (this.#attempt - 1));
    const delayMs = Math.floor(Math.random() * cap);
    this.#setState({ state: 'reconnecting', attempt: this.#attempt, delayMs, reason });
    this.#cancel(this.#reconnectTimer);
    this.#reconnectTimer = this.#later(() => this.#open(), delayMs);
  }

  /** Pings when quiet; drops a connection silent for two ping intervals. */
  #watchLiveness(ws) {
    clearInterval(this.#liveTimer);
    const every = Math.max(50, Math.floor(this.#o.pingMs / 2));
    this.#liveTimer = setInterval(() => {
      const quiet = Date.now() - this.#lastRecv;
      if (quiet >= 2 * this.#o.pingMs) this.#lost(ws, 'silent');
      else if (quiet >= this.#o.pingMs) this.#write({ type: 'ping' });
    }, every);
  }

  #write(frame) {
    const ws = this.#socket;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---------------------------------------------------------------- frames

  #onFrame(f) {
    switch (f.type) {
      case 'msg':
        this.#ack(f.useq);
        this.#accept(f.useq, f.msg);
        this.#drain();
        this.#checkGap();
        break;
      case 'synced':
        this.#onSynced(f);
        break;
      case 'sent':
        this.#onSent(f);
        break;
      case 'error':
        this.#onError(f);
        break;
      case 'kick':
        this.#kick = String(f.reason ?? 'kick');
        break;
      case 'read':
        if (f.uid === this.#uid) this.#moveRead(f.conv, f.seq);
        this.#emit('read', { conv: f.conv, uid: f.uid, seq: f.seq });
        break;
      case 'typing':
        this.#onTyping(f.conv, f.uid);
        break;
      case 'queue':
        this.#emit('queue', { conv: f.conv, position: f.position });
        break;
      default:
        // pong, recalled (we recall over HTTP), and frame types added later.
        break;
    }
  }

  #ack(useq) {
    if (!Number.isSafeInteger(useq)) return;
    this.#acks.push(useq);
    // One ack frame for all the pushes of one read from the socket.
    if (this.#acks.length === 1) {
      queueMicrotask(() => {
        if (this.#acks.length === 0) return;
        const useqs = this.#acks;
        this.#acks = [];
        this.#write({ type: 'ack', useqs });
      });
    }
  }

  #accept(useq, msg) {
    if (!Number.isSafeInteger(useq) || useq <= this.#useq || !msg) return;
    this.#held.set(useq, msg);
  }

  /** Delivers every held message that follows the last delivered one. */
  #drain() {
    while (!this.#closed) {
      const next = this.#useq + 1;
      const msg = this.#held.get(next);
      if (msg === undefined) break;
      this.#held.delete(next);
      this.#useq = next;
      this.#deliver(next, msg);
    }
  }

  #deliver(useq, msg) {
    if (this.#afterLoss && this.#recent.has(msg.id)) return;
    this.#recent.add(msg.id);
    if (this.#recent.size > RECENT_IDS) this.#recent.delete(this.#recent.values().next().value);
    const c = this.#conv(msg.conv);
    if (msg.seq > c.last) c.last = msg.seq;
    // Event messages move no read position and are never unread.
    if (!msg.event && msg.from === this.#uid) {
      // Sending moves the sender's read position to the message.
      this.#moveRead(msg.conv, msg.seq);
    } else if (!msg.event) {
      this.#stopTyping(msg.conv, msg.from);
      if (msg.seq > c.read && !c.seen.has(msg.seq)) {
        c.seen.add(msg.seq);
        // It was one of the unseen ones the conversation list counted.
        if (msg.seq <= c.extraMax && c.extra > 0) c.extra -= 1;
        else this.#unreadChanged(msg.conv, c);
      }
    }
    this.#emit('message', msg, useq);
    if (msg.event?.type === 'recalled') {
      const e = { conv: msg.conv, seq: msg.event.seq, msg };
      if (msg.event.by !== undefined) e.by = msg.event.by;
      this.#emit('recalled', e);
    }
  }

  #checkGap() {
    if (this.#syncing || this.#gapTimer || this.#held.size === 0 || this.#held.has(this.#useq + 1)) return;
    // A push may briefly overtake another (cluster mode); give the gap a moment to
    // close by itself before reading the inbox.
    this.#gapTimer = this.#later(() => {
      this.#gapTimer = null;
      if (this.#held.size > 0 && !this.#held.has(this.#useq + 1)) this.#sync();
    }, this.#o.gapMs);
  }

  #sync(after = this.#useq) {
    if (this.#syncing || !this.#socket) return;
    this.#syncing = this.#write({ type: 'sync', after, limit: this.#o.syncLimit });
  }

  #onSynced(f) {
    this.#syncing = false;
    if (typeof f.generation === 'string' && f.generation !== '' && f.generation !== this.#generation) {
      const from = this.#generation;
      this.#generation = f.generation;
      if (from !== null) {
        // The server lost state it had acknowledged and gives useqs again: what this
        // page holds counts from another start. Start over from the inbox's beginning,
        // skipping the messages already delivered (by id).
        this.#useq = 0;
        this.#held.clear();
        this.#afterLoss = true;
        this.#emit('generation', { from, to: f.generation });
        this.#sync(0);
        return;
      }
    }
    const msgs = Array.isArray(f.msgs) ? f.msgs : [];
    // What retention removed is gone for good: continue from the oldest entry kept.
    if (f.trimmed && msgs.length > 0 && msgs[0].useq > this.#useq + 1) {
      this.#useq = msgs[0].useq - 1;
      for (const u of this.#held.keys()) if (u <= this.#useq) this.#held.delete(u);
    }
    for (const e of msgs) this.#accept(e.useq, e.msg);
    this.#drain();
    if (this.#closed) return;
    if (f.more) {
      const last = msgs.length > 0 ? msgs[msgs.length - 1].useq : this.#useq;
      this.#sync(Math.max(last, this.#useq));
      return;
    }
    this.#checkGap();
    if (!this.#catchingUp) return;
    this.#catchingUp = false;
    this.#attempt = 0;
    this.#emit('synced', { useq: this.#useq });
    if (this.#o.refreshUnread) {
      const id = this.#connId;
      this.conversations({ limit: 50 })
        .catch((e) => {
          if (!this.#closed) this.#emit('error', asImdError(e, 'network'));
        })
        .finally(() => {
          if (id === this.#connId) this.#readyResolve();
        });
    } else {
      this.#readyResolve();
    }
  }

  #onSent(f) {
    const p = this.#pending.get(f.cid);
    if (!p) return;
    this.#pending.delete(f.cid);
    clearTimeout(p.retry);
    this.#timers.delete(p.retry);
    const c = f.msg && this.#conv(f.msg.conv);
    if (c && f.msg.seq > c.last) c.last = f.msg.seq;
    p.resolve(f.msg);
  }

  #onError(f) {
    const err = new ImdError(f.code ?? 'internal', f.message ?? '', f.cid ? { cid: f.cid } : {});
    const p = f.cid !== undefined ? this.#pending.get(f.cid) : undefined;
    if (p) {
      if (TRANSIENT.has(err.code)) {
        p.tries += 1;
        p.conn = 0;
        this.#cancel(p.retry);
        const cap = Math.min(this.#o.maxBackoffMs, this.#o.minBackoffMs * 2 ** p.tries);
        p.retry = this.#later(() => {
          p.retry = null;
          this.#writeSend(p);
        }, Math.floor(Math.random() * cap));
      } else {
        this.#pending.delete(f.cid);
        p.reject(err);
      }
      return;
    }
    // Without a cid: a failed sync (the store failed), or a refused typing notice.
    if (this.#syncing && err.code === 'internal') {
      this.#syncing = false;
      this.#cancel(this.#gapTimer);
      this.#gapTimer = this.#later(() => {
        this.#gapTimer = null;
        this.#sync();
      }, Math.max(this.#o.gapMs, this.#o.minBackoffMs));
    }
    this.#emit('error', err);
  }

  // ---------------------------------------------------------------- sending

  /**
   * Sends a message to exactly one of `to` (a uid), `conv` or `shop`. Resolves with
   * the committed message; rejects with an ImdError for a refusal. Offline, the send
   * waits for the connection; it is never sent twice (the cid dedupes resends).
   * @param {{to?: string, conv?: string, shop?: string, body: unknown, cid?: string}} m
   * @returns {Promise<object>}
   */
  /** The conversation a `to` or `shop` send goes to, once the uid is known. */
  #convOf(m) {
    const me = this.#uid;
    if (!me) return null;
    if (m.to !== undefined) return me <= m.to ? `d:${me}~${m.to}` : `d:${m.to}~${me}`;
    if (m.shop !== undefined) return `s:${m.shop}~${me}`;
    return null;
  }

  send(m) {
    const targets = ['to', 'conv', 'shop'].filter((k) => m?.[k] !== undefined);
    if (targets.length !== 1) {
      return Promise.reject(new ImdError('bad_request', 'give exactly one of to, conv or shop'));
    }
    if (m.body === undefined || m.body === null) {
      return Promise.reject(new ImdError('bad_request', 'a message needs a body (any JSON but null)'));
    }
    if (this.#closed) return Promise.reject(new ImdError('closed', 'the client was closed'));
    // The other side stops showing us typing when this message arrives: typing again
    // right after it must not wait for the throttle.
    const conv = m.conv ?? this.#convOf(m);
    if (conv) this.#typingSent.delete(conv);
    const cid = m.cid ?? globalThis.crypto.randomUUID();
    const existing = this.#pending.get(cid);
    if (existing) return existing.promise;
    const target = targets[0];
    const frame = JSON.stringify({ type: 'send', cid, [target]: m[target], body: m.body });
    if (encoder.encode(frame).length > this.#o.maxFrameBytes) {
      // The server would close the connection (1009), and the resend would again.
      return Promise.reject(new ImdError('too_large', `the message is over ${this.#o.maxFrameBytes} bytes`, { cid }));
    }
    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const p = { cid, frame, resolve, reject, promise, conn: 0, tries: 0, retry: null };
    this.#pending.set(cid, p);
    if (this.#socket) this.#writeSend(p);
    return promise;
  }

  /** Number of sends not answered yet (queued offline or waiting for `sent`). */
  get pendingSends() {
    return this.#pending.size;
  }

  #writeSend(p) {
    if (p.conn === this.#connId || !this.#pending.has(p.cid)) return;
    if (this.#write(p.frame)) p.conn = this.#connId;
  }

  // ---------------------------------------------------------------- typing

  /**
   * Tells the other members that the user is typing in `conv`. Call it on every
   * keystroke: at most one notice goes out per `typingEveryMs`. Returns whether one
   * went out. Not queued while offline.
   */
  typing(conv) {
    const now = Date.now();
    if (now - (this.#typingSent.get(conv) ?? -Infinity) < this.#o.typingEveryMs) return false;
    if (!this.#write({ type: 'typing', conv })) return false;
    this.#typingSent.set(conv, now);
    return true;
  }

  #onTyping(conv, uid) {
    let users = this.#typing.get(conv);
    if (!users) this.#typing.set(conv, (users = new Map()));
    clearTimeout(users.get(uid));
    const expiresAt = Date.now() + this.#o.typingTtlMs;
    users.set(
      uid,
      setTimeout(() => this.#stopTyping(conv, uid), this.#o.typingTtlMs),
    );
    this.#emit('typing', { conv, uid, typing: true, expiresAt });
  }

  #stopTyping(conv, uid) {
    const users = this.#typing.get(conv);
    const t = users?.get(uid);
    if (t === undefined) return;
    clearTimeout(t);
    users.delete(uid);
    if (users.size === 0) this.#typing.delete(conv);
    this.#emit('typing', { conv, uid, typing: false });
  }

  // ---------------------------------------------------------------- unread

  #conv(conv) {
    let c = this.#convs.get(conv);
    if (!c) {
      // read: the user's read position; seen: seqs of others' messages above it that
      // this client has delivered; extra: those above it the conversation list
      // counted and this client has not seen, all at or below extraMax.
      c = { read: 0, last: 0, seen: new Set(), extra: 0, extraMax: 0 };
      this.#convs.set(conv, c);
    }
    return c;
  }

  #moveRead(conv, seq) {
    const c = this.#conv(conv);
    if (!(seq > c.read)) return;
    const before = unreadOf(c);
    c.read = seq;
    if (seq > c.last) c.last = seq;
    for (const s of c.seen) if (s <= seq) c.seen.delete(s);
    c.extra = Math.min(c.extra, unseenRoom(c));
    if (unreadOf(c) !== before) this.#unreadChanged(conv, c);
  }

  /** Takes a conversation list entry as the truth about what is unread. */
  #seed(e) {
    if (!e || typeof e.conv !== 'string') return;
    const c = this.#conv(e.conv);
    const before = unreadOf(c);
    const last = e.last?.seq ?? 0;
    if (last > c.last) c.last = last;
    if ((e.read_seq ?? 0) > c.read) {
      c.read = e.read_seq;
      for (const s of c.seen) if (s <= c.read) c.seen.delete(s);
    }
    c.extraMax = Math.max(c.extraMax, last);
    // Exact when the list and this client agree on the read position; when this
    // client knows a later one, an upper bound until the next read or refresh.
    const counted = Math.min(e.unread ?? 0, Math.max(0, last - c.read));
    let seenIn = 0;
    for (const s of c.seen) if (s <= last) seenIn += 1;
    c.extra = Math.min(Math.max(0, counted - seenIn), unseenRoom(c));
    if (unreadOf(c) !== before) this.#unreadChanged(e.conv, c);
  }

  #unreadChanged(conv, c) {
    this.#emit('unread', { conv, unread: unreadOf(c) });
  }

  // ---------------------------------------------------------------- HTTP calls

  /**
   * One page of the user's conversations, newest activity first. Also refreshes the
   * unread counts of the conversations it lists.
   * @param {{limit?: number, before?: string}} [opts]
   * @returns {Promise<{convs: object[], next?: string}>}
   */
  async conversations({ limit, before } = {}) {
    const q = new URLSearchParams();
    if (limit !== undefined) q.set('limit', String(limit));
    if (before !== undefined) q.set('before', before);
    const page = await this.#http('GET', `/v1/conversations${query(q)}`);
    for (const e of page.convs ?? []) this.#seed(e);
    return page;
  }

  /** A conversation's detail: `conv`, `kind`, `members`, `read`, and for service ones `agent`, `open`, `queue_position`. */
  conversation(conv) {
    return this.#http('GET', `/v1/conversations/${seg(conv)}`);
  }

  /**
   * A page of a conversation's messages with `seq > after`.
   * @returns {Promise<{msgs: object[], more: boolean}>}
   */
  history(conv, { after, limit } = {}) {
    const q = new URLSearchParams();
    if (after !== undefined) q.set('after', String(after));
    if (limit !== undefined) q.set('limit', String(limit));
    return this.#http('GET', `/v1/conversations/${seg(conv)}/messages${query(q)}`);
  }

  /**
   * Marks `conv` read up to `seq` (default: its last message as far as this client
   * knows). Resolves with the user's read position after it.
   * @returns {Promise<number>}
   */
  async markRead(conv, seq) {
    let s = seq ?? this.#convs.get(conv)?.last;
    if (!s) s = (await this.conversation(conv)).last_seq ?? 0;
    const { read_seq } = await this.#http('POST', `/v1/conversations/${seg(conv)}/read`, { seq: s });
    this.#moveRead(conv, read_seq);
    return read_seq;
  }

  /** Recalls the user's own message `seq` of `conv`. Resolves with `{conv, seq}`. */
  recall(conv, seq) {
    return this.#http('DELETE', `/v1/conversations/${seg(conv)}/messages/${seg(String(seq))}`);
  }

  /**
   * Who of `uids` is online, among the users who share a conversation with this one.
   * @returns {Promise<{uid: string, online: boolean, last_seen?: number}[]>}
   */
  async presence(uids) {
    const q = new URLSearchParams();
    for (const u of uids) q.append('uid', u);
    return (await this.#http('GET', `/v1/presence${query(q)}`)).users ?? [];
  }

  /**
   * An agent's availability, `available` or `away`. Kept across reconnects (the
   * server makes an agent available whenever it connects).
   * Needs imd with the customer-service workflow.
   */
  async setStatus(status) {
    if (status !== 'available' && status !== 'away') {
      throw new ImdError('bad_request', 'status is "available" or "away"');
    }
    const answer = await this.#http('PUT', '/v1/agent/status', { status });
    this.#status = status;
    return answer;
  }

  /** Closes a service conversation (its assigned agent). Needs imd with the customer-service workflow. */
  closeConversation(conv) {
    return this.#http('POST', `/v1/conversations/${seg(conv)}/close`);
  }

  /** Rates a closed service conversation, score 1..5 (its customer, once). Needs imd with the customer-service workflow. */
  rate(conv, score, comment) {
    const body = comment === undefined ? { score } : { score, comment };
    return this.#http('POST', `/v1/conversations/${seg(conv)}/rating`, body);
  }

  async #http(method, path, body, retried = false) {
    const token = this.#token ?? (await this.#refreshToken());
    const headers = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await this.#fetch(this.#base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ImdError('network', `${method} ${path}: ${e?.message ?? e}`, { cause: e });
    }
    // The token expired or was revoked: get a fresh one, once.
    if (res.status === 401 && !retried && typeof this.#o.token === 'function') {
      await this.#refreshToken();
      return this.#http(method, path, body, true);
    }
    const text = await res.text();
    let json;
    try {
      json = text ? JSON.parse(text) : {};
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = json?.error;
      throw new ImdError(e?.code ?? `http_${res.status}`, e?.message ?? text, { status: res.status });
    }
    if (json === undefined) throw new ImdError('internal', `${method} ${path}: the answer is not JSON`);
    return json;
  }

  /** Gets a token from the option (calling it when it is a function); one call at a time. */
  #refreshToken() {
    const t = this.#o.token;
    if (typeof t !== 'function') return Promise.resolve(t);
    this.#tokenPromise ??= (async () => {
      try {
        const token = await t();
        if (typeof token !== 'string' || token === '') throw new ImdError('unauthorized', 'the token callback gave no token');
        this.#setToken(token);
        return token;
      } finally {
        this.#tokenPromise = null;
      }
    })();
    return this.#tokenPromise;
  }

  #setToken(token) {
    this.#token = token;
    const claims = jwtClaims(token);
    if (claims) {
      this.#uid = this.#o.uid ?? claims.sub ?? this.#uid;
      this.#device = claims.dev ?? this.#device;
    }
  }
}

function unreadOf(c) {
  return c.seen.size + c.extra;
}

/** How many unseen messages can lie in (read, extraMax] at most. */
function unseenRoom(c) {
  if (c.extraMax <= c.read) return 0;
  let seenIn = 0;
  for (const s of c.seen) if (s <= c.extraMax) seenIn += 1;
  return Math.max(0, c.extraMax - c.read - seenIn);
}

function seg(s) {
  return encodeURIComponent(s);
}

function query(q) {
  const s = q.toString();
  return s ? `?${s}` : '';
}

function closeQuietly(ws, code) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
  try {
    ws.close(code);
  } catch {
    // Closing a socket that never opened may throw; it is gone either way.
  }
}

function asImdError(e, code) {
  return e instanceof ImdError ? e : new ImdError(code, String(e?.message ?? e), { cause: e });
}

/** The claims of a JWT, without checking it (the server does). */
function jwtClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}
