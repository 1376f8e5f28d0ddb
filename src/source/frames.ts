/**
 * Streaming-replication CopyData payloads (docs `protocol-replication.html`).
 *
 * Server → client:
 *   'w' XLogData:          Byte1 'w', Int64 dataStart, Int64 walEnd, Int64 sendTime, Byte n (pgoutput message)
 *   'k' Primary keepalive: Byte1 'k', Int64 walEnd, Int64 sendTime, Byte1 replyRequested
 * Client → server:
 *   'r' Standby status:    Byte1 'r', Int64 write, Int64 flush, Int64 apply, Int64 clientTime, Byte1 replyRequested
 *
 * Times are µs since 2000-01-01 UTC.
 */

import type { Lsn } from './types.js';
import { unixMsToPgMicros } from './lsn.js';

export type ReplicationFrame =
  | { kind: 'xlog'; start: Lsn; walEnd: Lsn; sendTime: bigint; data: Buffer }
  | { kind: 'keepalive'; walEnd: Lsn; sendTime: bigint; replyRequested: boolean }
  | { kind: 'unknown'; byte: number };

/** A 'w' or 'k' frame shorter than its fixed header, or an empty CopyData payload. */
export class FrameDecodeError extends Error {
  override readonly name = 'FrameDecodeError';
  constructor(
    message: string,
    /** first byte of the frame, -1 for an empty buffer */
    readonly byte: number,
    readonly length: number,
  ) {
    super(message);
  }
}

/** Bytes before the plugin's message in an XLogData frame. */
const XLOG_HEADER = 25;
const KEEPALIVE_LEN = 18;
const STANDBY_STATUS_LEN = 34;

/**
 * Parse one CopyData payload of a replication stream. `data` of an XLogData frame is a
 * subarray of `buf` (no copy): it stays valid only as long as the caller does not reuse `buf`.
 * Unknown leading bytes give `{ kind: 'unknown' }`; a truncated 'w'/'k' frame or an empty buffer
 * throws `FrameDecodeError`.
 */
export function parseFrame(buf: Buffer): ReplicationFrame {
  if (buf.length === 0) {
    throw new FrameDecodeError('empty replication CopyData frame', -1, 0);
  }
  const byte = buf[0]!;
  if (byte === 0x77 /* w */) {
    if (buf.length < XLOG_HEADER) {
      throw new FrameDecodeError(`truncated XLogData frame: ${buf.length} < ${XLOG_HEADER} bytes`, byte, buf.length);
    }
    return {
      kind: 'xlog',
      start: buf.readBigUInt64BE(1),
      walEnd: buf.readBigUInt64BE(9),
      sendTime: buf.readBigInt64BE(17),
      data: buf.subarray(XLOG_HEADER),
    };
  }
  if (byte === 0x6b /* k */) {
    if (buf.length < KEEPALIVE_LEN) {
      throw new FrameDecodeError(`truncated keepalive frame: ${buf.length} < ${KEEPALIVE_LEN} bytes`, byte, buf.length);
    }
    return {
      kind: 'keepalive',
      walEnd: buf.readBigUInt64BE(1),
      sendTime: buf.readBigInt64BE(9),
      replyRequested: buf[17] !== 0,
    };
  }
  return { kind: 'unknown', byte };
}

/**
 * The output plugin's message inside an XLogData frame (a view into `buf`, no copy), or null when
 * `buf` is any other frame (a keepalive: read it with {@link parseFrame}). The hot path of the
 * stream: no frame object and no BigInt.
 */
export function xlogMessage(buf: Buffer): Buffer | null {
  return buf.length >= XLOG_HEADER && buf[0] === 0x77 /* w */ ? buf.subarray(XLOG_HEADER) : null;
}

/** The start LSN of an XLogData frame as PostgreSQL prints it, read without a BigInt. */
export function xlogStartText(buf: Buffer): string {
  return buf.readUInt32BE(1).toString(16).toUpperCase() + '/' + buf.readUInt32BE(5).toString(16).toUpperCase();
}

/**
 * Build a 34-byte Standby Status Update with write = flush = apply = `lsn` exactly
 * (never `lsn + 1`: the next commit record can start exactly at a Commit's end LSN, and
 * PostgreSQL skips a transaction whose commit record starts before the confirmed position).
 * `now` is Unix time in milliseconds; it is sent as µs since 2000-01-01.
 */
export function standbyStatus(lsn: Lsn, replyRequested = false, now: number = Date.now()): Buffer {
  const b = Buffer.allocUnsafe(STANDBY_STATUS_LEN);
  b[0] = 0x72; // 'r'
  b.writeBigUInt64BE(lsn, 1); // write   (RangeError outside 0 … 2^64−1)
  b.writeBigUInt64BE(lsn, 9); // flush   (drives confirmed_flush_lsn)
  b.writeBigUInt64BE(lsn, 17); // apply
  b.writeBigInt64BE(unixMsToPgMicros(now), 25);
  b[33] = replyRequested ? 1 : 0;
  return b;
}
