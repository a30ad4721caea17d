import { Code, DomainError, failedPrecondition, internal, unavailable } from '../../../errors/domain-error.js';
import type { IscsiTarget, Portal } from './types.js';

/**
 * Turns qemu-nbd's libiscsi login error into an error a CO can act on.
 * libiscsi reports the target's login status: "Authentication failure(513)",
 * "Authorization failure(514)", "Target not found(515)" (tgt's answer to an
 * initiator that is not in the ACL), …
 */
export function classifyLoginFailure(text: string, target: IscsiTarget, p: Portal, initiator: string, timedOut: boolean): DomainError {
  const detail = (text.trim().split('\n').filter(Boolean).pop() ?? '').replace(/^qemu-nbd:\s*/, '').slice(0, 300);
  const where = `iSCSI login to ${target.iqn} at ${p.text} as ${initiator}`;
  // libiscsi's login status, e.g. "Failed to log in to target. Status: Authentication failure(513)".
  const status = /Status:\s*([A-Za-z ]+?)\s*\((\d+)\)/.exec(text);
  const code = status ? Number(status[2]) : undefined;
  if (code === 0x0201 || /Authentication failure/i.test(status?.[1] ?? '')) {
    return new DomainError(Code.PERMISSION_DENIED, `${where} failed: CHAP authentication failed (check the CHAP user name and secret in the node-stage secret)`);
  }
  if (code === 0x0202 || code === 0x0203 || code === 0x0204) {
    return failedPrecondition(`${where} was refused (${status![1]!.trim()}): the target does not exist or does not allow this initiator (is the volume published to this node?)`);
  }
  if (timedOut) return unavailable(`${where} did not complete in time`);
  if (/Connection refused|No route|timed out|Network is unreachable|Failed to connect|connect/i.test(text)) {
    return unavailable(`${where} failed: ${detail || 'the portal is not reachable'}`);
  }
  return internal(`${where} failed: ${detail || 'qemu-nbd exited'}`);
}
