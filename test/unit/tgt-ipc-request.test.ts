import { describe, expect, it } from 'vitest';
import { showTargetsRequest } from '../../src/backends/targets/tgt-ipc.js';

describe("tgtd's show request, as tgt 1.0.85's tgtadm sends it", () => {
  it('is byte for byte what `strace tgtadm --lld iscsi --op show --mode target` wrote to the control socket (Debian 12, x86-64)', () => {
    const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
    const expected = Buffer.concat([
      hex('01000000 02000000'), // mode MODE_TARGET, op OP_SHOW
      Buffer.concat([Buffer.from('iscsi', 'latin1'), Buffer.alloc(64 - 5)]), // lld[64]
      hex('78000000'), // len: 120, the request alone
      hex('ffffffff'), // tid -1: every target
      hex('0000000000000000'), // sid
      hex('ffffffffffffffff'), // lun -1
      Buffer.alloc(24), // cid, host_no, device_type, ac_dir, pack, force
    ]);
    expect(expected).toHaveLength(120);
    expect(showTargetsRequest().equals(expected)).toBe(true);
  });
});
