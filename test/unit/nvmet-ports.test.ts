import { existsSync, mkdirSync, mkdtempSync, promises as fsp, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { NvmetTargetHelper } from '../../src/backends/targets/nvmet.js';

// Two backends with export: nvmeof each have their own nvmet helper, but nvmet's ports live in one
// configfs tree. nvmet's configfs is modelled by a plain directory (layout of
// drivers/nvme/target/configfs.c, Linux 6.1); what the kernel makes by itself on mkdir (a port's
// subsystems/, a subsystem's namespaces/ and allowed_hosts/) is made by a wrapper around mkdir.
const dir = mkdtempSync(join(tmpdir(), 'sinter-nvmet-ports-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

const PREFIX_A = 'nqn.2026-12.io.sinter.a:';
const PREFIX_B = 'nqn.2026-12.io.sinter.b:';
const VOL_A = 'lvma-1b4e28ba-2fa1-41d2-883f-0016d3cca427';
const VOL_B = 'lvmb-2b4e28ba-2fa1-41d2-883f-0016d3cca427';

let n = 0;
function tree(): { root: string; nvmet: string; device: string } {
  const root = join(dir, `configfs${n++}`);
  const nvmet = join(root, 'nvmet');
  for (const d of ['hosts', 'ports', 'subsystems']) mkdirSync(join(nvmet, d), { recursive: true });
  const device = join(root, 'backing.img');
  writeFileSync(device, Buffer.alloc(4096));
  return { root, nvmet, device };
}

/** configfs default groups: what the kernel creates inside a new port or subsystem directory. */
function modelDefaultGroups(nvmet: string, before?: (path: string) => void): void {
  const real = fsp.mkdir.bind(fsp);
  vi.spyOn(fsp, 'mkdir').mockImplementation((async (path: string, opts?: unknown) => {
    before?.(path);
    const r = await real(path, opts as never);
    const parent = dirname(path);
    if (parent === join(nvmet, 'ports')) mkdirSync(join(path, 'subsystems'));
    if (parent === join(nvmet, 'subsystems')) for (const g of ['namespaces', 'allowed_hosts']) mkdirSync(join(path, g));
    return r;
  }) as typeof fsp.mkdir);
}

/**
 * Holds every listing of ports/ until a second caller lists it too (or 150 ms pass): the two
 * helpers then read the same set of port ids, as they do when their RPCs interleave.
 */
function meetAtPortListing(nvmet: string): void {
  const real = fsp.readdir.bind(fsp);
  let waiting: (() => void) | undefined;
  vi.spyOn(fsp, 'readdir').mockImplementation((async (path: string, opts?: unknown) => {
    if (path === join(nvmet, 'ports')) {
      if (waiting) {
        const other = waiting;
        waiting = undefined;
        other();
      } else {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            waiting = undefined;
            resolve();
          }, 150);
          waiting = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
    }
    return real(path, opts as never);
  }) as typeof fsp.readdir);
}

const portOf = (nvmet: string, id: string) => ({
  traddr: readFileSync(join(nvmet, 'ports', id, 'addr_traddr'), 'utf8').trim(),
  trsvcid: readFileSync(join(nvmet, 'ports', id, 'addr_trsvcid'), 'utf8').trim(),
  subsystems: existsSync(join(nvmet, 'ports', id, 'subsystems')) ? readdirSync(join(nvmet, 'ports', id, 'subsystems')).sort() : [],
});
describe('nvmet ports on one configfs tree shared by two helpers (configfs modelled by a directory)', () => {
  it('two backends with different portals creating their first port at once get a port each, each on its own address', async () => {
    const { root, nvmet, device } = tree();
    modelDefaultGroups(nvmet);
    meetAtPortListing(nvmet);
    const a = new NvmetTargetHelper({ configfsRoot: root, nqnPrefix: PREFIX_A, portals: ['127.0.0.1:4420'] });
    const b = new NvmetTargetHelper({ configfsRoot: root, nqnPrefix: PREFIX_B, portals: ['127.0.0.2:4421'] });

    await Promise.all([a.ensureSubsystem(VOL_A, device), b.ensureSubsystem(VOL_B, device)]);

    const ids = readdirSync(join(nvmet, 'ports')).sort();
    expect(ids).toHaveLength(2);
    const ports = ids.map((id) => portOf(nvmet, id));
    expect(ports).toEqual(
      expect.arrayContaining([
        { traddr: '127.0.0.1', trsvcid: '4420', subsystems: [PREFIX_A + VOL_A] },
        { traddr: '127.0.0.2', trsvcid: '4421', subsystems: [PREFIX_B + VOL_B] },
      ]),
    );
    expect((await a.listSubsystems()).map((s) => [basename(s.nqn), s.portals])).toEqual(
      expect.arrayContaining([
        [PREFIX_A + VOL_A, ['127.0.0.1:4420']],
        [PREFIX_B + VOL_B, ['127.0.0.2:4421']],
      ]),
    );
  });

  it('a port id taken by someone else between the listing and the mkdir is stepped over, not written into', async () => {
    const { root, nvmet, device } = tree();
    // Another process (nvmetcli, a second sinter) creates port 1 for its own address just before our mkdir of it.
    let raced = false;
    modelDefaultGroups(nvmet, (path) => {
      if (path === join(nvmet, 'ports', '1') && !raced) {
        raced = true;
        mkdirSync(join(nvmet, 'ports', '1', 'subsystems'), { recursive: true });
        for (const [f, v] of [['addr_trtype', 'tcp'], ['addr_adrfam', 'ipv4'], ['addr_traddr', '10.9.9.9'], ['addr_trsvcid', '4420']]) writeFileSync(join(nvmet, 'ports', '1', f), `${v}\n`);
      }
    });
    const a = new NvmetTargetHelper({ configfsRoot: root, nqnPrefix: PREFIX_A, portals: ['127.0.0.1:4420'] });

    await a.ensureSubsystem(VOL_A, device);

    expect(raced).toBe(true);
    expect(portOf(nvmet, '1')).toEqual({ traddr: '10.9.9.9', trsvcid: '4420', subsystems: [] });
    expect(portOf(nvmet, '2')).toEqual({ traddr: '127.0.0.1', trsvcid: '4420', subsystems: [PREFIX_A + VOL_A] });
    expect(readlinkSync(join(nvmet, 'ports', '2', 'subsystems', PREFIX_A + VOL_A))).toBe(join(nvmet, 'subsystems', PREFIX_A + VOL_A));
  });
});
