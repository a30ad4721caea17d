import { SNAPSHOT_ID_RE, VOLUME_ID_RE } from '../ids.js';

/**
 * LV names for sinter's ids: a volume `<backend>-<uuid>` is LV `v-<backend>-<uuid>`,
 * a snapshot `<backend>@<uuid>` is LV `s-<backend>-<uuid>` (LV names allow
 * neither '@' nor a leading "snapshot"/"pvmove", which a bare id could have).
 * Only LVs named so, for this backend, are ever touched.
 */
export function lvOfVolume(id: string): string {
  if (!VOLUME_ID_RE.test(id)) throw new Error(`"${id}" is not a volume id`);
  return `v-${id}`;
}

export function lvOfSnapshot(id: string): string {
  const m = SNAPSHOT_ID_RE.exec(id);
  if (!m) throw new Error(`"${id}" is not a snapshot id`);
  return `s-${m[1]}-${m[2]}`;
}

/** What an LV name stands for in `backend`, or undefined when sinter did not name it (for this backend). */
export function idOfLv(lvName: string, backend: string): { kind: 'volume' | 'snapshot'; id: string } | undefined {
  const m = /^([vs])-(.*)$/.exec(lvName);
  if (!m) return undefined;
  const vm = VOLUME_ID_RE.exec(m[2]!);
  if (!vm || vm[1] !== backend) return undefined;
  return m[1] === 'v' ? { kind: 'volume', id: m[2]! } : { kind: 'snapshot', id: `${vm[1]}@${vm[2]}` };
}

/**
 * device-mapper names the LV `<vg>-<lv>` with every '-' doubled, in at most
 * 127 characters (DM_NAME_LEN 128): the longest LV name this backend makes
 * must fit, or activation fails long after the configuration was accepted.
 */
export function dmNameLength(vg: string, lv: string): number {
  const dbl = (s: string) => s.replace(/-/g, '--');
  return dbl(vg).length + 1 + dbl(lv).length;
}

export function longestLvName(backend: string): string {
  return `v-${backend}-00000000-0000-0000-0000-000000000000`;
}
