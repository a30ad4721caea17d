import { invalidArgument } from '../errors/domain-error.js';

/**
 * iSCSI CHAP credentials, shared by the controller (target side: who may log
 * in) and the node (initiator side: how to log in). They travel only in CSI
 * `secrets` fields, never in publish_context, a record or a log line.
 *
 * One-way CHAP: the target checks the initiator (`user`/`password`).
 * Mutual CHAP: the initiator also checks the target (`mutualUser`/`mutualPassword`).
 */
export interface ChapCredentials {
  user: string;
  password: string;
  mutualUser?: string;
  mutualPassword?: string;
}

export class ChapError extends Error {}

/**
 * The secret keys sinter reads, the same names Kubernetes' in-tree iSCSI
 * volume and open-iscsi use, so existing Secrets work unchanged.
 */
export const CHAP_SECRET_KEYS = {
  user: 'node.session.auth.username',
  password: 'node.session.auth.password',
  mutualUser: 'node.session.auth.username_in',
  mutualPassword: 'node.session.auth.password_in',
} as const;

/** A CHAP name: printable, no spaces or commas (it ends up in tool option strings). */
const USER_RE = /^[A-Za-z0-9._:@+=/-]{1,255}$/;

function checkSecret(s: string, what: string): void {
  // Lengths only, never the value: this message may reach a caller.
  if (s.length < 1 || s.length > 255) throw new ChapError(`${what} must be 1 to 255 characters long`);
  // eslint-disable-next-line no-control-regex -- control characters are exactly what this refuses
  if (/[\x00-\x1f\x7f]/.test(s)) throw new ChapError(`${what} must not contain control characters`);
}

export function validateChap(c: ChapCredentials): ChapCredentials {
  if (!USER_RE.test(c.user)) throw new ChapError('CHAP user name must be 1-255 characters of letters, digits and ._:@+=/-');
  checkSecret(c.password, 'CHAP secret');
  const hasMu = c.mutualUser !== undefined || c.mutualPassword !== undefined;
  if (hasMu) {
    if (c.mutualUser === undefined || c.mutualPassword === undefined) throw new ChapError('mutual CHAP needs both a user name and a secret');
    if (!USER_RE.test(c.mutualUser)) throw new ChapError('mutual CHAP user name must be 1-255 characters of letters, digits and ._:@+=/-');
    checkSecret(c.mutualPassword, 'mutual CHAP secret');
    if (c.mutualPassword === c.password) throw new ChapError('the mutual CHAP secret must differ from the CHAP secret (RFC 7143)');
  }
  return c;
}

/**
 * Reads CHAP credentials from a CSI secrets map; undefined when the map holds
 * none (no CHAP). Throws ChapError when they are present but incomplete.
 */
export function chapFromSecrets(secrets: Record<string, string> | undefined): ChapCredentials | undefined {
  const s = secrets ?? {};
  const user = s[CHAP_SECRET_KEYS.user];
  const password = s[CHAP_SECRET_KEYS.password];
  const mutualUser = s[CHAP_SECRET_KEYS.mutualUser];
  const mutualPassword = s[CHAP_SECRET_KEYS.mutualPassword];
  if (user === undefined && password === undefined && mutualUser === undefined && mutualPassword === undefined) return undefined;
  if (user === undefined || password === undefined) throw new ChapError(`CHAP needs both ${CHAP_SECRET_KEYS.user} and ${CHAP_SECRET_KEYS.password}`);
  const c: ChapCredentials = { user, password };
  if (mutualUser !== undefined) c.mutualUser = mutualUser;
  if (mutualPassword !== undefined) c.mutualPassword = mutualPassword;
  return validateChap(c);
}

/** Every secret string in the credentials, for Executor's `secrets` masking. */
export function chapSecrets(c: ChapCredentials | undefined): string[] {
  if (!c) return [];
  return [c.password, c.mutualPassword].filter((x): x is string => typeof x === 'string' && x.length > 0);
}

/** chapFromSecrets for a CSI request: incomplete credentials are the caller's INVALID_ARGUMENT, naming `secrets`. */
export function chapFromRequestSecrets(secrets: Record<string, string> | undefined): ChapCredentials | undefined {
  try {
    return chapFromSecrets(secrets);
  } catch (e) {
    if (e instanceof ChapError) throw invalidArgument(`secrets: ${e.message}`);
    throw e;
  }
}
