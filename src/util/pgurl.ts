/**
 * PostgreSQL connection URLs with several hosts, as libpq reads them:
 *
 *   postgresql://user:secret@db-a:5432,db-b:5433/orders?target_session_attrs=read-write
 *
 * or with the hosts as query parameters (libpq's other spelling, also the one for socket
 * directories: `postgresql://user@/orders?host=/run/pg-a,/run/pg-b&port=5432`).
 *
 * The hosts are tried in order; one that cannot be reached, or is not the kind of server
 * `target_session_attrs` asks for, is skipped. node-postgres connects to one host only, so the
 * URL is split here into one single-host URL per host (util/db.ts picks among them).
 * No imports: util/errors.ts uses it to name the servers in messages.
 */

/** libpq's `target_session_attrs` values (PostgreSQL 14 and later). */
const TARGET_SESSION_ATTRS = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];

interface PgUrlHost {
  /** the host as the URL writes it (percent-encoded, IPv6 in brackets) */
  raw: string;
  /** the host to connect to: decoded, without IPv6 brackets; a path starting with `/` is a socket directory */
  host: string;
  /** the port written for this host, or undefined (PostgreSQL's default) */
  port: number | undefined;
  /** `host:port` (no user, no password), for messages */
  label: string;
}

export interface ParsedPgUrl {
  /** in the order the URL lists them; empty when the URL names no host (the local default) */
  hosts: PgUrlHost[];
  targetSessionAttrs: TargetSessionAttrs;
  /** the URL's path (`/<database>`, or empty), as written */
  path: string;
  /** the URL for one of its hosts, without `target_session_attrs` (node-postgres reads it as one server) */
  forHost(host: PgUrlHost): string;
  /** the URL as written, without `target_session_attrs` */
  withoutHostChoice: string;
}

/** A URL libpq would refuse (an unknown `target_session_attrs`, a malformed host list). */
export class PgUrlError extends Error {}

