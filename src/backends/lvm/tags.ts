/**
 * A sinter record kept in an LV's tags, so the record and the LV it describes
 * are written by the same LVM metadata commit (one `lvcreate --addtag`, one
 * `lvchange --addtag --deltag`) and can never disagree after a crash.
 *
 * LVM allows only `[A-Za-z0-9_+.\-/=!:&#]` in a tag (lvm2's validate_tag;
 * recorded: test/fixtures/lvm/tag-*.err) and lists an LV's tags as one
 * comma-joined string. A record is JSON, escaped into that alphabet and cut
 * into chunks:
 *
 *     sinter:<generation>:<index>/<count>:<payload>
 *
 * Each write uses the next generation. A reader takes the newest generation
 * whose chunks are all there, so tags of two generations side by side (an
 * update whose old tags were not yet removed) still read as the new record,
 * and stale generations are named so start-up can remove them. (lvm2 2.03.16
 * commits one `lvchange --addtag … --deltag …` as one metadata change: one
 * seqno step, test/fixtures/lvm/tag-swap-seqno.txt; the generations make the
 * record safe even where a version would not.)
 *
 * The escape keeps letters, digits and `_.-/:` as they are (ids, timestamps
 * and most names stay readable in `lvs -o tags`), writes JSON's `"` as `!`
 * and `,` as `+`, and every other UTF-8 byte as `&XX` (two upper-case hex digits).
 */

/** lvm2 2.03.16 accepted 1025-character tags (test/fixtures/lvm/tag-len-1025); stay at 1024. */
export const MAX_TAG_LENGTH = 1024;
const PREFIX = 'sinter:';
const TAG_RE = /^sinter:(\d{1,9}):(\d{1,4})\/(\d{1,4}):(.*)$/;
const PLAIN = /[A-Za-z0-9_.\-/:]/;
const ALLOWED = /^[A-Za-z0-9_+.\-/=!:&#]+$/;

export function escapePayload(s: string): string {
  let out = '';
  for (const ch of s) {
    if (PLAIN.test(ch)) out += ch;
    else if (ch === '"') out += '!';
    else if (ch === ',') out += '+';
    else for (const b of Buffer.from(ch, 'utf8')) out += `&${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The inverse of escapePayload; undefined for text escapePayload never writes. */
export function unescapePayload(s: string): string | undefined {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === '!') bytes.push(0x22);
    else if (ch === '+') bytes.push(0x2c);
    else if (ch === '&') {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) return undefined;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (PLAIN.test(ch)) bytes.push(ch.charCodeAt(0));
    else return undefined;
  }
  const buf = Buffer.from(bytes);
  const text = buf.toString('utf8');
  // Bytes that are not UTF-8 were never written by escapePayload.
  return Buffer.from(text, 'utf8').equals(buf) ? text : undefined;
}

/** Whether LVM accepts `tag` (its alphabet and our length cap). */
export function isValidTag(tag: string): boolean {
  return tag.length > 0 && tag.length <= MAX_TAG_LENGTH && ALLOWED.test(tag) && !tag.startsWith('-');
}

/** The tags of one generation of `record`. Escapes are never cut between chunks. */
export function encodeRecord(record: unknown, generation: number): string[] {
  const payload = escapePayload(JSON.stringify(record));
  const room = MAX_TAG_LENGTH - `${PREFIX}${generation}:9999/9999:`.length;
  const chunks: string[] = [];
  let i = 0;
  while (i < payload.length) {
    let end = Math.min(payload.length, i + room);
    // Do not split `&XX`.
    const amp = payload.lastIndexOf('&', end - 1);
    if (end < payload.length && amp >= i && amp > end - 3) end = amp;
    chunks.push(payload.slice(i, end));
    i = end;
  }
  if (chunks.length === 0) chunks.push('');
  return chunks.map((c, idx) => `${PREFIX}${generation}:${idx}/${chunks.length}:${c}`);
}

export interface DecodedTags {
  /** The newest complete generation's record (parsed JSON), if any. */
  record?: unknown;
  generation?: number;
  /** sinter tags of other generations (older, or incomplete): stale, removable. */
  stale: string[];
  /** Tags that look like ours but cannot be read (a complete generation whose JSON does not parse). */
  unreadable?: string;
  /** Tags that are not sinter's (an administrator's): left alone. */
  foreign: string[];
}

/** Splits lvs' `lv_tags` column (comma-joined; a comma is never in a tag). */
export function splitTags(lvTags: string): string[] {
  return lvTags === '' ? [] : lvTags.split(',');
}

export function decodeTags(tags: readonly string[]): DecodedTags {
  const gens = new Map<number, { count: number; parts: Map<number, string>; tags: string[]; bad: boolean }>();
  const foreign: string[] = [];
  for (const tag of tags) {
    const m = TAG_RE.exec(tag);
    if (!m) {
      foreign.push(tag);
      continue;
    }
    const [gen, idx, count] = [Number(m[1]), Number(m[2]), Number(m[3])];
    let g = gens.get(gen);
    if (!g) gens.set(gen, (g = { count, parts: new Map(), tags: [], bad: false }));
    g.tags.push(tag);
    if (g.count !== count || idx >= count) g.bad = true;
    else g.parts.set(idx, m[4]!);
  }
  const order = [...gens.keys()].sort((a, b) => b - a);
  const stale: string[] = [];
  let out: DecodedTags | undefined;
  for (const gen of order) {
    const g = gens.get(gen)!;
    if (out || g.bad || g.parts.size !== g.count) {
      stale.push(...g.tags);
      continue;
    }
    const payload = Array.from({ length: g.count }, (_, i) => g.parts.get(i)!).join('');
    const text = unescapePayload(payload);
    let record: unknown;
    try {
      record = text === undefined ? undefined : JSON.parse(text);
    } catch {
      record = undefined;
    }
    if (record === undefined) {
      out = { stale: [], foreign, unreadable: `generation ${gen}: the payload does not decode to JSON`, generation: gen };
      continue;
    }
    out = { record, generation: gen, stale: [], foreign };
  }
  return { ...(out ?? { foreign }), stale };
}

/** What one record update does to the tags: add the new generation, drop every older sinter tag. */
export function tagChange(currentTags: readonly string[], record: unknown, generation: number): { add: string[]; del: string[] } {
  const add = encodeRecord(record, generation);
  const del = currentTags.filter((t) => TAG_RE.test(t) && !add.includes(t));
  return { add, del };
}
