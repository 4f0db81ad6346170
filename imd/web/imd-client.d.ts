// Types of imd-client.js, the JavaScript SDK for imd. docs/protocol.md of the imd
// repository describes every shape here on the wire.

/** A message as the server commits it. Exactly one of `body` and `event` is present, or neither when `recalled` or `erased`. */
export interface Message {
  /** Unique id (a UUIDv7). */
  id: string;
  /** Conversation id: `d:{a}~{b}`, `g:{name}` or `s:{shop}~{customer}`. */
  conv: string;
  /** Position in the conversation, from 1, gapless. */
  seq: number;
  /** The sender's uid, or the uid that caused an event. */
  from: string;
  /** Any JSON value but null. */
  body?: unknown;
  /** What happened to the conversation, for an event message. */
  event?: ConvEvent;
  /** Commit time, unix milliseconds. */
  ts: number;
  /** The sender's client message id. */
  cid?: string;
  /** Its sender took it back; the body is gone. */
  recalled?: true;
  /** An operator erased what its sender wrote; the body is gone, the message stays as a tombstone. */
  erased?: true;
}

/** An event message's `event`. Unknown types are passed through as they come. */
export type ConvEvent =
  | { type: 'assigned'; agent: string; previous?: string }
  | { type: 'closed' }
  | { type: 'recalled'; seq: number; by?: string }
  | { type: 'rated'; score: number; comment?: string }
  | { type: string; [field: string]: unknown };

export interface ConversationEntry {
  conv: string;
  kind: 'direct' | 'group' | 'service';
  /** The last message, event messages included. */
  last: Message;
  /** The user's read position, 0 when nothing is read. */
  read_seq: number;
  /** Messages of others past read_seq, event messages not counted. */
  unread: number;
  /** The other member's read position (direct and service conversations). */
  peer_read_seq?: number;
}

export interface ConversationDetail {
  conv: string;
  kind: 'direct' | 'group' | 'service';
  members: string[];
  /** Read position of each member. */
  read: Record<string, number>;
  last_seq: number;
  /** Service conversations: the assigned agent. */
  agent?: string;
  /** Service conversations: whether it is open. */
  open?: boolean;
  /** Service conversations waiting for an agent: 1 = next. */
  queue_position?: number;
}

export type SendTarget = { to: string } | { conv: string } | { shop: string };

export type SendRequest = SendTarget & {
  /** Any JSON value but null. */
  body: unknown;
  /** Client message id, 1–64 bytes; crypto.randomUUID() when absent. */
  cid?: string;
};

/** What the client uses of a WebSocket (the browser's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number): void;
  // Set by the client: onopen(), onmessage({data}), onclose({code}), onerror().
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

export interface ImdClientOptions {
  /** Base URL of imd's HTTP API, e.g. `http://127.0.0.1:8080`; in a browser, the page's origin by default. */
  url?: string;
  /** WebSocket URL; default: `url` with ws(s):// and `/v1/ws`. */
  wsUrl?: string;
  /** A token, or a function giving one: called for every connection and after a 401. */
  token: string | (() => string | Promise<string>);
  /** The WebSocket constructor; default `globalThis.WebSocket` (in Node 20: pass the `ws` package's). */
  WebSocket?: new (url: string) => WebSocketLike;
  /** The fetch function; default `globalThis.fetch`. */
  fetch?: (url: string, init: { method: string; headers: Record<string, string>; body?: string }) => Promise<{
    ok: boolean;
    status: number;
    text(): Promise<string>;
  }>;
  /** The uid; default: the token's `sub` claim. */
  uid?: string;
  /** The last useq the app already has (persisted `client.useq`); default 0: the whole inbox. */
  after?: number;
  /** The generation `after` counts in (persisted `client.generation`); default: none known. */
  generation?: string | null;
  /** Reconnect backoff: exponential from minBackoffMs to maxBackoffMs, full jitter. Defaults 250 and 30000. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Send a `ping` after this long without a frame; drop the connection after twice it. Default 20000. */
  pingMs?: number;
  /** Give up on a connection not open after this long. Default 10000. */
  connectTimeoutMs?: number;
  /** Inbox entries per sync page (server: at most 1000). Default 100. */
  syncLimit?: number;
  /** How long a gap in the pushed useqs may stay open before a sync fills it. Default 250. */
  gapMs?: number;
  /** How long a typing notice from someone lasts. Default 5000. */
  typingTtlMs?: number;
  /** Least time between two typing notices sent for one conversation. Default 3000. */
  typingEveryMs?: number;
  /** Sends over this many bytes (the frame) are refused locally with too_large. Default 65536. */
  maxFrameBytes?: number;
  /** Read the first page of the conversation list after every (re)connect to correct unread counts. Default true. */
  refreshUnread?: boolean;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ImdEvents {
  /** A message (event messages included), each useq once, in useq order. */
  message: (msg: Message, useq: number) => void;
  /** `uid`'s read position in `conv` moved to `seq`. */
  read: (e: { conv: string; uid: string; seq: number }) => void;
  /** `uid` is typing in `conv` (until expiresAt), or stopped (expired, or their message came). */
  typing: (e: { conv: string; uid: string; typing: boolean; expiresAt?: number }) => void;
  /** The user's service conversation waits in the shop's queue at `position` (1 = next). */
  queue: (e: { conv: string; position: number }) => void;
  /** The connection's state; `attempt` counts reconnects since the last successful sync. */
  state: (e: { state: ConnectionState; attempt: number; delayMs?: number; reason?: string }) => void;
  /** Message `seq` of `conv` was recalled (`by: "admin"` for an operator); `msg` is the event message. */
  recalled: (e: { conv: string; seq: number; by?: string; msg: Message }) => void;
  /** The unread count of `conv` changed. */
  unread: (e: { conv: string; unread: number }) => void;
  /** A (re)connection caught up with the inbox, up to `useq`. */
  synced: (e: { useq: number }) => void;
  /**
   * The server lost state it had acknowledged (Redis lost writes) and gives useqs again:
   * the client started over from the inbox's beginning in generation `to`, skipping
   * messages it had already delivered.
   */
  generation: (e: { from: string; to: string }) => void;
  /** Something failed that no promise reports: an error frame, a refused typing notice, a listener that threw. */
  error: (e: ImdError | Error) => void;
}

