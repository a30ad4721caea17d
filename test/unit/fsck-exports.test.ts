import { describe, expect, it } from 'vitest';
import type { VolumeRecord } from '../../src/backends/backend.js';
import { checkExports } from '../../src/fsck/exports.js';

const vol = (id: string, nodes: string[]): VolumeRecord => ({
  id,
  name: id,
  backend: 'ssd',
  sizeBytes: 1,
  state: nodes.length ? 'in-use' : 'available',
  parameters: {},
  capabilities: [],
  attachments: nodes.map((nodeId) => ({ nodeId, readonly: false, accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', at: '' })),
  createdAt: '',
  updatedAt: '',
});
const A = 'ssd-00000000-0000-4000-8000-00000000000a';
const B = 'ssd-00000000-0000-4000-8000-00000000000b';
const C = 'ssd-00000000-0000-4000-8000-00000000000c';
const n1 = 'node-1;iqn.2020-01.org.example:node-1;';
const n2 = 'node-2;iqn.2020-01.org.example:node-2;';

describe('fsck: exports against publishes (fencing)', () => {
  const exports = [
    { volumeId: A, target: 'iqn.t:a', initiators: ['iqn.2020-01.org.example:node-1'] }, // as published
    { volumeId: B, target: 'iqn.t:b', initiators: ['iqn.2020-01.org.example:node-1', 'iqn.2020-01.org.example:node-2'] }, // node-2 not published
    { volumeId: 'ssd-00000000-0000-4000-8000-0000000000ff', target: 'iqn.t:gone', initiators: [] }, // no record
  ];
  const volumes = [vol(A, [n1]), vol(B, [n1]), vol(C, [n2])]; // C published, not exported

  it('names each difference; without a start-up reconcile an extra export is for an operator, a missing one for the retry', () => {
    const f = checkExports('ssd', exports, volumes).map((x) => `${x.kind} ${x.subject} ${x.remedy}`);
    expect(f.sort()).toEqual([`missing-export volume ${C} retry`, 'orphan-export iqn.t:gone operator', `unfenced-initiator volume ${B} operator`].sort());
  });

  it('a backend that reconciles its exports at start repairs all of them on a restart', () => {
    expect(checkExports('ssd', exports, volumes, true).map((x) => x.remedy)).toEqual(['restart', 'restart', 'restart']);
  });

  it('is silent when exports and publishes agree', () => {
    expect(checkExports('ssd', [exports[0]], [vol(A, [n1]), vol(B, [])])).toEqual([]);
  });
});
