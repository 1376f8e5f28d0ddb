/**
 * Message authentication between relays: `[relay] signing_key_env` names an environment variable
 * holding one key or a comma-separated list of keys. The first key signs every published message
 * (`Fraiseql-Signature: v1=<base64 HMAC-SHA256>`) and keys table-rule event ids; every key in the
 * list verifies, so a key can be rotated without downtime (README, "Security").
 */
import { createHash, createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { UsageError } from '../util/errors.js';

/** The header carrying the signature. */
export const SIGNATURE_HEADER = 'Fraiseql-Signature';
/** The header naming the event (the inbox key); the signature covers its value. */
const EVENT_ID_HEADER = 'Fraiseql-Event-Id';
/** A key shorter than this (in bytes) is refused: `openssl rand -base64 32` gives 44. */
const MIN_KEY_BYTES = 32;
/** Length of `v1=` + base64 of a SHA-256 digest */
const V1 = 'v1=';
const DIGEST_B64_LENGTH = 44;

/**
 * The keys of `[relay] signing_key_env`: the first signs, every one verifies. Built once per
 * relay; each HMAC reuses the key objects.
 */
export class MessageKeys {
  private readonly signKey: KeyObject;
  private readonly verifyKeys: readonly KeyObject[];
  /** derived from the signing key, used for nothing but event ids */
  private readonly idKey: KeyObject;
  /** short, non-secret fingerprints of the keys, in list order (for logs) */
  readonly fingerprints: readonly string[];

  private constructor(
    secrets: readonly Buffer[],
    /** the environment variable the keys came from (for messages) */
    readonly source: string,
  ) {
    this.verifyKeys = secrets.map((s) => createSecretKey(s));
    this.signKey = this.verifyKeys[0]!;
    this.idKey = createSecretKey(createHmac('sha256', this.signKey).update('fraiseql-relay event id v1').digest());
    this.fingerprints = secrets.map((s) => createHash('sha256').update(s).digest('hex').slice(0, 8));
  }

  /**
   * The keys in the environment variable `name`: comma-separated, each used as its UTF-8 bytes,
   * each at least 32 bytes. Throws a {@link UsageError} naming the variable (never a key) when it
   * is unset, empty or holds a short key.
   */
  static fromEnv(name: string, env: NodeJS.ProcessEnv): MessageKeys {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '') {
      throw new UsageError(`environment variable ${name} ([relay] signing_key_env) is not set or empty`);
    }
    const parts = raw.split(',').map((p) => p.trim());
    const secrets: Buffer[] = [];
    for (const [i, p] of parts.entries()) {
      const b = Buffer.from(p, 'utf8');
      if (b.length < MIN_KEY_BYTES) {
        throw new UsageError(
          `environment variable ${name} ([relay] signing_key_env): key ${i + 1} of ${parts.length} is ` +
            (b.length === 0 ? 'empty' : `${b.length} bytes long`) +
            `; each comma-separated key must be at least ${MIN_KEY_BYTES} bytes (e.g. \`openssl rand -base64 32\`)`,
        );
      }
      secrets.push(b);
    }
    return new MessageKeys(secrets, name);
  }

  /** How many keys verify (the first of them signs). */
  get size(): number {
    return this.verifyKeys.length;
  }

  /** The `Fraiseql-Signature` value of a message: `v1=<base64 HMAC-SHA256 of "<eventId>\n<subject>\n<body>">`. */
  sign(eventId: string, subject: string, body: Uint8Array): string {
    return V1 + digest(this.signKey, eventId, subject, body).toString('base64');
  }

  /**
   * Checks a received message: null when `signature` (the header's value: one or more
   * space-separated `v1=<base64>`) is some key's signature of the event id, subject and body;
   * otherwise why the message is refused.
   */
  verify(eventId: string | undefined, subject: string, body: Uint8Array, signature: string | undefined): string | null {
    if (signature === undefined || signature.trim() === '') {
      return `refused: unsigned message (no ${SIGNATURE_HEADER} header) while [relay] signing_key_env is set; the inbox was not touched`;
    }
    if (eventId === undefined || eventId === '') {
      return `refused: signed message without a ${EVENT_ID_HEADER} header; the inbox was not touched`;
    }
    const given: Buffer[] = [];
    for (const part of signature.trim().split(/\s+/)) {
      if (part.startsWith(V1) && part.length === V1.length + DIGEST_B64_LENGTH) {
        const b = Buffer.from(part.slice(V1.length), 'base64');
        if (b.length === 32) given.push(b);
      }
    }
    if (given.length === 0) {
      return `refused: ${SIGNATURE_HEADER} holds no v1=<base64 HMAC-SHA256> signature; the inbox was not touched`;
    }
    for (const key of this.verifyKeys) {
      const want = digest(key, eventId, subject, body);
      for (const g of given) if (timingSafeEqual(g, want)) return null;
    }
    return (
      `refused: ${SIGNATURE_HEADER} does not match the event id, subject and body with any of the ${this.verifyKeys.length} ` +
      `key(s) in ${this.source}: forged, altered, or signed with a key this relay does not have; the inbox was not touched`
    );
  }

  /**
   * A table-rule event id that only key holders can compute: HMAC-SHA256 over the change's WAL
   * position, transaction id and database, written as a version 8 UUID (the same change gives
   * the same id).
   */
  eventId(lsn: bigint, xid: number, database: string): string {
    return this.uuidOf(`${lsn.toString(16)}/${(xid >>> 0).toString(16)}/${database}`);
  }

  /** An id only key holders can compute for `text`: HMAC-SHA256, written as a version 8 UUID. */
  uuidOf(text: string): string {
    return uuidV8(createHmac('sha256', this.idKey).update(text).digest());
  }
}

/** The first 16 bytes of a digest as a version 8 UUID (RFC 9562). */
export function uuidV8(d: Buffer): string {
  d[6] = (d[6]! & 0x0f) | 0x80; // version 8
  d[8] = (d[8]! & 0x3f) | 0x80; // RFC 9562 variant
  const h = d.toString('hex', 0, 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

function digest(key: KeyObject, eventId: string, subject: string, body: Uint8Array): Buffer {
  return createHmac('sha256', key)
    .update(eventId + '\n' + subject + '\n')
    .update(body)
    .digest();
}
