import type { Config } from '../config/load.js';
import { publishWebhookSubject, webhookPrefix, webhookRoutes } from '../webhook/route.js';
import type { Target } from './envelope.js';

/**
 * Where a `[[observers.publish]]` entry sends an event: its NATS subject (with the subscription
 * topic) when NATS is the backend, and the queue of each of its webhook actions.
 */
export function publishTargets(config: Config, index: number): Target[] {
  const p = config.observers.publish[index]!;
  const out: Target[] = [];
  if (config.observers.backend !== 'webhook') {
    const t: Target = { subject: p.subject };
    if (p.subscription_topic !== undefined) t.subscriptionTopic = p.subscription_topic;
    out.push(t);
  }
  const sub = publishWebhookSubject(config);
  p.actions.forEach((_, j) => out.push({ subject: sub(index, j) }));
  return out;
}

/** Subjects the relay's stream must capture: every configured publish subject plus [relay.stream] subjects. */
export function requiredSubjects(config: Config): string[] {
  const rules = config.observers.rules.flatMap((r) => (r.subject ? [r.subject] : []));
  const topics = config.observers.publish.some((p) => p.subscription_topic !== undefined) ? [`${config.relay.subscription_prefix}.>`] : [];
  if (webhookRoutes(config).length > 0) topics.push(`${webhookPrefix(config)}.>`);
  return [...new Set([...configuredSubjects(config), ...rules, ...topics, ...config.relay.stream.subjects])];
}

/** Every subject a `[[observers.publish]]` entry names. */
function configuredSubjects(config: Config): string[] {
  return [...new Set(config.observers.publish.map((p) => p.subject))];
}
