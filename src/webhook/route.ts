import type { Config, RuleAction } from '../config/load.js';

/** One webhook action of the configuration, with the internal subject its deliveries go through. */
export interface WebhookRoute {
  /** `r<rule>_<action>` or `p<publish entry>_<action>` */
  key: string;
  action: RuleAction;
  /** JetStream subject (backend = "nats") or internal key (backend = "webhook") */
  subject: string;
  /** durable consumer name delivering it (backend = "nats") */
  consumer: string;
}

const token = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, '_');

/** The subject prefix under which a service's webhook deliveries are queued in JetStream. */
export function webhookPrefix(config: Config): string {
  return `fraiseql.webhook.${token(config.project.name)}`;
}

/** Every webhook action in the configuration (table rules and publish entries). */
export function webhookRoutes(config: Config): WebhookRoute[] {
  const prefix = webhookPrefix(config);
  const out: WebhookRoute[] = [];
  const add = (key: string, action: RuleAction) =>
    out.push({ key, action, subject: `${prefix}.${key}`, consumer: `${token(config.project.name)}-webhook-${key}` });
  config.observers.rules.forEach((r, i) => r.actions.forEach((a, j) => add(`r${i}_${j}`, a)));
  config.observers.publish.forEach((p, i) => p.actions.forEach((a, j) => add(`p${i}_${j}`, a)));
  return out;
}

export function ruleWebhookSubject(config: Config): (rule: number, action: number) => string {
  const prefix = webhookPrefix(config);
  return (i, j) => `${prefix}.r${i}_${j}`;
}

export function publishWebhookSubject(config: Config): (entry: number, action: number) => string {
  const prefix = webhookPrefix(config);
  return (i, j) => `${prefix}.p${i}_${j}`;
}
