/** The repetitions of one benchmark figure, as the sections record them and the report reads them. */
import { median } from './util.js';

export class Series {
  /** events/s from process start to the last event */
  values: number[] = [];
  /** events/s from the first event seen to the last */
  excl: number[] = [];
  /** seconds from process start to the first event */
  startup: number[] = [];
  /** peak RSS, kB */
  rss: number[] = [];
  /** average stored message size, bytes */
  msgBytes: number[] = [];
  /** CPU seconds per run: the contender process, its walsender, nats-server; wall = spawn → last event */
  cpu: { wall: number; proc: number; ws: number; nats: number }[] = [];
  errors: string[] = [];
  notes: string[] = [];
  partial = 0;

  ok(): boolean {
    return this.values.length > 0;
  }

  med(): number {
    return median(this.values);
  }

  medExcl(): number {
    return median(this.excl);
  }
}
