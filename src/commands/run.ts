import type { Config } from '../config/load.js';
import type { Logger } from '../log.js';
import { Relay } from '../relay.js';

/** The daemon: runs until SIGTERM/SIGINT, then stops cleanly (exit 0). */
export async function runRelay(config: Config, log: Logger): Promise<number> {
  const relay = new Relay(config, log);
  let signalled: NodeJS.Signals | null = null;
  const stopped = new Promise<void>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) {
        log.warn({ signal: sig }, 'second signal: exiting now');
        process.exit(1);
      }
      signalled = sig;
      log.info({ signal: sig }, 'stopping');
      resolve();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  await Promise.race([relay.start(), stopped]);
  log.info({ project: config.project.name }, 'relay running');
  await stopped;
  await relay.stop();
  return 0;
}
