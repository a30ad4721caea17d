import type { BaseIssue, GenericSchema } from 'valibot';
import { safeParse } from 'valibot';

/** `attachments[2].nodeId`, `backends[0].iscsi.portals[0]`: where in a record (or the configuration) a problem is. */
export function issueKey(issue: BaseIssue<unknown>, prefix = ''): string {
  let key = prefix;
  for (const p of issue.path ?? []) {
    const k = p.key as string | number;
    key += typeof k === 'number' ? `[${k}]` : key === '' ? k : `.${k}`;
  }
  return key;
}

/**
 * A record read from disk, checked against its schema: the parsed value, or why
 * not (`key: message`, for the corrupt-record report; never thrown at start-up).
 */
export function checkRecord<S extends GenericSchema>(schema: S, value: unknown): { ok: true; value: import('valibot').InferOutput<S> } | { ok: false; why: string } {
  const r = safeParse(schema, value, { abortEarly: true });
  if (r.success) return { ok: true, value: r.output };
  const issue = r.issues[0];
  const key = issueKey(issue);
  return { ok: false, why: key ? `${key}: ${issue.message}` : issue.message };
}
