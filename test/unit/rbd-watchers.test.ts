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
});
