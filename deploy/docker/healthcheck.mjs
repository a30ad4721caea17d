#!/usr/bin/env node
// The image's HEALTHCHECK: calls the CSI Identity service's Probe on sinter's
// own socket and exits 0 when sinter answers ready, 1 otherwise. The endpoint
// is $CSI_ENDPOINT (unix:///path.sock or tcp://host:port), default
// unix:///csi/csi.sock, the same default as `sinter --endpoint`.
//
// Kubernetes ignores an image's HEALTHCHECK; there the livenessprobe sidecar
// makes the same Probe call. This is for `docker run` / podman.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

const endpoint = process.env.CSI_ENDPOINT || 'unix:///csi/csi.sock';
const timeoutMs = Number(process.env.HEALTHCHECK_TIMEOUT_MS || 4000);

function address(raw) {
  if (raw.startsWith('unix://')) return raw;
  if (raw.startsWith('/')) return `unix://${raw}`;
  if (raw.startsWith('tcp://')) return raw.slice('tcp://'.length);
  throw new Error(`CSI_ENDPOINT ${raw}: expected unix:///path.sock or tcp://host:port`);
}

function fail(why) {
  process.stderr.write(`healthcheck: ${why}\n`);
  process.exit(1);
}

try {
  const protoPath = fileURLToPath(new URL('./proto/csi.proto', import.meta.url));
  const def = protoLoader.loadSync(protoPath, { keepCase: true, longs: Number, enums: String, defaults: false, oneofs: true });
  const csi = grpc.loadPackageDefinition(def).csi.v1;
  const client = new csi.Identity(address(endpoint), grpc.credentials.createInsecure());
  client.Probe({}, { deadline: Date.now() + timeoutMs }, (err, res) => {
    client.close();
    if (err) fail(`Probe on ${endpoint} failed: ${err.code === grpc.status.DEADLINE_EXCEEDED ? 'no answer' : err.details || err.message}`);
    if (res?.ready?.value === false) fail(`sinter on ${endpoint} answers but is not ready`);
    process.exit(0);
  });
} catch (e) {
  fail(e instanceof Error ? e.message : String(e));
}
