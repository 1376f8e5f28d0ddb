import { Command, Option } from 'commander';
import { resolve } from 'node:path';
import { loadConfig, type Config } from './config/load.js';
import { createLogger, type Logger } from './util/log.js';
import { UsageError, errorMessage } from './util/errors.js';
import { VERSION } from './util/version.js';
import { MissingBinaryError } from './local/binaries.js';
import { setDatabaseCaFile } from './util/db.js';
import { runMigrate } from './commands/migrate.js';
import { runDaemon } from './daemon.js';
import { runCheck } from './commands/check.js';
import { runTeardown } from './commands/teardown.js';
import { runDemo } from './commands/demo.js';
import { dlqList, dlqRetry, dlqPurge } from './commands/dlq.js';
import { runStatus } from './commands/status.js';
import { runReplay, runReconcile } from './commands/replay.js';
import { backfillCancel, backfillStatus, runBackfill } from './commands/backfill.js';

interface GlobalOpts {
  config: string;
  logLevel: string;
}

function withCommon(cmd: Command): Command {
  return cmd
    .addOption(new Option('-c, --config <file>', 'the service configuration').env('FRAISEQL_RELAY_CONFIG').default('./fraiseql.toml'))
    .addOption(
      new Option('--log-level <level>', 'log level')
        .choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
        .env('LOG_LEVEL')
        .default('info'),
    );
}

function setup(opts: GlobalOpts): { config: Config; log: Logger } {
  const log = createLogger(opts.logLevel);
  const config = loadConfig(resolve(opts.config));
  setDatabaseCaFile(config.relay.database_ca_file);
  if (config.ignoredKeys.length > 0) {
    log.warn({ keys: config.ignoredKeys }, 'FraiseQL [observers] keys the relay does not use are ignored');
  }
  return { config, log };
}

/** The command being run (`status`, `dlq purge`, …), for error messages; set before each action. */
let operation = 'fraiseql-relay';

/**
 * Runs an action and maps errors to the exit codes: 0 success, 2 usage or configuration error
 * (nothing was changed; also a missing local binary for `demo`), 1 anything else. Errors go to
 * stderr; stdout carries only the command's output.
 */
async function guard(fn: () => Promise<number | void>): Promise<void> {
  try {
    const code = await fn();
    process.exitCode = code ?? 0;
  } catch (err) {
    if (err instanceof UsageError || err instanceof MissingBinaryError) {
      process.stderr.write(`fraiseql-relay: ${err.message}\n`);
      process.exitCode = err.exitCode;
    } else {
      // the failure says where (host) and what to do; this says which operation failed
      process.stderr.write(`fraiseql-relay: ${operation} failed: ${errorMessage(err)}\n`);
      process.exitCode = 1;
    }
  }
}

