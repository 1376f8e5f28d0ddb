/** What the router hands to a sink: one message for one subject. */
export interface OutboundMessage {
  subject: string;
  /** stable across redelivery; Nats-Msg-Id is `${eventId}:${subject}` */
  eventId: string;
  headers: Record<string, string>;
  body: Buffer;
  /** commit time of the event's transaction (ms since epoch), for the publish latency metric */
  commitMs?: number;
}

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
  /** bytes of the messages in flight, where the sink counts them */
  readonly bytesInFlight: number;
  /** the session using this sink is over: stop waiting for acknowledgements or retries */
  close(): void;
}
