import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeOf, startSinter, type SinterProcess } from '../helpers/sinter-process.js';

// A controller whose backends cannot cut group snapshots (here the file
// backend) serves the GroupController as the CSI spec asks of a plugin without
// the capability: GroupControllerGetCapabilities answers an empty list, the
// plugin does not advertise GROUP_CONTROLLER_SERVICE, and the three group
// snapshot RPCs answer UNIMPLEMENTED.

describe('GroupController on a plugin with no group-snapshot backend', () => {
  let s: SinterProcess;
  beforeAll(async () => {
    s = await startSinter({ role: 'controller' });
  });
  afterAll(async () => {
    await s?.cleanup();
  });

  it('advertises nothing and answers UNIMPLEMENTED', async () => {
    const plugin = (await s.client.identity.GetPluginCapabilities({})).capabilities.map((c) => c.service?.type).filter(Boolean);
    expect(plugin).toContain('CONTROLLER_SERVICE');
    expect(plugin).not.toContain('GROUP_CONTROLLER_SERVICE');
    expect((await s.client.groupController.GroupControllerGetCapabilities({})).capabilities).toEqual([]);
    const gc = s.client.groupController;
    expect(await codeOf(gc.CreateVolumeGroupSnapshot({ name: 'g', source_volume_ids: ['default-00000000-0000-0000-0000-000000000000'] }))).toBe('UNIMPLEMENTED');
    expect(await codeOf(gc.DeleteVolumeGroupSnapshot({ group_snapshot_id: 'default.group.00000000-0000-0000-0000-000000000000', snapshot_ids: [] }))).toBe('UNIMPLEMENTED');
    expect(await codeOf(gc.GetVolumeGroupSnapshot({ group_snapshot_id: 'default.group.00000000-0000-0000-0000-000000000000', snapshot_ids: [] }))).toBe('UNIMPLEMENTED');
  });
});
