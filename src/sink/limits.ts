/**
 * What NATS JetStream will never accept from the relay, and which of its refusals say so: the
 * rules that keep one poison event from holding the replication slot. A message that breaks one
 * of them is dead-lettered and the slot moves on; every other failure (the connection, the
 * server's health, the stream's capacity) ends the session, which reconnects and re-sends in order.
 */
import { RelayError, type PublishRefusedError } from '../util/errors.js';

/**
 * nats-server's `max_control_line` (its default; INFO does not announce it): the whole
 * `HPUB <subject> <reply> <header size> <total size>` line must fit, or the server closes the
 * connection ("maximum control line exceeded").
 */
const MAX_CONTROL_LINE = 4096;

/** Longest subject published, in UTF-8 bytes: the control line less the rest of the relay's HPUB line. */
export const MAX_SUBJECT_BYTES = MAX_CONTROL_LINE - 128;

/** JetStream refuses a message whose header block is over 64 KiB (error 10097, "header size exceeds maximum allowed of 64k"). */
export const MAX_HEADER_BYTES = 65_535;

/** A header name quoted for a message, cut short when long (a name can be as long as a whole message). */
export function quotedName(name: string): string {
  return name.length <= 100 ? JSON.stringify(name) : `${JSON.stringify(name.slice(0, 100))}… (${name.length} characters)`;
}

/**
 * Why a header name may not reach NATS in a message, or null. nats-server interprets every header
 * it knows by a `Nats-` name (2.9: `Nats-Msg-Id`, `Nats-Expected-Stream`,
 * `Nats-Expected-Last-Sequence`, `Nats-Expected-Last-Subject-Sequence`, `Nats-Expected-Last-Msg-Id`,
 * `Nats-Rollup`; later versions add `Nats-TTL`, `Nats-Schedule…`, `Nats-Batch-…` and more), so the
 * whole prefix is refused, in any case. The relay adds its own `Nats-Msg-Id` when it publishes.
 */
export function brokerHeaderProblem(name: string): string | null {
  if ((name.charCodeAt(0) | 0x20) !== 0x6e || !/^nats-/i.test(name)) return null; // not n/N…: the common case
  return (
    `header ${quotedName(name)} is reserved: NATS JetStream interprets Nats-* headers (Nats-Msg-Id is the relay's ` +
    `de-duplication id; Nats-Expected-* and Nats-Rollup decide what the stream stores or purges)`
  );
}

/**
 * Why a header name may not come from the application (the `headers` of `emit()`, an outbox row's
 * `headers`), or null: the broker's `Nats-*` names, and the relay's own `Fraiseql-*` names (event
 * id, tenant, mutation… which subscribers trust), in any case.
 */
export function appHeaderProblem(name: string): string | null {
  const c = name.charCodeAt(0) | 0x20;
  if (c === 0x6e) return brokerHeaderProblem(name);
  if (c !== 0x66 || !/^fraiseql-/i.test(name)) return null;
  return `header ${quotedName(name)} is reserved: the relay sets the Fraiseql-* headers, which subscribers trust`;
}

/** A message JetStream will never accept as it is: the session dead-letters it with `reason` instead of reconnecting. */
export class UndeliverableError extends RelayError {
  constructor(
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(reason, options);
  }
}

/**
 * JetStream's refusals that concern the one message (its size, its headers), by `err_code`: the
 * same message is refused the same way on every retry while other messages are stored.
 */
const MESSAGE_REFUSALS: ReadonlyMap<number, string> = new Map([
  [10054, "the message is larger than the stream's max_msg_size"],
  [10097, 'its headers are over 64 KiB'],
  [10060, 'its Nats-Expected-Stream header names another stream'],
  [10070, 'its Nats-Expected-Last-Msg-Id header does not match'],
  [10071, 'its Nats-Expected-Last-Sequence (or -Subject-Sequence) header does not match'],
  [10111, 'its Nats-Rollup header was refused'],
]);

/**
 * Why a refusal by JetStream means the message can never be stored (dead-letter it), or null when
 * it is about the stream or the server (capacity, availability, leadership): then the session
 * reconnects and the message waits in the slot, in order. `10077` ("{err}" of the store) is read
 * by its text: a full subject (`maximum messages per subject exceeded`, discard new per subject)
 * refuses only that subject's messages, while a full stream (`maximum messages exceeded`,
 * `maximum bytes exceeded`) or a failing disk refuses every message until space is freed.
 * A code not listed here is not assumed permanent.
 */
export function refusalReason(err: PublishRefusedError): string | null {
  const code = err.code;
  if (code === null) return null;
  const why = MESSAGE_REFUSALS.get(code) ?? (code === 10077 && /per subject/i.test(err.description) ? 'its subject is full' : null);
  return why === null ? null : `JetStream refused the message for good (${err.message}): ${why}`;
}
