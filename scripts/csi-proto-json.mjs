#!/usr/bin/env node
// Writes proto/csi.json: proto/csi.proto as protobufjs JSON, parsed the way
// @grpc/proto-loader parses it with sinter's options, so that start-up can
// build its service definitions from it (src/csi/proto.ts) instead of parsing the .proto text (about
// 30–40 ms of CPU). proto/csi.proto stays the source of truth:
// test/unit/csi-proto-cache.test.ts fails when this file is out of date.
//   node scripts/csi-proto-json.mjs            (rewrite proto/csi.json)
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export const CSI_PROTO = fileURLToPath(new URL('../proto/csi.proto', import.meta.url));
export const CSI_JSON = fileURLToPath(new URL('../proto/csi.json', import.meta.url));

/**
 * The text of proto/csi.json for the given loader options: proto-loader's own
 * parse (its util, its protobufjs, its include of the google/protobuf types),
 * then protobufjs's JSON of that root.
 */
export function csiProtoJson(loaderOptions) {
  // proto-loader's copy of protobufjs and its parse, not a second one.
  const require = createRequire(createRequire(import.meta.url).resolve('@grpc/proto-loader'));
  const { loadProtosWithOptionsSync } = require('./util.js');
  const root = loadProtosWithOptionsSync(CSI_PROTO, loaderOptions);
  return `${JSON.stringify(root.toJSON({ keepComments: false }))}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { LOADER_OPTIONS } = await import('../dist/csi/proto.js');
  writeFileSync(CSI_JSON, csiProtoJson(LOADER_OPTIONS));
  process.stdout.write(`wrote ${CSI_JSON}\n`);
}
