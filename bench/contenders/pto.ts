/**
 * Comparison: pg-transactional-outbox's logical-replication outbox listener (its own outbox
 * table, publication and slot), with a handler that publishes each message to JetStream with
 * `js.publish` (Nats-Msg-Id = message id) and returns after the PubAck. The library's default
 * strategies (mutex concurrency = strict order; each message is locked and marked processed in
 * its own database transaction), poisonous-message and max-attempts protection off as its README
 * suggests for an outbox, message cleanup off. Runs until SIGTERM.
 *   BENCH_ARGS='{"dbUrl":…,"natsUrl":…,"slot":…,"publication":…,"schema":"pto","table":"outbox","subject":…,"concurrency":"mutex"}'
 */
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import {
  createReplicationFullConcurrencyController,
  createReplicationMutexConcurrencyController,
  getDefaultLogger,
  initializeReplicationMessageListener,
  type TransactionalMessage,
} from 'pg-transactional-outbox';
import { args, ready, runMain, say, stopRequested } from './common.js';

interface Args {
  dbUrl: string;
  natsUrl: string;
  slot: string;
  publication: string;
  schema: string;
  table: string;
  subject: string;
  concurrency?: 'mutex' | 'full';
}

runMain(async () => {
  const a = args<Args>();
  const nc = await connect({ servers: a.natsUrl });
  const js = jetstream(nc, { timeout: 10_000 });
  const logger = getDefaultLogger('pto');
  logger.level = 'warn';
  const [shutdown] = initializeReplicationMessageListener(
    {
      outboxOrInbox: 'outbox',
      dbListenerConfig: { connectionString: a.dbUrl },
      settings: {
        dbSchema: a.schema,
        dbTable: a.table,
        dbPublication: a.publication,
        dbReplicationSlot: a.slot,
        enableMaxAttemptsProtection: false,
        enablePoisonousMessageProtection: false,
        messageCleanupIntervalInMs: 0,
      },
    },
    {
      handle: async (message: TransactionalMessage): Promise<void> => {
        await js.publish(a.subject, JSON.stringify(message), { msgID: message.id });
      },
    },
    logger,
    {
      concurrencyStrategy:
        a.concurrency === 'full' ? createReplicationFullConcurrencyController() : createReplicationMutexConcurrencyController(),
    },
  );
  ready();
  await stopRequested;
  await shutdown();
  await nc.drain();
  say('STOPPED');
});
