import { describe, expect, it } from 'vitest';
import type { RbdAgent } from '../../src/backends/rbd/agent.js';
import type { CephCli } from '../../src/backends/rbd/cli.js';
import { RbdPool } from '../../src/backends/rbd/pool.js';

// `rbd status` lists every client with the image open, the controller's own
// agent included while it snapshots or copies the image. Counted as a node's
// client, it would refuse a publish and, at the next unpublish, be blocklisted:
// every later agent call of the controller would then fail.
describe('rbd watchers', () => {
  const status = { watchers: [{ address: '127.0.0.1:0/111', client: 4101 }, { address: '127.0.0.1:0/222', client: 4117 }] };
  const cli = { rbdJson: () => Promise.resolve(status) } as unknown as CephCli;

  it("leaves out the controller's own agent connection", async () => {
    const agent = { ownClient: () => 'client.4117' } as unknown as RbdAgent;
    const pool = new RbdPool('rbd', cli, ['layering'], undefined, agent);
    expect(await pool.watchers('img')).toEqual([{ address: '127.0.0.1:0/111', client: 'client.4101' }]);
  });

  it('lists every client when no agent runs', async () => {
    const agent = { ownClient: () => undefined } as unknown as RbdAgent;
    expect(await new RbdPool('rbd', cli, ['layering'], undefined, agent).watchers('img')).toHaveLength(2);
    expect(await new RbdPool('rbd', cli, ['layering']).watchers('img')).toHaveLength(2);
  });

  describe('lock holders (rbd lock ls): what tells a silent writer from a client that left', () => {
    const info = (features: string[]) => ({ name: 'img', id: 'x', size: 1, snapshot_count: 0, features });
    const cliWith = (features: string[], locks: unknown) => ({ rbdJson: (args: string[]) => Promise.resolve(args[0] === 'info' ? info(features) : locks) }) as unknown as CephCli;

    it("reads Pacific's array and older releases' object, and drops the msgr prefix", async () => {
      const arr = [{ id: 'auto 1', locker: 'client.4101', address: 'v1:127.0.0.1:0/111' }];
      expect(await new RbdPool('rbd', cliWith(['layering', 'exclusive-lock'], arr), ['layering']).lockHolders('img')).toEqual([{ address: '127.0.0.1:0/111', client: 'client.4101' }]);
      const obj = { 'auto 2': { locker: 'client.4102', address: '127.0.0.1:0/222' } };
      expect(await new RbdPool('rbd', cliWith(['exclusive-lock'], obj), ['layering']).lockHolders('img')).toEqual([{ address: '127.0.0.1:0/222', client: 'client.4102' }]);
    });

    it("leaves out the controller's own agent (it takes the lock to write a record)", async () => {
      const agent = { ownClient: () => 'client.4117', call: () => Promise.resolve(info(['exclusive-lock'])) } as unknown as RbdAgent;
      const locks = [{ id: 'auto 3', locker: 'client.4117', address: '127.0.0.1:0/333' }];
      expect(await new RbdPool('rbd', cliWith([], locks), ['layering'], undefined, agent).lockHolders('img')).toEqual([]);
    });

    it('is undefined without the exclusive-lock feature: nothing then says a recorded client left', async () => {
      expect(await new RbdPool('rbd', cliWith(['layering'], []), ['layering']).lockHolders('img')).toBeUndefined();
    });
  });
});
