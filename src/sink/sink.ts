import type { OutboundMessage } from '../source/types.js';

/**
 * Where routed messages go (JetStream, or webhooks when there is no NATS). The session settles
 * a transaction once every one of its messages is done; an error passed to `done` is transient
 * and ends the session (it re-reads from the slot's confirmed position).
 */
export interface Sink {
  /** null: may be sent; a string: can never be sent (dead-letter it); a promise: look-up needed */
  check(msg: OutboundMessage): string | null | Promise<string | null>;
  publish(msg: OutboundMessage, done: (err?: Error) => void): void;
  readonly hasCapacity: boolean;
  waitForCapacity(): Promise<void>;
  readonly messagesInFlight: number;
}
