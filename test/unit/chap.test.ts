import { describe, expect, it } from 'vitest';
import { CHAP_SECRET_KEYS, chapFromSecrets, chapSecrets, ChapError } from '../../src/contracts/chap.js';

describe('CHAP credentials from CSI secrets', () => {
  it('reads none, one-way and mutual CHAP under open-iscsi key names', () => {
    expect(chapFromSecrets(undefined)).toBeUndefined();
    expect(chapFromSecrets({ other: 'x' })).toBeUndefined();
    expect(chapFromSecrets({ [CHAP_SECRET_KEYS.user]: 'u', [CHAP_SECRET_KEYS.password]: 'p-123456789012' })).toEqual({ user: 'u', password: 'p-123456789012' });
    const m = chapFromSecrets({
      'node.session.auth.username': 'u',
      'node.session.auth.password': 'p-123456789012',
      'node.session.auth.username_in': 't',
      'node.session.auth.password_in': 'q-123456789012',
    });
    expect(m).toEqual({ user: 'u', password: 'p-123456789012', mutualUser: 't', mutualPassword: 'q-123456789012' });
    expect(chapSecrets(m)).toEqual(['p-123456789012', 'q-123456789012']);
  });

  it('rejects incomplete or unusable credentials without echoing the secret', () => {
    const bad: Record<string, string>[] = [
      { 'node.session.auth.username': 'u' },
      { 'node.session.auth.password': 'Secret-value-1' },
      { 'node.session.auth.username': 'a b', 'node.session.auth.password': 'Secret-value-1' },
      { 'node.session.auth.username': 'u', 'node.session.auth.password': 'Secret\nvalue-1' },
      { 'node.session.auth.username': 'u', 'node.session.auth.password': 'Secret-value-1', 'node.session.auth.username_in': 't' },
      { 'node.session.auth.username': 'u', 'node.session.auth.password': 'Secret-value-1', 'node.session.auth.username_in': 't', 'node.session.auth.password_in': 'Secret-value-1' },
    ];
    for (const b of bad) {
      let err: unknown;
      try {
        chapFromSecrets(b);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(Object.keys(b))).toBeInstanceOf(ChapError);
      expect((err as Error).message).not.toContain('Secret');
    }
  });
});
