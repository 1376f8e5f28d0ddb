import { readFileSync } from 'node:fs';
import {
  credsAuthenticator,
  nkeyAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
  type ConnectionOptions,
} from '@nats-io/transport-node';
import type { NatsConfig } from '../config/load.js';
import { UsageError } from '../util/errors.js';

function readFile(what: string, path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`[relay.nats] ${what} ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

function fromEnv(key: string, name: string, env: NodeJS.ProcessEnv): string {
  const v = env[name];
  if (v === undefined || v === '') throw new UsageError(`[relay.nats] ${key}: environment variable ${name} is not set`);
  return v;
}

/**
 * TLS and authentication options for the NATS connection from `[relay.nats]`: a credentials
 * file, an nkey seed, a token or a user and password (the secrets themselves stay in files or
 * the environment), and TLS with an optional CA and client certificate.
 */
export function natsAuthOptions(cfg: NatsConfig | undefined, env: NodeJS.ProcessEnv = process.env): Partial<ConnectionOptions> {
  if (!cfg) return {};
  const out: Partial<ConnectionOptions> = {};
  if (cfg.tls || cfg.ca_file || cfg.cert_file) {
    const tls: NonNullable<ConnectionOptions['tls']> = {};
    if (cfg.ca_file) tls.caFile = cfg.ca_file;
    if (cfg.cert_file) tls.certFile = cfg.cert_file;
    if (cfg.key_file) tls.keyFile = cfg.key_file;
    out.tls = tls;
  }
  if (cfg.creds_file) {
    const creds = readFile('creds_file', cfg.creds_file);
    out.authenticator = credsAuthenticator(creds);
  } else if (cfg.nkey_seed_file) {
    const seed = new TextEncoder().encode(new TextDecoder().decode(readFile('nkey_seed_file', cfg.nkey_seed_file)).trim());
    out.authenticator = nkeyAuthenticator(seed);
  } else if (cfg.token_env) {
    out.authenticator = tokenAuthenticator(fromEnv('token_env', cfg.token_env, env));
  } else if (cfg.user_env && cfg.password_env) {
    out.authenticator = usernamePasswordAuthenticator(
      fromEnv('user_env', cfg.user_env, env),
      fromEnv('password_env', cfg.password_env, env),
    );
  }
  return out;
}
