import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SinterProcess } from '../helpers/sinter-process.js';
import { conformance } from '../helpers/conformance.js';

const { groupSnapshots, startSinter } = conformance();

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

describe('Identity service (sinter all)', () => {
  let s: SinterProcess;
  beforeAll(async () => {
    s = await startSinter();
  });
  afterAll(async () => s?.cleanup());

  it('GetPluginInfo names the driver and the package version', async () => {
    const r = await s.client.identity.GetPluginInfo({});
    expect(r.name).toBe('sinter.csi.io');
    expect(r.vendor_version).toBe(pkg.version);
  });

  it('GetPluginCapabilities offers the controller, topology and online expansion, and the group controller where the backend takes group snapshots', async () => {
    const r = await s.client.identity.GetPluginCapabilities({});
    const kinds = r.capabilities.map((c) => c.service?.type ?? `expansion:${c.volume_expansion?.type}`);
    expect(kinds.sort()).toEqual(['CONTROLLER_SERVICE', ...(groupSnapshots ? ['GROUP_CONTROLLER_SERVICE'] : []), 'VOLUME_ACCESSIBILITY_CONSTRAINTS', 'expansion:ONLINE']);
  });

  it('Probe is ready while the backend answers', async () => {
    expect((await s.client.identity.Probe({})).ready!.value).toBe(true);
  });
});
