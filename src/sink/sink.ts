/** What the router hands to a sink: one message for one subject. */
export interface OutboundMessage {
  subject: string;
  /** stable across redelivery; Nats-Msg-Id is `${eventId}:${subject}` */
  eventId: string;
  headers: Record<string, string>;
  body: Buffer;
  /** commit time of the event's transaction (ms since epoch), for the publish latency metric */
  commitMs?: number;
  /** set by the router when the event may never be published (a reserved header): why; it is dead-lettered */
  refused?: string;
}

/**
 * Where routed messages go (JetStream, or webhooks when there is no NATS). The session settles
 * a transaction once every one of its messages is done. An error passed to `done` is transient
 * and ends the session (it re-reads from the slot's confirmed position), except an
 * `UndeliverableError` (sink/limits.ts): the message can never be published, and is dead-lettered.
 * `duplicate`: the server already held the message (a re-send), so it was not published again.
 */
export interface Sink {
  /** null: may be sent; a string: can never be sent (dead-letter it); a promise: look-up needed */
  check(msg: OutboundMessage): string | null | Promise<string | null>;
  publish(msg: OutboundMessage, done: (err?: Error, duplicate?: boolean) => void): void;
  readonly hasCapacity: boolean;
  waitForCapacity(): Promise<void>;
  readonly messagesInFlight: number;
  /** bytes of the messages in flight, where the sink counts them */
  readonly bytesInFlight: number;
  /** the session using this sink is over: stop waiting for acknowledgements or retries */
  close(): void;
}