export class ImdError extends Error {
  constructor(code: string, message: string, extra?: { status?: number; cid?: string; cause?: unknown });
  /**
   * A protocol error code (`bad_request`, `unauthorized`, `forbidden`, `not_found`,
   * `too_large`, `conflict`, `rate_limited`, `blocked_content`, `internal`) or a
   * client one: `closed`, `network`, `replaced`, `http_<status>`.
   */
  code: string;
  /** The HTTP status, for HTTP calls. */
  status?: number;
  /** The send's cid, for a refused send. */
  cid?: string;
}

export class ImdClient {
  constructor(options: ImdClientOptions);

  readonly uid: string | null;
  readonly device: string | null;
  /** The last useq delivered to `message` listeners. */
  readonly useq: number;
  /** The server's store generation that `useq` counts in; persist it with `useq`. */
  readonly generation: string | null;
  readonly state: ConnectionState;
  /** Unread count of every conversation this client knows of (a copy). */
  readonly unread: Map<string, number>;
  /** Sends not answered yet. */
  readonly pendingSends: number;

  unreadOf(conv: string): number;
  readSeqOf(conv: string): number;
  lastSeqOf(conv: string): number;
  typers(conv: string): string[];

  on<K extends keyof ImdEvents>(name: K, fn: ImdEvents[K]): () => void;

  /** Connects (keeps trying); resolves once first caught up. */
  connect(): Promise<void>;
  /** Stops for good: closes the connection, rejects unanswered sends with `closed`. */
  close(): void;

  /** Resolves with the committed message; rejects with ImdError on a refusal. */
  send(message: SendRequest): Promise<Message>;
  /** Sends a typing notice (at most one per typingEveryMs); returns whether it went out. */
  typing(conv: string): boolean;

  conversations(page?: { limit?: number; before?: string }): Promise<{ convs: ConversationEntry[]; next?: string }>;
  conversation(conv: string): Promise<ConversationDetail>;
  history(conv: string, page?: { after?: number; limit?: number }): Promise<{ msgs: Message[]; more: boolean; trimmed?: boolean }>;
  /** Resolves with the read position after it. */
  markRead(conv: string, seq?: number): Promise<number>;
  recall(conv: string, seq: number): Promise<{ conv: string; seq: number }>;
  presence(uids: string[]): Promise<{ uid: string; online: boolean; last_seen?: number }[]>;

  /** Needs imd with the customer-service workflow. */
  setStatus(status: 'available' | 'away'): Promise<unknown>;
  /** Needs imd with the customer-service workflow. */
  closeConversation(conv: string): Promise<unknown>;
  /** Needs imd with the customer-service workflow. */
  rate(conv: string, score: number, comment?: string): Promise<unknown>;
}
