import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as v from 'valibot';
import { snapshotRecordSchema, volumeRecordSchema, isSnapshotRecord, isVolumeRecord } from '../../src/backends/file/records.js';
import { newSnapshotId, newVolumeId } from '../../src/backends/ids.js';
import { compileGuard } from '../../src/util/schema-guard.js';

// Values near the schemas' edges: right and wrong types per field, ids that match and nearly match.
const idLike = fc.oneof(
  fc.constant(newVolumeId('b1')),
  fc.constant(newSnapshotId('b1')),
  fc.constant(`${newVolumeId('b1')}x`),
  fc.constant(newVolumeId('b1').replace('-', '@')),
  fc.string(),
);
const anyValue = fc.oneof(fc.string(), fc.double(), fc.constant(Number.NaN), fc.integer(), fc.boolean(), fc.constant(null), fc.constant(undefined), fc.array(fc.jsonValue(), { maxLength: 3 }), fc.dictionary(fc.string(), fc.jsonValue(), { maxKeys: 2 }), idLike);
const recordLike = fc.record(
  { id: fc.oneof(idLike, anyValue), name: anyValue, sizeBytes: anyValue, state: anyValue, attachments: anyValue, sourceVolumeId: anyValue, extra: anyValue },
  { requiredKeys: [] },
);
// Sound records with at most one field replaced or removed: most of these should pass, so both answers are exercised.
const fields = ['id', 'name', 'sizeBytes', 'state', 'attachments', 'sourceVolumeId'] as const;
const nearlySound = fc.tuple(fc.boolean(), fc.constantFrom(...fields, undefined), fc.option(anyValue), fc.string(), fc.nat()).map(([snap, field, repl, name, size]) => {
  const rec: Record<string, unknown> = snap
    ? { id: newSnapshotId('b1'), name, sourceVolumeId: newVolumeId('b1'), state: 'available', sizeBytes: size }
    : { id: newVolumeId('b1'), name, sizeBytes: size, state: 'available', attachments: [] };
  if (field !== undefined) {
    if (repl === null) delete rec[field];
    else rec[field] = repl;
  }
  return rec;
});
const input = fc.oneof(nearlySound, recordLike, anyValue, fc.array(anyValue, { maxLength: 2 }));

describe('compileGuard: a valibot schema as a plain predicate', () => {
  it('accepts exactly what v.is accepts, for the volume and the snapshot record schemas (arbitrary input)', () => {
    let accepted = 0;
    fc.assert(
      fc.property(input, (x) => {
        expect(isVolumeRecord(x)).toBe(v.is(volumeRecordSchema, x));
        expect(isSnapshotRecord(x)).toBe(v.is(snapshotRecordSchema, x));
        if (isVolumeRecord(x) || isSnapshotRecord(x)) accepted++;
      }),
      { numRuns: 5000 },
    );
    // Both answers were given many times, so agreement was tested on each side.
    expect(accepted).toBeGreaterThan(200);
    expect(accepted).toBeLessThan(4800);
  });

  it('accepts a sound record and names what makes one unreadable', () => {
    const rec = { id: newVolumeId('b1'), name: 'pvc-1', sizeBytes: 1024, state: 'available', attachments: [], later: 'a field of a newer version' };
    expect(isVolumeRecord(rec)).toBe(true);
    for (const bad of [{ id: 'b1-../../etc' }, { sizeBytes: '1024' }, { sizeBytes: Number.NaN }, { attachments: {} }, { state: 7 }])
      expect(isVolumeRecord({ ...rec, ...bad }), JSON.stringify(bad)).toBe(false);
    const { name: _n, ...noName } = rec;
    expect(isVolumeRecord(noName)).toBe(false);
    expect(isVolumeRecord(null)).toBe(false);
  });

  it('refuses, when compiled, a schema part it does not model instead of checking it differently', () => {
    expect(() => compileGuard(v.object({ a: v.optional(v.string()) }))).toThrow(/optional/);
    expect(() => compileGuard(v.object({ a: v.array(v.string()) }))).toThrow(/array/);
    expect(() => compileGuard(v.pipe(v.string(), v.minLength(2)))).toThrow(/min_length/);
    expect(() => compileGuard(v.pipe(v.string(), v.regex(/a/g)))).toThrow(/global/);
  });
});
