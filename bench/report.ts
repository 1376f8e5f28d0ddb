/** The report bench/run.ts prints and writes to BENCHMARKS.md, rendered from the sections' results. */
import { fmtInt, fmtMB, fmtMs, fmtPct, fmtSpread, median } from './lib/util.js';
import type { SysInfo } from './lib/sysinfo.js';
import type { Series } from './lib/series.js';
import { COMPARE_SECS, HANDLER_N, LAT_CONNS, LAT_SECS, N, REPS, WINDOW } from './lib/settings.js';
import { SHAPES, type DrainResults } from './sections/drain.js';
import type { PublishResults } from './sections/publish.js';
import type { CompareResults } from './sections/compare.js';
import { LAT_P99_LIMIT_MS, LAT_WARMUP_MS, type LatencyResults, type LatResult, type LatRun } from './sections/latency.js';
import { CEILINGS, HANDLER_CASES, LAT_CASES, LAT_RATE, ORDER_KEYS, BATCH_DEFAULT, type HandlerResults } from './sections/handlers.js';
import { BACKFILL_N, BACKFILL_WRITE_RATE, type BackfillResults } from './sections/backfill.js';

/** Everything the sections record, each section filling in its own part. */
export type Results = DrainResults & PublishResults & CompareResults & LatencyResults & HandlerResults & BackfillResults;

function esc(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function failures(s: Series): string {
  if (s.errors.length === 0) return '';
  const distinct = [...new Set(s.errors)];
  return ` (${s.errors.length} of ${s.errors.length + s.values.length} failed: ${esc(distinct[0]!)})`;
}

function cell(s: Series | undefined, pick: (s: Series) => number[] = (x) => x.values, f: (x: number) => string = fmtInt): string {
  if (!s) return 'not run';
  const xs = pick(s);
  if (xs.length === 0) return s.errors.length > 0 ? `failed: ${esc(s.errors[0]!)}` : 'not run';
  return fmtSpread(xs, f) + failures(s);
}

function rssCell(s: Series | undefined): string {
  if (!s || s.rss.length === 0) return '–';
  return fmtSpread(s.rss, fmtMB);
}

/** "4.2 s (85 %)": median CPU seconds of a process over the runs, and that as % of the run's wall time. */
function cpuCell(s: Series | undefined, pick: (c: Series['cpu'][number]) => number): string {
  if (!s || s.cpu.length === 0) return '–';
  const xs = s.cpu.map(pick).filter((x) => Number.isFinite(x));
  if (xs.length === 0) return '–';
  const pct = median(s.cpu.filter((c) => Number.isFinite(pick(c))).map((c) => (pick(c) / c.wall) * 100));
  return `${median(xs).toFixed(1)} s (${Math.round(pct)} %)`;
}

function ratio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return '–';
  const r = a / b;
  return r >= 10 ? `${r.toFixed(0)}×` : r >= 1.995 ? `${r.toFixed(1)}×` : `${(r * 100).toFixed(0)} %`;
}

