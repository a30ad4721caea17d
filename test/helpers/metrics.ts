import { execa } from 'execa';

/**
 * Reading sinter's /metrics as Prometheus would: a strict parser of the text
 * exposition format 0.0.4 (the rules of prometheus/common expfmt's
 * text_parse.go, the parser the Prometheus server uses), and Prometheus' own
 * `promtool check metrics` (Debian's prometheus 2.42 package, installed by
 * scripts/setup.sh), which parses with that code and lints the names.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help?: string;
  samples: Sample[];
}

export class Exposition {
  constructor(readonly families: Map<string, Family>) {}

  /** The value of one series; labels must match exactly (all of them). */
  value(name: string, labels: Record<string, string> = {}): number | undefined {
    const fam = this.familyOf(name);
    const want = JSON.stringify(Object.entries(labels).sort());
    return fam?.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value;
  }

  /** Every series of a sample name whose labels include `labels`. */
  series(name: string, labels: Record<string, string> = {}): Sample[] {
    return (this.familyOf(name)?.samples ?? []).filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  }

  private familyOf(sample: string): Family | undefined {
    return this.families.get(sample) ?? this.families.get(sample.replace(/_(bucket|sum|count)$/, ''));
  }
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** A float as expfmt reads it: Go's strconv.ParseFloat, whose Inf and NaN spellings ignore case (prom-client writes "Nan"). */
function parseValue(s: string, where: string): number {
  const l = s.toLowerCase();
  if (l === '+inf' || l === 'inf' || l === '+infinity' || l === 'infinity') return Infinity;
  if (l === '-inf' || l === '-infinity') return -Infinity;
  if (l === 'nan') return NaN;
  if (!/^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/.test(s)) throw new Error(`${where}: "${s}" is not a float`);
  return Number(s);
}

/** Parses the text format strictly; throws naming the line on anything Prometheus would refuse. */
export function parseExposition(text: string): Exposition {
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  let current: Family | undefined;
  const lines = text.split('\n').slice(0, -1);
  lines.forEach((line, i) => {
    const where = `line ${i + 1} (${line.slice(0, 80)})`;
    if (line === '') return;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest] = m as unknown as [string, string, string, string];
      if (!NAME.test(name)) throw new Error(`${where}: bad metric name`);
      let fam = families.get(name);
      if (fam && fam !== current) throw new Error(`${where}: ${name} appears in two places`);
      if (!fam) {
        fam = { name, type: 'untyped', samples: [] };
        families.set(name, fam);
      }
      current = fam;
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type`);
        if (fam.samples.length) throw new Error(`${where}: TYPE after samples`);
        fam.type = rest as Family['type'];
      } else {
        if (fam.help !== undefined) throw new Error(`${where}: second HELP`);
        fam.help = rest.replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
      }
      return;
    }
    // name{label="value",...} value [timestamp]
    const nm = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
    if (!nm) throw new Error(`${where}: no metric name`);
    const name = nm[1];
    let pos = name.length;
    const labels: Record<string, string> = {};
    if (line[pos] === '{') {
      pos++;
      while (line[pos] !== '}') {
        const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(line.slice(pos));
        if (!lm || !LABEL.test(lm[1])) throw new Error(`${where}: bad label at column ${pos}`);
        pos += lm[0].length;
        let v = '';
        for (;;) {
          const c = line[pos++];
          if (c === undefined) throw new Error(`${where}: unterminated label value`);
          if (c === '"') break;
          if (c === '\\') {
            const e = line[pos++];
            if (e === 'n') v += '\n';
            else if (e === '\\' || e === '"') v += e;
            else throw new Error(`${where}: bad escape \\${e}`);
          } else v += c;
        }
        if (lm[1] in labels) throw new Error(`${where}: label ${lm[1]} twice`);
        labels[lm[1]] = v;
        if (line[pos] === ',') pos++;
        else if (line[pos] !== '}') throw new Error(`${where}: expected , or } at column ${pos}`);
      }
      pos++;
    }
    if (line[pos] !== ' ') throw new Error(`${where}: expected a space before the value`);
    const parts = line.slice(pos + 1).split(' ');
    if (parts.length > 2 || parts.some((p) => p === '')) throw new Error(`${where}: expected "value [timestamp]"`);
    const value = parseValue(parts[0], where);
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) throw new Error(`${where}: bad timestamp`);
    // The sample belongs to the family declared last: its own name, or name_bucket/_sum/_count of a histogram.
    const base = current && (current.name === name || ((current.type === 'histogram' || current.type === 'summary') && /^(.*)_(bucket|sum|count)$/.exec(name)?.[1] === current.name));
    if (!base) throw new Error(`${where}: sample ${name} outside its family's HELP/TYPE block`);
    if (current!.type === 'histogram' && name.endsWith('_bucket') && labels.le === undefined) throw new Error(`${where}: bucket without le`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw new Error(`${where}: series repeated`);
    seen.add(key);
    current!.samples.push({ name, labels, value });
  });
  for (const f of families.values()) {
    if (f.type !== 'histogram') continue;
    // Buckets are cumulative and end at +Inf equal to _count, per label set.
    const groups = new Map<string, Sample[]>();
    for (const s of f.samples.filter((x) => x.name === `${f.name}_bucket`)) {
      const { le: _le, ...rest } = s.labels;
      const k = JSON.stringify(Object.entries(rest).sort());
      groups.set(k, [...(groups.get(k) ?? []), s]);
    }
    for (const [k, bs] of groups) {
      const sorted = bs.map((b) => [parseValue(b.labels.le, f.name), b.value] as const).sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < sorted.length; i++) if (sorted[i][1] < sorted[i - 1][1]) throw new Error(`${f.name}${k}: buckets not cumulative`);
      if (sorted.at(-1)?.[0] !== Infinity) throw new Error(`${f.name}${k}: no +Inf bucket`);
      const count = f.samples.find((s) => s.name === `${f.name}_count` && JSON.stringify(Object.entries(s.labels).sort()) === k);
      if (count?.value !== sorted.at(-1)![1]) throw new Error(`${f.name}${k}: +Inf bucket ${sorted.at(-1)![1]} is not _count ${count?.value}`);
    }
  }
  return new Exposition(families);
}

export async function scrape(address: string): Promise<{ text: string; contentType: string; ms: number }> {
  const t = performance.now();
  const res = await fetch(`http://${address}/metrics`);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${text}`);
  return { text, contentType: res.headers.get('content-type') ?? '', ms: performance.now() - t };
}

/**
 * `promtool check metrics` on the text: its exit status and what it said.
 * Lint findings about sinter_* names are returned; those about prom-client's
 * default process metrics (nodejs_active_handles_total is a gauge …) are not ours.
 */
export async function promtoolCheck(text: string): Promise<{ parseError?: string; sinterFindings: string[] }> {
  const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false });
  if (r.failed && r.exitCode === undefined) throw new Error(`promtool is missing (scripts/setup.sh installs it): ${r.message}`);
  const out = `${r.stdout}\n${r.stderr}`;
  if (r.exitCode === 1 || /parsing error|error while linting/.test(out)) return { parseError: out.trim(), sinterFindings: [] };
  return { sinterFindings: out.split('\n').filter((l) => l.startsWith('sinter_')) };
}

/** The metrics endpoint's address, from the plugin's log line. */
export function metricsAddressIn(logs: string): string | undefined {
  for (const l of logs.split('\n')) {
    if (!l.includes('metrics endpoint listening')) continue;
    return (JSON.parse(l) as { address: string }).address;
  }
  return undefined;
}
