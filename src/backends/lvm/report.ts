import * as v from 'valibot';

/**
 * `lvs` / `vgs --reportformat json --units b --nosuffix` parsed into typed
 * rows (lvm2 2.03.16's output: test/fixtures/lvm/lvs-all.out). Every value in
 * lvm's JSON report is a string; empty means "not applicable".
 */
export const LV_FIELDS = [
  'lv_name',
  'lv_path',
  'lv_attr',
  'lv_size',
  'segtype',
  'pool_lv',
  'origin',
  'data_percent',
  'metadata_percent',
  'lv_tags',
  'lv_active',
  'lv_skip_activation',
] as const;
export const VG_FIELDS = ['vg_name', 'vg_size', 'vg_free', 'vg_extent_size', 'vg_free_count', 'vg_mda_size', 'vg_mda_free'] as const;

export interface LvInfo {
  name: string;
  /** /dev/<vg>/<lv>; empty for hidden LVs such as a pool's data. */
  path: string;
  attr: string;
  sizeBytes: number;
  segtype: string;
  pool: string;
  origin: string;
  /** Percent of a thin LV's, thin pool's or snapshot's data in use; undefined where lvm leaves it empty. */
  dataPercent?: number;
  metadataPercent?: number;
  tags: string;
  active: boolean;
  skipActivation: boolean;
}

export interface VgInfo {
  name: string;
  sizeBytes: number;
  freeBytes: number;
  extentBytes: number;
  freeExtents: number;
  /** The metadata area and what is left of it: every LV and tag lives there. */
  mdaBytes: number;
  mdaFreeBytes: number;
}

const row = (fields: readonly string[]) => v.object(Object.fromEntries(fields.map((f) => [f, v.string()])) as Record<string, v.StringSchema<undefined>>);

function report(out: string, key: 'lv' | 'vg' | 'pv', fields: readonly string[]): Record<string, string>[] {
  let json: unknown;
  try {
    json = JSON.parse(out);
  } catch {
    throw new Error(`lvm printed a report that is not JSON: ${out.slice(0, 120)}`);
  }
  const schema = v.object({ report: v.array(v.object({ [key]: v.array(row(fields)) })) });
  const r = v.safeParse(schema, json);
  if (!r.success) throw new Error(`lvm's ${key} report lacks ${v.getDotPath(r.issues[0]) ?? 'its rows'}`);
  return r.output.report.flatMap((x) => (x as Record<string, Record<string, string>[]>)[key] ?? []);
}

const bytes = (s: string, what: string): number => {
  const n = Number(s);
  if (s === '' || !Number.isSafeInteger(n) || n < 0) throw new Error(`lvm reported ${what} "${s}", not a byte count`);
  return n;
};
const pct = (s: string): number | undefined => (s === '' ? undefined : Number(s));

export function parseLvs(out: string): LvInfo[] {
  return report(out, 'lv', LV_FIELDS).map((r) => ({
    name: r.lv_name!,
    path: r.lv_path!,
    attr: r.lv_attr!,
    sizeBytes: bytes(r.lv_size!, `the size of ${r.lv_name}`),
    segtype: r.segtype!,
    pool: r.pool_lv!,
    origin: r.origin!,
    dataPercent: pct(r.data_percent!),
    metadataPercent: pct(r.metadata_percent!),
    tags: r.lv_tags!,
    active: r.lv_active === 'active',
    skipActivation: r.lv_skip_activation !== '',
  }));
}

export function parseVgs(out: string): VgInfo[] {
  return report(out, 'vg', VG_FIELDS).map((r) => ({
    name: r.vg_name!,
    sizeBytes: bytes(r.vg_size!, 'the VG size'),
    freeBytes: bytes(r.vg_free!, 'the VG free space'),
    extentBytes: bytes(r.vg_extent_size!, 'the extent size'),
    freeExtents: bytes(r.vg_free_count!, 'the free extents'),
    mdaBytes: bytes(r.vg_mda_size!, 'the metadata area size'),
    mdaFreeBytes: bytes(r.vg_mda_free!, 'the free metadata area'),
  }));
}

export const PV_FIELDS = ['pv_name', 'vg_name'] as const;

/**
 * The physical volumes of `vg` in a `pvs -o pv_name,vg_name` report (test/fixtures/lvm/devices-pvs*.out),
 * sorted. A PV LVM knows from the metadata but cannot see is named "[unknown]": it is no device to list.
 */
export function pvsOfVg(out: string, vg: string): string[] {
  return report(out, 'pv', PV_FIELDS)
    .filter((r) => r.vg_name === vg && r.pv_name!.startsWith('/dev/'))
    .map((r) => r.pv_name!)
    .sort();
}

/**
 * The health character of lv_attr (position 9): for a thin pool `F` failed,
 * `D` out of data space, `M` metadata read-only; for a snapshot `I` invalid
 * (a classic snapshot that overflowed); `p` partial (a PV missing).
 */
export function lvHealth(attr: string): string | undefined {
  const c = attr[8];
  switch (c) {
    case 'F':
      return 'failed';
    case 'D':
      return 'out of data space';
    case 'M':
      return 'metadata read-only';
    case 'p':
      return 'partial (a physical volume is missing)';
    case 'X':
      return 'state unknown';
    default:
      break;
  }
  // A classic snapshot that overflowed shows `S` (invalid) as its state (position 5).
  if (attr[4] === 'S' || attr[4] === 'I') return 'invalid snapshot (its copy-on-write space overflowed)';
  return undefined;
}
