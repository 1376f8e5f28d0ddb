/** NATS subject matching: `*` matches one token, `>` one or more trailing tokens. */
export function subjectMatches(filter: string, subject: string): boolean {
  if (filter === subject) return true;
  const f = filter.split('.');
  const s = subject.split('.');
  for (let i = 0; i < f.length; i++) {
    const tok = f[i];
    if (tok === '>') return s.length > i;
    if (i >= s.length) return false;
    if (tok !== '*' && tok !== s[i]) return false;
  }
  return f.length === s.length;
}

/** True when some filter in `filters` captures `subject`. */
export function anyMatches(filters: readonly string[], subject: string): boolean {
  for (const f of filters) if (subjectMatches(f, subject)) return true;
  return false;
}

/** True when filter `a` captures every subject `b` can match (b may contain wildcards). */
export function filterCovers(a: string, b: string): boolean {
  if (a === b) return true;
  const fa = a.split('.');
  const fb = b.split('.');
  for (let i = 0; i < fa.length; i++) {
    const ta = fa[i];
    if (ta === '>') return fb.length > i;
    if (i >= fb.length) return false;
    const tb = fb[i];
    if (tb === '>') return false;
    if (ta !== '*' && ta !== tb) return false;
  }
  return fa.length === fb.length;
}