export function render(results: Results, info: SysInfo, totalSecs: number): string {
  const L: string[] = [];
  const single = results.drain.get('single');
  L.push('# Benchmarks');
  L.push('');
  L.push('Written by `npm run bench` (bench/run.ts); every figure below comes from one run of it. Do not edit by hand: run it again.');
  L.push('');
  L.push(`- **Date**: ${info.date} — run took ${(totalSecs / 60).toFixed(1)} min`);
  L.push(
    `- **Machine**: ${info.cpu}, ${info.cores} cores, ${info.ramGiB} GiB RAM, ${info.kernel}; PostgreSQL, nats-server, the relay and the load generators all share these cores`,
  );
  L.push(`- **Versions**: Node ${info.node}; ${info.postgres}; nats-server ${info.natsServer}`);
  L.push(
    `- **Packages**: ${Object.entries(info.packages)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  L.push(
    `- **Source**: commit ${info.commit}; the relay runs compiled from dist/ as shipped (\`node dist/cli.js run\`, built from this commit at the start of the run), as a child process; the contenders run through tsx (\`node --import tsx bench/contenders/<name>.ts\`)`,
  );
  L.push(
    `- **Settings**: N = ${fmtInt(N)} events, ${REPS} repetitions per figure (median, then min–max in parentheses), publish window ${WINDOW}, payload: a ~240-byte jsonb object per event (the relay publishes it in its envelope: ${results.template.bytes || '?'} bytes of body)`,
  );
  L.push(
    `- **Servers**: a throwaway PostgreSQL (wal_level=logical, fsync=off, full_page_writes=off) and nats-server with JetStream (file storage, R1), started fresh for each section; within a section every repetition gets its own replication slot (created before the backlog, dropped after) and a freshly created stream`,
  );
  L.push('');

  // (a)
  L.push(`## (a) Backlog drain: N = ${fmtInt(N)} events committed while nothing runs, then the consumer started`);
  L.push('');
  L.push(
    'Events/s from starting the process to the last event stored in the stream (stream message count polled every 20 ms); "excl. start-up" counts from the first stored event instead. (d) peak RSS of the relay process (VmHWM).',
  );
  L.push('');
  L.push(
    '| transaction shape | backlog commit | fraiseql-relay | excl. start-up | start-up | relay peak RSS | reference loop | reference excl. start-up | relay ÷ reference | relay ÷ reference, excl. start-up |',
  );
  L.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    if (!r) {
      L.push(`| ${shape.label} | not run | | | | | | | | |`);
      continue;
    }
    L.push(
      `| ${shape.label} | ${r.backlogSecs ? `${r.backlogSecs.toFixed(1)} s` : '–'} | ${cell(r.relay)} | ${cell(r.relay, (s) => s.excl)} | ${cell(
        r.relay,
        (s) => s.startup,
        (x) => `${x.toFixed(2)} s`,
      )} | ${rssCell(r.relay)} | ${cell(r.ref)} | ${cell(r.ref, (s) => s.excl)} | ${ratio(r.relay.med(), r.ref.med())} | ${ratio(r.relay.medExcl(), r.ref.medExcl())} |`,
    );
  }
  L.push('');
  if (single) {
    L.push(
      `fraiseql-relay ÷ pg-transactional-outbox (single-row transactions): **${ratio(single.relay.med(), results.pto.med())}** (excl. start-up ${ratio(single.relay.medExcl(), results.pto.medExcl())}); ÷ polling relay: ${ratio(single.relay.med(), results.poll.med())}.`,
    );
    L.push('');
  }

  // (b)
  L.push('## (b) Steady-state latency, commit → stored in JetStream (fraiseql-relay)');
  L.push('');
  L.push(
    `${LAT_CONNS} connections commit single-row transactions (a PL/pgSQL loop calling \`emit()\` and COMMIT, paced to the offered rate) for ${LAT_SECS} s; the payload carries the producer's \`clock_timestamp()\`; a core NATS subscription on the subject receives each message when nats-server hands it to the stream (the PubAck to the relay follows once it is stored) and records now − that time. Percentiles over every event of a step committed after its first ${LAT_WARMUP_MS / 1000} s (warm-up), then the median over the repetitions (min–max). The relay and the reference loop take turns, one repetition each (all three rates), on the same servers. "events seen" counts every event of the step. The producers share the 2 cores with everything else: at high offered rates they take the CPU the relay needs.`,
  );
  L.push('');
  const lat = results.lat;
  if (!lat) {
    L.push('not run');
  } else {
    L.push(
      '| consumer | offered ev/s | achieved ev/s | p50 ms | p99 ms | p99.9 ms | max ms | events seen | consumer CPU | walsender CPU |',
    );
    L.push('|---|---|---|---|---|---|---|---|---|---|');
    const rows = (who: string, res: LatResult): void => {
      for (const [rate, r] of res.byRate) {
        if (r.runs.length === 0) {
          L.push(`| ${who} | ${fmtInt(rate)} | failed: ${esc(r.errors[0] ?? res.error ?? 'not run')} | | | | | | | |`);
          continue;
        }
        const pick = (f: (x: LatRun) => number) => r.runs.map(f);
        const fail = r.errors.length > 0 ? ` (${r.errors.length} failed: ${esc(r.errors[0]!)})` : '';
        L.push(
          `| ${who} | ${fmtInt(rate)} | ${fmtSpread(pick((x) => x.achieved))} | ${fmtSpread(
            pick((x) => x.p50),
            fmtMs,
          )} | ${fmtSpread(
            pick((x) => x.p99),
            fmtMs,
          )} | ${fmtSpread(
            pick((x) => x.p999),
            fmtMs,
          )} | ${fmtMs(Math.max(...pick((x) => x.max)))} | ${r.runs.map((x) => `${x.received}/${x.produced}`).join(', ')}${fail} | ${fmtPct(median(pick((x) => x.cpuProc)))} | ${fmtPct(median(pick((x) => x.cpuWs)))} |`,
        );
      }
      for (const st of res.ladder) {
        if (!st.run) {
          L.push(`| ${who} | ${fmtInt(st.rate)} (ladder, 1 run) | failed: ${esc(st.error ?? '')} | | | | | | | |`);
          continue;
        }
        const x = st.run;
        L.push(
          `| ${who} | ${fmtInt(st.rate)} (ladder, 1 run) | ${fmtInt(x.achieved)} | ${fmtMs(x.p50)} | ${fmtMs(x.p99)} | ${fmtMs(x.p999)} | ${fmtMs(x.max)} | ${x.received}/${x.produced} | ${fmtPct(x.cpuProc)} | ${fmtPct(x.cpuWs)} |`,
        );
      }
    };
    rows('fraiseql-relay', lat);
    if (results.latRef) rows('reference loop', results.latRef);
    L.push('');
    L.push(
      `Highest offered rate the relay sustained (achieved ≥ 95 % of offered, every event seen within 10 s after the step, p99 < ${LAT_P99_LIMIT_MS} ms): **${lat.sustained}**. Relay peak RSS during (b): ${fmtMB(lat.rss)}` +
        `${results.latRef ? `; reference loop: ${fmtMB(results.latRef.rss)}` : ''}.${lat.error ? ` Failed: ${esc(lat.error)}` : ''}${results.latRef?.error ? ` Reference loop failed: ${esc(results.latRef.error)}` : ''}`,
    );
  }
  L.push('');

  // (c)
  L.push(`## (c) Inbound: JetStream → SQL handler, exactly once, ${fmtInt(HANDLER_N)} events`);
  L.push('');
  L.push(
    'Events already stored in the stream; the relay (subscriber only) starts, and each event runs its SQL handler in the exactly-once transaction with its inbox row. ' +
      '*trivial*: one INSERT; *upsert*: `INSERT … ON CONFLICT (id) DO UPDATE` into a table with a primary key and a second index (10,000 distinct orders, each upserted several times). ' +
      `*batch* ${BATCH_DEFAULT} is the default: up to that many events in one transaction and one statement (a subtransaction each only after a failure); *ordered*: \`order_by = "$.key"\` over ${fmtInt(ORDER_KEYS)} keys. ` +
      'Events/s from starting the process to the last handled event (inbox rows polled every 20 ms), and from the first handled event (excl. start-up).',
  );
  L.push('');
  L.push('| handler | concurrency | batch | order_by | events/s | excl. start-up | relay peak RSS |');
  L.push('|---|---|---|---|---|---|---|');
  for (const c of HANDLER_CASES) {
    const s = results.handlers.get(c.key);
    L.push(
      `| ${c.handler} | ${c.concurrency} | ${c.batch} | ${c.orderBy ? `$.key (${fmtInt(ORDER_KEYS)} keys)` : '–'} | ${s ? cell(s) : results.handlersError ? `failed: ${esc(results.handlersError)}` : 'not run'} | ${cell(s, (x) => x.excl)} | ${rssCell(s)} |`,
    );
  }
  L.push('');
  L.push("The database's own ceiling, same server, same run: plain `INSERT INTO t VALUES (1)` from the benchmark's process for 3 s.");
  L.push('');
  L.push('| connections | INSERTs a transaction | rows/s |');
  L.push('|---|---|---|');
  for (const c of CEILINGS) L.push(`| ${c.conns} | ${c.perTx} | ${cell(results.ceilings.get(c.key))} |`);
  L.push('');
  L.push(
    `Latency at ${fmtInt(LAT_RATE)} events/s offered for ${LAT_SECS} s into a running relay (trivial handler, concurrency 8, batch ${BATCH_DEFAULT}): ` +
      "from the publish (time written into the event) to the handler's COMMIT (`pg_xact_commit_timestamp` of its row), one run.",
  );
  L.push('');
  L.push('| order_by | offered | achieved | events | p50 | p99 | p99.9 | max |');
  L.push('|---|---|---|---|---|---|---|---|');
  for (const c of LAT_CASES) {
    const r = results.handlerLat.get(c.key);
    const label = c.orderBy ? `$.key (${fmtInt(ORDER_KEYS)} keys)` : '–';
    if (r === undefined) L.push(`| ${label} | not run | | | | | | |`);
    else if (typeof r === 'string') L.push(`| ${label} | failed: ${esc(r)} | | | | | | |`);
    else
      L.push(
        `| ${label} | ${fmtInt(r.offered)} | ${fmtInt(r.achieved)} | ${fmtInt(r.count)} | ${fmtMs(r.p50)} | ${fmtMs(r.p99)} | ${fmtMs(r.p999)} | ${fmtMs(r.max)} |`,
      );
  }
  L.push('');

  // (e)
  L.push('## (e) Ceilings on this machine, same run');
  L.push('');
  L.push('| ceiling | events/s | excl. start-up | peak RSS | note |');
  L.push('|---|---|---|---|---|');
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    L.push(
      `| pgoutput decode only, ${shape.label} | ${cell(r?.decode)} | ${cell(r?.decode, (s) => s.excl)} | ${rssCell(r?.decode)} | ReplicationConnection + PgoutputDecoder, no publishing, slot confirmed at the end |`,
    );
  }
  L.push(
    `| JetStream publish, \`js.publish()\` | ${cell(results.jsJs)} | ${cell(results.jsJs, (s) => s.excl)} | ${rssCell(results.jsJs)} | @nats-io/jetstream, msgID per message, window ${WINDOW}, the relay's message (${results.template.bytes} B body + its headers), no PostgreSQL |`,
  );
  L.push(
    `| JetStream publish, core connection + shared reply subscription | ${cell(results.jsCore)} | ${cell(results.jsCore, (s) => s.excl)} | ${rssCell(results.jsCore)} | \`nc.publish(subject, data, { headers: Nats-Msg-Id, reply: <inbox>.<n> })\`, one \`<inbox>.*\` subscription, acks parsed from the replies, window ${WINDOW} |`,
  );
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    L.push(
      `| reference minimal loop, ${shape.label} | ${cell(r?.ref)} | ${cell(r?.ref, (s) => s.excl)} | ${rssCell(r?.ref)} | pgoutput → core-connection JetStream publish (as above) → standby status with the commit end LSN once all acks of the transaction (and earlier ones) are in; minimal envelope (${r && r.ref.msgBytes.length ? fmtInt(median(r.ref.msgBytes)) : '?'} B stored per message vs ${r && r.relay.msgBytes.length ? fmtInt(median(r.relay.msgBytes)) : '?'} B for the relay) |`,
    );
  }
  L.push('');

  // CPU
  L.push('## Where the CPU goes');
  L.push('');
  L.push(
    "Median CPU seconds per run of the process measured, of the walsender serving its slot and of nats-server, with the share of the run's wall time (spawn → last event; 100 % = one of the 2 cores).",
  );
  L.push('');
  L.push('| run | wall | process | walsender | nats-server |');
  L.push('|---|---|---|---|---|');
  const cpuRow = (label: string, s: Series | undefined): void => {
    if (!s || s.cpu.length === 0) return;
    L.push(
      `| ${label} | ${median(s.cpu.map((c) => c.wall)).toFixed(1)} s | ${cpuCell(s, (c) => c.proc)} | ${cpuCell(s, (c) => c.ws)} | ${cpuCell(s, (c) => c.nats)} |`,
    );
  };
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    cpuRow(`fraiseql-relay, ${shape.label}`, r?.relay);
    cpuRow(`reference loop, ${shape.label}`, r?.ref);
    cpuRow(`decode only, ${shape.label}`, r?.decode);
  }
  cpuRow('JetStream publish, `js.publish()`', results.jsJs);
  cpuRow('JetStream publish, core connection', results.jsCore);
  cpuRow('pg-transactional-outbox', results.pto);
  cpuRow('polling relay', results.poll);
  L.push('');

  // (f)
  L.push(`## (f) Other outbox relays doing the same job, same run (N = ${fmtInt(N)}, single-row transactions)`);
  L.push('');
  L.push(
    `Each runs at most ${COMPARE_SECS} s; a relay that has not drained N by then is measured on the events it stored in that time (noted).`,
  );
  L.push('');
  L.push('| relay | events/s | excl. start-up | peak RSS | fraiseql-relay ÷ this | how |');
  L.push('|---|---|---|---|---|---|');
  const relayMed = single?.relay.med() ?? Number.NaN;
  const part = (s: Series) => (s.notes.length > 0 ? ` (partial: ${esc(s.notes[0]!)})` : '');
  L.push(`| fraiseql-relay | ${cell(single?.relay)} | ${cell(single?.relay, (s) => s.excl)} | ${rssCell(single?.relay)} | 1 | from (a) |`);
  L.push(
    `| reference minimal loop | ${cell(single?.ref)} | ${cell(single?.ref, (s) => s.excl)} | ${rssCell(single?.ref)} | ${ratio(relayMed, single?.ref.med() ?? Number.NaN)} | from (a), (e) |`,
  );
  L.push(
    `| pg-transactional-outbox ${info.packages['pg-transactional-outbox']} (logical replication) | ${cell(results.pto)}${part(results.pto)} | ${cell(results.pto, (s) => s.excl)} | ${rssCell(results.pto)} | ${ratio(relayMed, results.pto.med())} | its own outbox table, publication and slot; default strategies (mutex concurrency: one message at a time, in order; each message locked and marked processed in its own transaction); handler awaits \`js.publish()\` with msgID |`,
  );
  L.push(
    `| polling outbox relay | ${cell(results.poll)}${part(results.poll)} | ${cell(results.poll, (s) => s.excl)} | ${rssCell(results.poll)} | ${ratio(relayMed, results.poll.med())} | one worker: BEGIN; \`SELECT … ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED\`; \`js.publish()\` ×500 pipelined with msgID; DELETE; COMMIT (the N rows inserted at once: the transaction shape does not matter to it) |`,
  );
  L.push('');
  L.push(
    'Published figures for other relays (different, larger hardware; vendor numbers, for orientation only): Sequin > 50,000 ops/s, p99 253 ms (32-vCPU RDS → MSK); Debezium Server ~20,000–23,000 ops/s, p99 440 ms.',
  );
  L.push('');

  // notes drawn from this run's figures
  const notes: string[] = [];
  if (single && single.decode.ok() && single.ref.ok() && single.decode.med() < single.ref.med()) {
    const ws = median(single.decode.cpu.map((c) => (c.ws / c.wall) * 100));
    const pr = median(single.decode.cpu.map((c) => (c.proc / c.wall) * 100));
    notes.push(
      `Decode-only is slower than the reference loop on single-row transactions (${fmtInt(single.decode.med())} vs ${fmtInt(single.ref.med())} ev/s): a reader that keeps up gets each small message in its own socket read while the walsender writes each on its own, so both sides spend their CPU on wake-ups (walsender ${Math.round(ws)} %, reader ${Math.round(pr)} % of a core); a reader that lags lets messages queue and reads them in batches. The walsender decoding one transaction at a time is the ceiling for this shape on this machine.`,
    );
  }
  const r5 = lat?.byRate.get(5_000)?.runs ?? [];
  if (r5.length > 1) {
    const p99s = r5.map((x) => x.p99);
    const refP99s = (results.latRef?.byRate.get(5_000)?.runs ?? []).map((x) => x.p99);
    notes.push(
      `Tail latency on this 2-core machine is noisy: p99 at 5,000 ev/s ranged ${fmtMs(Math.min(...p99s))}–${fmtMs(Math.max(...p99s))} ms over the repetitions while p50 stayed ≤ ${fmtMs(Math.max(...r5.map((x) => x.p50)))} ms${refP99s.length > 0 ? `; the reference loop's p99 ranged ${fmtMs(Math.min(...refP99s))}–${fmtMs(Math.max(...refP99s))} ms in the repetitions between them` : ''}. A stretch of a few hundred ms in which the walsender falls behind (the producers, the walsender, the consumer and nats-server share 2 cores) sets the p99 of a whole step. Compare medians across runs, not single steps.`,
    );
  }
  const r20 = lat?.byRate.get(20_000)?.runs ?? [];
  if (r20.length > 0 && median(r20.map((x) => x.p50)) > LAT_P99_LIMIT_MS) {
    notes.push(
      `At 20,000 ev/s offered, the ${LAT_CONNS} producer backends, the walsender, the relay and nats-server compete for 2 cores: the relay gets ${fmtPct(median(r20.map((x) => x.cpuProc)))} of a core and its walsender ${fmtPct(median(r20.map((x) => x.cpuWs)))} (their fair share, neither saturated) and events queue; the reference loop falls behind the same way. This rate measures the machine more than the relay.`,
    );
  }
  if (results.pto.ok()) {
    notes.push(
      `pg-transactional-outbox reads the whole backlog into memory (peak RSS ${fmtMB(median(results.pto.rss))}) and, with its default mutex strategy, handles one message at a time: a transaction that locks the row, the handler's awaited PubAck, the update that marks it processed.`,
    );
  }
  // (g)
  L.push(`## (g) Backfill: ${fmtInt(BACKFILL_N)} existing rows published as READ events while the relay streams`);
  L.push('');
  L.push(
    `\`fraiseql-relay backfill\` of a table whose ${fmtInt(BACKFILL_N)} rows exist before the slot (chunks of 1,000 rows, each between a low and a high watermark), requested through the backfill table while the relay runs. Rows/s from the relay picking the request up to its last chunk being durable in JetStream (the backfill row's \`started_at\` and \`finished_at\`); "with writes": single-row UPDATEs of random rows committed at ${fmtInt(BACKFILL_WRITE_RATE)}/s meanwhile (their events are published too, in order with the READ events). Beside it, the relay's own drain of (a) from this run.`,
  );
  L.push('');
  const bf = results.backfill;
  if (!bf) L.push('not run');
  else {
    const drainMed = single && single.relay.ok() ? single.relay.med() : null;
    L.push(
      '| run | rows/s | relay peak RSS | UPDATEs/s committed meanwhile | rows skipped (changed inside their window) | ÷ relay drain of (a), single-row |',
    );
    L.push('|---|---|---|---|---|---|');
    L.push(`| alone | ${cell(bf.alone)} | ${rssCell(bf.alone)} | – | – | ${drainMed === null ? '–' : ratio(bf.alone.med(), drainMed)} |`);
    L.push(
      `| with writes | ${cell(bf.withWrites)} | ${rssCell(bf.withWrites)} | ${bf.writesPerSec.length ? fmtSpread(bf.writesPerSec) : '–'} | ${bf.skipped.length ? fmtSpread(bf.skipped) : '–'} | ${drainMed === null ? '–' : ratio(bf.withWrites.med(), drainMed)} |`,
    );
    L.push(`| relay drain, (a) single-row transactions | ${drainMed === null ? 'not run' : cell(single!.relay)} | | | | |`);
  }
  L.push('');

  if (notes.length > 0) {
    L.push('## Notes on this run');
    L.push('');
    for (const n of notes) L.push(`- ${n}`);
    L.push('');
  }

  // targets
  L.push('## Targets');
  L.push('');
  const tgt = (ok: boolean | null) => (ok === null ? 'not measured' : ok ? '**met**' : '**not met**');
  const refRatio = single && single.relay.ok() && single.ref.ok() ? single.relay.med() / single.ref.med() : null;
  const refRatioX = single && single.relay.excl.length && single.ref.excl.length ? single.relay.medExcl() / single.ref.medExcl() : null;
  const ptoRatio = single && single.relay.ok() && results.pto.ok() ? single.relay.med() / results.pto.med() : null;
  const p99at5k = lat?.byRate.get(5_000)?.runs.length ? median(lat.byRate.get(5_000)!.runs.map((x) => x.p99)) : null;
  L.push(
    `- Single-row backlog drain ≥ 90 % of the reference loop: ${refRatio === null ? 'not measured' : `${(refRatio * 100).toFixed(0)} % (excl. start-up ${refRatioX === null ? '–' : `${(refRatioX * 100).toFixed(0)} %`})`} → ${tgt(refRatio === null ? null : refRatio >= 0.9)}`,
  );
  L.push(
    `- Single-row backlog drain ≥ 3× pg-transactional-outbox: ${ptoRatio === null ? 'not measured' : `${ptoRatio.toFixed(1)}×`} → ${tgt(ptoRatio === null ? null : ptoRatio >= 3)}`,
  );
  L.push(
    `- p99 commit → ack at 5,000 events/s < 10 ms: ${p99at5k === null ? 'not measured' : `${fmtMs(p99at5k)} ms`} → ${tgt(p99at5k === null ? null : p99at5k < 10)}`,
  );
  const big = results.drain.get('one');
  const bigRss = big && big.relay.rss.length ? Math.max(...big.relay.rss) : null;
  const singleRss = single && single.relay.rss.length ? median(single.relay.rss) : null;
  L.push(
    `- Peak RSS draining one ${fmtInt(N)}-row transaction < 200 MB: ${bigRss === null ? 'not measured' : `${fmtMB(bigRss)} (highest of the repetitions; single-row transactions: ${singleRss === null ? '–' : fmtMB(singleRss)})`} → ${tgt(bigRss === null ? null : bigRss < 200 * 1024)}`,
  );
  const hMed = (key: string): number | null => {
    const s = results.handlers.get(key);
    return s && s.excl.length > 0 ? s.medExcl() : null;
  };
  const fast = hMed(`trivial-c8-b${BATCH_DEFAULT}`);
  const fastOrdered = hMed(`trivial-c8-b${BATCH_DEFAULT}-ordered`);
  const c16 = results.ceilings.get('16');
  const ceiling16 = c16 && c16.ok() ? c16.med() : null;
  L.push(
    `- Inbound, trivial handler, concurrency 8, batched ≥ 20,000 events/s and ≥ the 16-connection single-row commit ceiling: ${fast === null ? 'not measured' : `${fmtInt(fast)} events/s (excl. start-up); ceiling ${ceiling16 === null ? '–' : fmtInt(ceiling16)} rows/s (${ceiling16 === null ? '–' : ratio(fast, ceiling16)} of it)`} → ${tgt(fast === null || ceiling16 === null ? null : fast >= 20_000 && fast >= ceiling16)}`,
  );
  L.push(
    `- Inbound with \`order_by\` on ${fmtInt(ORDER_KEYS)} keys ≥ 70 % of unordered: ${fast === null || fastOrdered === null ? 'not measured' : `${fmtInt(fastOrdered)} vs ${fmtInt(fastOrdered === null ? 0 : fast)} events/s, ${ratio(fastOrdered, fast)}`} → ${tgt(fast === null || fastOrdered === null ? null : fastOrdered >= 0.7 * fast)}`,
  );
  const latAll = LAT_CASES.map((c) => results.handlerLat.get(c.key)).filter(
    (r): r is Exclude<typeof r, string | undefined> => typeof r === 'object',
  );
  const worstP99 = latAll.length === LAT_CASES.length ? Math.max(...latAll.map((r) => r.p99)) : null;
  L.push(
    `- Inbound p99 (stored → handler committed) < 50 ms at ${fmtInt(LAT_RATE)} events/s: ${worstP99 === null ? 'not measured' : `${latAll.map((r, i) => `${fmtMs(r.p99)} ms${LAT_CASES[i]!.orderBy ? ' ordered' : ' unordered'}`).join(', ')}`} → ${tgt(worstP99 === null ? null : worstP99 < 50)}`,
  );
  const bfRss =
    results.backfill && results.backfill.alone.rss.length
      ? Math.max(...results.backfill.alone.rss, ...results.backfill.withWrites.rss)
      : null;
  L.push(
    `- Peak RSS during a ${fmtInt(BACKFILL_N)}-row backfill < 200 MB (chunks are let go once durable): ${bfRss === null ? 'not measured' : `${fmtMB(bfRss)} (highest of the runs)`} → ${tgt(bfRss === null ? null : bfRss < 200 * 1024)}`,
  );
  L.push('');
  L.push('## How to run');
  L.push('');
  L.push(
    '`npm run bench` (PostgreSQL ≥ 14 server binaries and nats-server must be installed, as for the tests). `BENCH_N=20000 BENCH_REPS=1 npm run bench` for a quick run; `BENCH_ONLY=a,e` runs some sections only; `BENCH_OUT=-` does not write this file. See the header of bench/run.ts for every setting.',
  );
  L.push('');
  return L.join('\n');
}