const EXIT_CODES = `
Exit codes:
  0  success (check: every probe passed or warned)
  1  a failure: a server unreachable, a statement or publish failed, a check probe failed,
     a dead letter still failing after dlq retry
  2  usage or configuration error, or a refusal (a missing --yes, another relay's slot): nothing was changed

Logs (pino JSON, pretty on a terminal) go to stderr; stdout carries only the command's output
(--json: one JSON document).`;

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('fraiseql-relay')
    .description('Transactional outbox relay for FraiseQL: PostgreSQL logical decoding ▶ NATS JetStream, and back to SQL handlers')
    .version(VERSION, '-V, --version', 'print the version and exit')
    .showHelpAfterError()
    .addHelpText('after', EXIT_CODES)
    .hook('preAction', (_program, action) => {
      operation = action.parent && action.parent !== program ? `${action.parent.name()} ${action.name()}` : action.name();
    })
    .exitOverride((err: { exitCode: number }) => {
      // usage errors exit 2 (help and version exit 0)
      process.exit(err.exitCode === 0 ? 0 : 2);
    });

  withCommon(program.command('migrate'))
    .description("create or upgrade the relay's schema, functions, publication and slot (idempotent)")
    .option('--dry-run', 'print the SQL and change nothing')
    .option('--json', 'print the result (with --dry-run: the plan) as one JSON document')
    .action((o: GlobalOpts & { dryRun?: boolean; json?: boolean }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return runMigrate(config, log, { dryRun: o.dryRun === true, json: o.json === true });
      }),
    );

  withCommon(program.command('run'))
    .description('run the relay until SIGTERM/SIGINT')
    .option('--migrate', 'run `migrate` first (under its advisory lock); without it, an unmigrated database exits 2')
    .action((o: GlobalOpts & { migrate?: boolean }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return runDaemon(config, log, { migrate: o.migrate === true });
      }).then(() => {
        // the relay has stopped and confirmed what it published; a connection attempt still
        // pending (say, to an unreachable NATS) must not keep the process alive
        process.exit(process.exitCode ?? 0);
      }),
    );

  withCommon(program.command('check'))
    .description('validate the configuration and probe PostgreSQL and NATS without changing anything')
    .option('--json', 'machine-readable output')
    .action((o: GlobalOpts & { json?: boolean }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return runCheck(config, log, { json: o.json === true });
      }),
    );

  withCommon(program.command('teardown'))
    .description('drop the replication slot and publications (stops holding WAL)')
    .option('--yes', 'really drop them')
    .action((o: GlobalOpts & { yes?: boolean }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return runTeardown(config, log, o.yes === true);
      }),
    );

  withCommon(program.command('status'))
    .description('active relay and standbys, lag, slot, last event, heartbeat, consumers, dead letters')
    .option('--json', 'machine-readable output')
    .action((o: GlobalOpts & { json?: boolean }) => guard(async () => runStatus(setup(o).config, { json: o.json === true })));

  withCommon(program.command('replay'))
    .description('re-publish retained outbox rows (same message ids: JetStream drops what it has)')
    .requiredOption('--since <time>', 'an ISO time, or a duration meaning that long ago (2h, 30m, 7d)')
    .action((o: GlobalOpts & { since: string }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return runReplay(config, log, { since: o.since });
      }),
    );

  withCommon(program.command('reconcile'))
    .description('after slot invalidation: recreate the slot and re-publish the retained outbox rows it missed')
    .option('--yes', 'really recreate the slot')
    .option('--force', 'even when the slot is healthy')
    .option('--margin <duration>', 'also re-publish rows created this long before the last confirmed event', '5m')
    .action((o: GlobalOpts & { yes?: boolean; force?: boolean; margin: string }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return runReconcile(config, log, { yes: o.yes === true, force: o.force === true, margin: o.margin });
      }),
    );

  withCommon(program.command('backfill'))
    .description("publish a table's existing rows as READ events on its rules' subjects, while the relay keeps streaming")
    .argument('[table]', 'a table of [[observers.rules]] (may be schema-qualified)')
    .option('--subject <subject>', "only this one of the table's rule subjects")
    .option('--where <sql>', "only rows where this SQL condition holds (besides the rules' own where)")
    .option('--chunk-size <n>', 'rows per chunk (1-100000)', '1000')
    .option('--rate <rows>', 'at most this many rows per second')
    .option('--detach', 'only request it: print its id and exit (the relay does the work)')
    .option('--status', 'list open and recent backfills with their progress')
    .option('--cancel [id]', 'cancel a backfill (default: every open one); the relay stops within one chunk')
    .option('--json', 'machine-readable output')
    .addHelpText(
      'after',
      "\nThe active relay (`fraiseql-relay run`) does the work: this command writes the request into the relay schema's\n" +
        'backfill table and follows its progress (Ctrl-C stops following, not the backfill). A relay that restarts resumes\n' +
        'at the last chunk JetStream acknowledged.',
    )
    .action(
      (
        table: string | undefined,
        o: GlobalOpts & {
          subject?: string;
          where?: string;
          chunkSize: string;
          rate?: string;
          detach?: boolean;
          status?: boolean;
          cancel?: string | boolean;
          json?: boolean;
        },
      ) =>
        guard(async () => {
          const { config } = setup(o);
          const json = o.json === true;
          if (o.status === true) return backfillStatus(config, { json });
          if (o.cancel !== undefined) {
            const id = o.cancel === true ? null : Number(o.cancel);
            if (id !== null && !Number.isInteger(id)) throw new UsageError(`--cancel takes a backfill id (got ${String(o.cancel)})`);
            return backfillCancel(config, id, { json });
          }
          return runBackfill(config, {
            ...(table === undefined ? {} : { table }),
            ...(o.subject === undefined ? {} : { subject: o.subject }),
            ...(o.where === undefined ? {} : { where: o.where }),
            chunkSize: Number(o.chunkSize),
            ...(o.rate === undefined ? {} : { rate: Number(o.rate) }),
            detach: o.detach === true,
            json,
          });
        }),
    );

  const dlq = program.command('dlq').description('inspect and re-drive dead letters');
  withCommon(dlq.command('list'))
    .description('list dead letters: id, direction, subject, handler, attempts, time, error')
    .option('--json', 'machine-readable output')
    .option('--limit <n>', 'at most this many', '100')
    .action((o: GlobalOpts & { json?: boolean; limit: string }) =>
      guard(async () => dlqList(setup(o).config, { json: o.json === true, limit: Number(o.limit) })),
    );
  withCommon(dlq.command('retry'))
    .description('re-drive dead letters: call the handler again (exactly once) or re-publish')
    .argument('[ids...]', 'dead-letter ids from `dlq list`')
    .option('--all', 'every dead letter')
    .action((ids: string[], o: GlobalOpts & { all?: boolean }) =>
      guard(async () => {
        const { config, log } = setup(o);
        return dlqRetry(config, log, { ids, all: o.all === true });
      }),
    );
  withCommon(dlq.command('purge'))
    .description('delete dead letters: by id, --older-than, or all of them with --yes')
    .argument('[ids...]', 'dead-letter ids from `dlq list`')
    .option('--older-than <duration>', 'only those recorded longer ago than this (e.g. 7d)')
    .option('--yes', 'with no ids and no --older-than: really delete every dead letter')
    .action((ids: string[], o: GlobalOpts & { olderThan?: string; yes?: boolean }) =>
      guard(async () =>
        dlqPurge(setup(o).config, { ids, yes: o.yes === true, ...(o.olderThan === undefined ? {} : { olderThan: o.olderThan }) }),
      ),
    );

  program
    .command('demo')
    .description('start throwaway PostgreSQL and NATS (or Redis) and run the order/inventory example end to end')
    .addOption(new Option('--log-level <level>', 'log level').env('LOG_LEVEL').default('error'))
    .addOption(new Option('--backend <backend>', 'the broker the two services use').choices(['nats', 'redis']).default('nats'))
    .option('--orders <n>', 'orders before, during and after the broker outage', '20')
    .option('--outage <seconds>', 'how long the broker is down', '3')
    .action((o: { logLevel: string; orders: string; outage: string; backend: 'nats' | 'redis' }) =>
      guard(async () => runDemo({ logLevel: o.logLevel, orders: Number(o.orders), outageSeconds: Number(o.outage), backend: o.backend })),
    );

  return program;
}

await buildProgram().parseAsync(process.argv);