const URL_RE = /^(postgres(?:ql)?:\/\/)([^/?#]*)(.*)$/is;

/**
 * The hosts and `target_session_attrs` of a `postgres://` / `postgresql://` URL; null for anything
 * else (a `key=value` connection string is left to node-postgres as it is). Throws PgUrlError for
 * a URL libpq would refuse.
 */
export function parsePgUrl(url: string): ParsedPgUrl | null {
  const m = URL_RE.exec(url.trim());
  if (!m) return null;
  const scheme = m[1]!;
  const authority = m[2]!;
  const rest = m[3]!;
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : '';
  const hostlist = at >= 0 ? authority.slice(at + 1) : authority;

  const hashAt = rest.indexOf('#');
  const beforeHash = hashAt >= 0 ? rest.slice(0, hashAt) : rest;
  const q = beforeHash.indexOf('?');
  const path = q >= 0 ? beforeHash.slice(0, q) : beforeHash;
  const query = q >= 0 ? beforeHash.slice(q + 1) : '';
  let target: TargetSessionAttrs = 'any';
  const kept: string[] = [];
  let hostParam: string | undefined;
  let portParam: string | undefined;
  for (const pair of query === '' ? [] : query.split('&')) {
    const eq = pair.indexOf('=');
    const key = decode(eq >= 0 ? pair.slice(0, eq) : pair);
    if (key === 'host' || key === 'port') {
      // the last one counts, as libpq reads them
      if (key === 'host') hostParam = decode(eq >= 0 ? pair.slice(eq + 1) : '');
      else portParam = decode(eq >= 0 ? pair.slice(eq + 1) : '');
      continue;
    }
    if (key !== 'target_session_attrs') {
      kept.push(pair);
      continue;
    }
    const value = decode(eq >= 0 ? pair.slice(eq + 1) : '');
    if (!(TARGET_SESSION_ATTRS as readonly string[]).includes(value)) {
      throw new PgUrlError(
        `invalid target_session_attrs value "${value}" in the database URL: use one of ${TARGET_SESSION_ATTRS.join(', ')}`,
      );
    }
    target = value as TargetSessionAttrs;
  }
  const withParams = (extra: string[]) => {
    const all = [...kept, ...extra];
    return `${path}${all.length > 0 ? '?' + all.join('&') : ''}`;
  };
  const tail = withParams([]);

  if (hostParam !== undefined || portParam !== undefined) {
    // ?host= (and ?port=) win over the authority's, as in libpq; each host's URL carries its own
    const hosts =
      hostParam !== undefined
        ? queryHosts(hostParam, portParam)
        : queryHosts((hostlist === '' ? [] : splitHosts(hostlist).map(parseHost)).map((h) => h.host).join(','), portParam);
    const asWritten = [
      ...(hostParam !== undefined ? [`host=${encodeURIComponent(hostParam)}`] : []),
      ...(portParam !== undefined ? [`port=${encodeURIComponent(portParam)}`] : []),
    ];
    return {
      hosts,
      targetSessionAttrs: target,
      path,
      forHost: (h) =>
        `${scheme}${userinfo}${withParams([`host=${encodeURIComponent(h.host)}`, ...(h.port !== undefined ? [`port=${h.port}`] : [])])}`,
      withoutHostChoice: `${scheme}${authority}${withParams(asWritten)}`,
    };
  }
  const hosts = hostlist === '' ? [] : splitHosts(hostlist).map(parseHost);
  return {
    hosts,
    targetSessionAttrs: target,
    path,
    forHost: (h) => `${scheme}${userinfo}${h.raw}${h.port !== undefined ? ':' + h.port : ''}${tail}`,
    withoutHostChoice: `${scheme}${authority}${tail}`,
  };
}

/**
 * libpq's `host=a,b` with `port=p` (every host) or `port=p1,p2` (one each); a host starting with
 * `/` is a socket directory.
 */
function queryHosts(hostList: string, portList: string | undefined): PgUrlHost[] {
  const names = hostList === '' ? [''] : splitHosts(hostList);
  const ports = portList === undefined || portList === '' ? [] : splitHosts(portList);
  if (ports.length > 1 && ports.length !== names.length) {
    throw new PgUrlError(`the database URL names ${names.length} host(s) but ${ports.length} ports: give one port, or one per host`);
  }
  return names.map((name, i) => {
    const portText = ports.length === 0 ? undefined : ports.length === 1 ? ports[0] : ports[i];
    let port: number | undefined;
    if (portText !== undefined) {
      port = /^\d+$/.test(portText) ? Number(portText) : NaN;
      if (!(port >= 1 && port <= 65535)) throw new PgUrlError(`the database URL's port "${portText}" is invalid`);
    }
    const host = name.startsWith('[') && name.endsWith(']') ? name.slice(1, -1) : name;
    const shown = host.includes(':') && !host.startsWith('/') ? `[${host}]` : host || 'localhost';
    return { raw: encodeURIComponent(host), host, port, label: `${shown}:${port ?? 5432}` };
  });
}

/** `h1:p1,h2:p2` (IPv6 in brackets may hold `:`, never `,`). */
function splitHosts(list: string): string[] {
  const parts = list.split(',');
  if (parts.some((p) => p === '')) throw new PgUrlError(`the database URL's host list "${list}" has an empty entry`);
  return parts;
}

function parseHost(spec: string): PgUrlHost {
  let raw: string;
  let portText: string | undefined;
  if (spec.startsWith('[')) {
    const close = spec.indexOf(']');
    if (close < 0) throw new PgUrlError(`the database URL's host "${spec}" has an unclosed IPv6 bracket`);
    raw = spec.slice(0, close + 1);
    const after = spec.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) throw new PgUrlError(`the database URL's host "${spec}" is malformed`);
    portText = after === '' ? undefined : after.slice(1);
  } else {
    const colon = spec.lastIndexOf(':');
    raw = colon >= 0 ? spec.slice(0, colon) : spec;
    portText = colon >= 0 ? spec.slice(colon + 1) : undefined;
  }
  let port: number | undefined;
  if (portText !== undefined && portText !== '') {
    port = /^\d+$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 1 && port <= 65535)) throw new PgUrlError(`the database URL's host "${spec}" has an invalid port "${portText}"`);
  }
  const decoded = decode(raw);
  const host = decoded.startsWith('[') && decoded.endsWith(']') ? decoded.slice(1, -1) : decoded;
  const shown = host.includes(':') ? `[${host}]` : host || 'localhost';
  return { raw, host, port, label: `${shown}:${port ?? 5432}` };
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
