/** What readiness is made of: each component must be ok for `/readyz` to answer 200. */
export type HealthComponent = 'postgres' | 'nats' | 'redis' | 'slot' | 'heartbeat' | 'consumers';

export interface Readiness {
  ready: boolean;
  /** one entry per component that is not ok: component → why */
  reasons: Record<string, string>;
}

/**
 * Readiness and liveness state behind `/readyz` and `/livez`.
 *
 * Readiness: a component counts once registered (by {@link register}, which starts it not ok
 * with a reason, or by its first {@link set}); the relay is ready only while every registered
 * component is ok, and with none registered. Components never unregister: a relay that once
 * needed NATS keeps needing it.
 *
 * Liveness: each loop calls {@link touch} (with its own name when there are several) every
 * turn; the process is live while every loop that ever touched did so within `maxStaleMs`, and
 * while none has touched yet (startup). A loop that stops on purpose calls {@link forget}.
 */
export class Health {
  private readonly components = new Map<string, { ok: boolean; reason: string }>();
  private readonly touched = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Declares a component readiness depends on; it starts not ok, for `initialReason`. */
  register(name: HealthComponent, initialReason: string): void {
    if (!this.components.has(name)) this.components.set(name, { ok: false, reason: initialReason });
  }

  /** Records a component's state; registers it if needed. A not-ok state without reason gets a generic one. */
  set(component: HealthComponent, ok: boolean, reason?: string): void {
    this.components.set(component, { ok, reason: ok ? '' : (reason ?? `${component} is not ok`) });
  }

  /** Ready while every registered component is ok; `reasons` names those that are not. */
  ready(): Readiness {
    const reasons: Record<string, string> = {};
    for (const [name, c] of this.components) if (!c.ok) reasons[name] = c.reason;
    return { ready: Object.keys(reasons).length === 0, reasons };
  }

  /** Proves a loop is turning. */
  touch(loop = 'main'): void {
    this.touched.set(loop, this.now());
  }

  /** Stops watching a loop that ended on purpose. */
  forget(loop = 'main'): void {
    this.touched.delete(loop);
  }

  /** Loops not touched within `maxStaleMs`: loop → milliseconds since their last touch. */
  stale(maxStaleMs: number): Record<string, number> {
    const now = this.now();
    const out: Record<string, number> = {};
    for (const [loop, at] of this.touched) if (now - at > maxStaleMs) out[loop] = now - at;
    return out;
  }

  /** Live while every loop touched within `maxStaleMs`, or while no loop has touched yet. */
  live(maxStaleMs: number): boolean {
    return Object.keys(this.stale(maxStaleMs)).length === 0;
  }
}
