import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { Relay } from '../relay/relay.js';
import { startOps } from '../daemon.js';

/**
 * The daemon: runs until SIGTERM/SIGINT, then stops cleanly (exit 0). A condition it must not
 * run on (an invalidated slot) stops it with exit code 1 and the explanation on stderr.
 */
export async function runRelay(config: Config, log: Logger): Promise<number> {
  const relay = new Relay(config, log);
  let signalled: NodeJS.Signals | null = null;
  const stopped = new Promise<'signal'>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) {
        log.warn({ signal: sig }, 'second signal: exiting now');
        process.exit(1);
      }
      signalled = sig;
      log.info({ signal: sig }, 'stopping');
      resolve('signal');
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  const ops = await startOps(config, relay, log);
  try {
    await Promise.race([relay.start(), stopped]);
  } catch (err) {
    // a failed start may leave connections open (NATS): close them, or the process never exits
    await relay.stop().catch(() => {});
    await ops.close();
    throw err;
  }
  if (!signalled) {
    ops.health.set('postgres', true);
    log.info({ project: config.project.name, http: ops.port }, 'relay running');
  }
  const why = await Promise.race([stopped, relay.fatal]);
  await relay.stop();
  await ops.close();
  if (why instanceof Error) {
    process.stderr.write(`fraiseql-relay: ${why.message}\n`);
    return 1;
  }
  return 0;
}
